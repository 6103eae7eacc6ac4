"""The client SDK: register programs, run them on the workers, read their results.

:class:`DSPExClient` is request/reply over Kafka. It produces
:class:`~dspex.streams.records.InferenceRequest` records keyed by program id
and reads :class:`~dspex.streams.records.InferenceResult` records back by
request id. Each client owns one consumer of the results topic (or of its own
``reply_to`` topic): it reads every partition from the end it had when the
client started, without a consumer group, and hands each result to whoever
waits for its request id. Results for other request ids (other clients', or
requests that already timed out) are ignored, and so are duplicates: workers
deliver at least once, the client delivers each result exactly once.

Reading a shared results topic means every client sees every result. A client
with heavy traffic, or one of many, should pass ``reply_to`` with a topic of
its own, so workers answer it there.

::

    DSPExClient                 async; `async with DSPExClient(...) as client:`
    ├── register()              publish a program version (a Module or a ProgramSpec)
    ├── run()                   one request, its result (ok or error)
    ├── predict()               one request, its outputs; an error result raises
    ├── submit_many()           many requests, bounded in flight; results as they come
    └── results()               every result on the topic, as a stream
    DSPExClientSync             the same for scripts (blocking calls)

This module holds :class:`DSPExClient`: its settings and its calls; the
package exports every public name. The parts it uses live beside it:
``_connection`` (the producer, the results reader and the routes results go
to), ``_base`` (stats, routes, requests), ``_kafka`` (consumers, topic
metadata, Kafka errors), ``_batch`` (``submit_many``) and ``_errors``
(:func:`error_from_result`); ``_sync`` holds :class:`DSPExClientSync`, which
wraps this client.

Example:
    >>> async with DSPExClient(bootstrap_servers="127.0.0.1:9092") as client:  # doctest: +SKIP
    ...     await client.register("sentiment", dspex.Predict("review -> sentiment"))
    ...     result = await client.run("sentiment", review="Great phone.")
    ...     result.outputs if result.status == "ok" else result.error
    {'sentiment': 'positive'}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Self

from aiokafka.errors import ConsumerStoppedError, KafkaError
from pydantic import ValidationError

from dspex._validation import describe_validation_error
from dspex.errors import ConfigurationError, DeadlineExceededError
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry, ProgramSpec
from dspex.streams.client._base import (
    ClientStats,
    Reply,
    RequestItem,
    check_positive,
    deadline_ms,
    default_client_id,
    new_request,
    remember,
)
from dspex.streams.client._batch import Batch
from dspex.streams.client._connection import ClientConnection
from dspex.streams.client._errors import error_from_result
from dspex.streams.client._kafka import POLL_MS
from dspex.streams.records import InferenceResult, ProgramRecord
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames
from dspex.topologies.settings import (
    KafkaSettings,
    KafkaTarget,
    TopicSettings,
    is_legal_topic_name,
    servers_of,
)

__all__ = ["DSPExClient"]

log = logging.getLogger(__name__)


class DSPExClient:
    """Produce inference requests to dspex workers and await their results.

    An async context manager: entering connects to Kafka and starts reading
    results, leaving (or :meth:`aclose`) stops everything the client started.
    Only requests sent after the client started can be answered to it.

    Args:
        bootstrap_servers: Kafka brokers; default ``$DSPEX_BOOTSTRAP_SERVERS``
            (:class:`~dspex.topologies.settings.KafkaSettings`).
        prefix: Topic name prefix; default ``$DSPEX_TOPICS_PREFIX`` or ``dspex``.
        default_timeout_s: How long :meth:`run` and :meth:`submit_many` wait for
            a result when no ``timeout_s`` is given.
        reply_to: A topic of this client's own for its results (it must exist);
            None: the deployment's results topic.
        client_id: Names the client in Kafka and in the timeout results it makes.
        connect_timeout_s: How long :meth:`start` may take to reach Kafka.
        dedupe_window: How many delivered request ids :meth:`results` streams
            remember to drop duplicates (a repeat arrives within the records a
            worker had not committed when it stopped: hundreds, not tens of
            thousands). It bounds the client's memory: about 2.5 MB at 10,000.

    Raises:
        ConfigurationError: A setting is invalid.

    Example:
        >>> async with DSPExClient(prefix="staging") as client:  # doctest: +SKIP
        ...     result = await client.run("qa", question="Why is the sky blue?")
        >>> result.status  # doctest: +SKIP
        'ok'
    """

    def __init__(
        self,
        *,
        bootstrap_servers: KafkaTarget | None = None,
        prefix: str | None = None,
        default_timeout_s: float = 60.0,
        reply_to: str | None = None,
        client_id: str | None = None,
        connect_timeout_s: float = 30.0,
        dedupe_window: int = 10_000,
    ) -> None:
        try:
            self.bootstrap_servers = bootstrap_servers or KafkaSettings()
            self.names = TopicNames(prefix if prefix is not None else TopicSettings().prefix)
        except ValidationError as exc:
            raise ConfigurationError(
                f"invalid client setting: {describe_validation_error(exc)}"
            ) from exc
        if reply_to is not None and not is_legal_topic_name(reply_to):
            raise ConfigurationError(f"reply_to {reply_to!r} is not a legal Kafka topic name")
        check_positive("default_timeout_s", default_timeout_s)
        check_positive("connect_timeout_s", connect_timeout_s)
        if dedupe_window < 1:
            raise ConfigurationError(f"dedupe_window must be at least 1, not {dedupe_window}")
        self.default_timeout_s = default_timeout_s
        self.reply_to = reply_to
        #: The topic this client reads its results from.
        self.results_topic = reply_to or self.names.inference_results
        self.client_id = client_id or default_client_id()
        self.connect_timeout_s = connect_timeout_s
        self.dedupe_window = dedupe_window
        self.stats = ClientStats()
        self._connection = ClientConnection(
            bootstrap_servers=self.bootstrap_servers,
            names=self.names,
            reply_to=reply_to,
            client_id=self.client_id,
            connect_timeout_s=connect_timeout_s,
            dedupe_window=dedupe_window,
            stats=self.stats,
        )

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect to Kafka and start reading results from the topic's current end.

        Raises:
            LocalServiceError: Kafka cannot be reached within ``connect_timeout_s``.
            ConfigurationError: The requests or results topic does not exist, or
                the client was already started or closed.
        """
        await self._connection.start()

    async def aclose(self) -> None:
        """Stop reading and producing; fail requests still waiting. Idempotent.

        Calls waiting in :meth:`run` or :meth:`submit_many` raise
        ConfigurationError; open :meth:`results` streams end.
        """
        await self._connection.aclose()

    # -- programs -------------------------------------------------------------------

    async def register(
        self,
        program_id: str,
        program: Module | ProgramSpec,
        *,
        description: str = "",
        version: int | None = None,
        registry: ProgramRegistry | None = None,
    ) -> ProgramRecord:
        """Publish a program as the next version of ``program_id`` (or ``version``).

        Workers make it the active version as soon as they read it. Does not
        need the client to be started.

        Args:
            program_id: The id requests will name.
            program: A module (described with ``ProgramSpec.from_program``) or a spec.
            description: What changed in this version.
            version: An explicit version number, above every registered one.
            registry: Where custom module classes are registered by name.

        Returns:
            The record published on the programs topic.

        Raises:
            ConfigurationError: Invalid id or version.
            StateError: The module cannot be described as a spec.
            LocalServiceError: Kafka cannot be reached.

        Example:
            >>> qa = dspex.Predict("question -> answer")  # doctest: +SKIP
            >>> record = await client.register("qa", qa)  # doctest: +SKIP
            >>> record.version  # doctest: +SKIP
            1
        """
        spec = (
            program
            if isinstance(program, ProgramSpec)
            else ProgramSpec.from_program(program, registry=registry)
        )
        try:
            return await register_program(
                self.bootstrap_servers,
                self.names,
                program_id,
                spec,
                version=version,
                description=description,
            )
        except ValidationError as exc:
            raise ConfigurationError(
                f"cannot register {program_id!r}: {describe_validation_error(exc)}"
            ) from exc

    # -- request/reply --------------------------------------------------------------

    async def run(
        self,
        program_id: str,
        /,
        *,
        version: int | None = None,
        timeout_s: float | None = None,
        **inputs: Any,
    ) -> InferenceResult:
        """Run a program on the workers and return its result, ok or error.

        The request's ``deadline_ms`` is now + the timeout, so a worker that
        gets it late answers ``deadline_exceeded`` instead of working for nobody.

        Args:
            program_id: The registered program (positional, so an input may
                also be called ``program_id``).
            version: A version to pin; None runs the active version.
            timeout_s: Seconds to wait; default ``default_timeout_s``.
            **inputs: The program's input fields.

        Returns:
            The result: check ``result.status`` (``"ok"``: ``outputs``;
            ``"error"``: ``error``, e.g. an unknown program or invalid inputs).

        Raises:
            DeadlineExceededError: No result within the timeout (names the request id).
            LocalServiceError: The request cannot be produced to Kafka.
            WireFormatError: An input value cannot be written as JSON.
            ConfigurationError: Invalid arguments, or the client is not running.

        Example:
            >>> result = await client.run("qa", question="Why?", timeout_s=10)  # doctest: +SKIP
            >>> result.outputs if result.status == "ok" else result.error.message  # doctest: +SKIP
            {'answer': 'Because.'}
        """
        self._connection.check_running()
        timeout = self._timeout(timeout_s)
        request = new_request(
            program_id,
            version,
            inputs,
            reply_to=self.reply_to,
            deadline_ms=deadline_ms(timeout),
        )
        reply = Reply()
        routes = self._connection.routes
        routes[request.request_id] = reply
        try:
            async with asyncio.timeout(timeout):
                await self._connection.send(request)
                return await reply.future
        except TimeoutError:
            self.stats.timeouts += 1
            raise DeadlineExceededError(
                f"no result for request {request.request_id} (program {program_id!r}) within "
                f"{timeout:g}s on {self.results_topic} at {servers_of(self.bootstrap_servers)}; "
                "is a worker serving it?",
                timeout_s=timeout,
            ) from None
        finally:
            routes.pop(request.request_id, None)

    async def predict(
        self,
        program_id: str,
        /,
        *,
        version: int | None = None,
        timeout_s: float | None = None,
        **inputs: Any,
    ) -> dict[str, Any]:
        """Like :meth:`run`, but return the outputs and raise an error result.

        Returns:
            The program's output fields by name.

        Raises:
            DSPExError: The error result as a dspex error
                (see :func:`error_from_result`), or what :meth:`run` raises.

        Example:
            >>> await client.predict("qa", question="Why?")  # doctest: +SKIP
            {'answer': 'Because.'}
        """
        result = await self.run(program_id, version=version, timeout_s=timeout_s, **inputs)
        if result.status == "ok" and result.outputs is not None:
            return dict(result.outputs)
        raise error_from_result(result, requested_version=version)

    async def submit_many(
        self,
        requests: Iterable[RequestItem] | AsyncIterable[RequestItem],
        *,
        program_id: str,
        version: int | None = None,
        max_in_flight: int = 1000,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[InferenceResult, None]:
        """Send many requests and yield each result once, in the order they arrive.

        At most ``max_in_flight`` requests are unanswered (or answered but not
        yet taken from the iterator) at a time, so memory stays flat however
        long ``requests`` is; it is read lazily. Each request's timeout starts
        when it is sent. A request that times out is yielded as an error
        result of type ``deadline_exceeded`` whose ``worker_id`` is this
        client's id (it is not raised: one slow request should not end a batch),
        and a late answer to it is dropped. To stop early, close the iterator
        (``contextlib.aclosing``): that frees its slots and its producing task.

        Args:
            requests: Mappings of input fields, or ``InferenceRequest`` records
                (to set request ids or metadata; their ``reply_to`` and
                ``deadline_ms`` are replaced by the client's).
            program_id: The program every request runs.
            version: A version to pin for the mappings; None: the active one.
            max_in_flight: Most requests waiting for a result at any time.
            timeout_s: Seconds each request may wait; default ``default_timeout_s``.

        Yields:
            One result per request, ok or error.

        Raises:
            ConfigurationError: An item is not a mapping or a request for
                ``program_id``, or reuses a request id in flight; raised after
                the requests sent before it are answered.
            LocalServiceError: Kafka failed; raised at once.

        Example:
            >>> reviews = ({"review": line} for line in open("reviews.txt"))  # doctest: +SKIP
            >>> async for result in client.submit_many(  # doctest: +SKIP
            ...         reviews, program_id="sentiment", max_in_flight=100):
            ...     print(result.request_id, result.status)
        """
        connection = self._connection
        connection.check_running()
        if max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be at least 1, not {max_in_flight}")
        timeout = self._timeout(timeout_s)
        batch = Batch(connection, max_in_flight, timeout)
        connection.batches.add(batch)
        feeder = connection.spawn(
            batch.feed(requests, program_id, version),
            name=f"{self.client_id} submit {program_id}",
        )
        try:
            while True:
                batch.wakeup.clear()
                batch.expire()
                if batch.ready:
                    result = batch.ready.popleft()
                    batch.slots.release()
                    yield result
                    continue
                if batch.fatal is not None:
                    raise batch.fatal
                if batch.fed_all and not batch.pending:
                    if batch.feed_error is not None:
                        raise batch.feed_error
                    return
                await batch.wait()
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            for request_id in batch.pending:
                connection.routes.pop(request_id, None)
            connection.batches.discard(batch)

    async def results(self, *, from_beginning: bool = False) -> AsyncIterator[InferenceResult]:
        """Every result on the client's results topic, as a stream, each request id once.

        Reads with a consumer of its own (no consumer group), from the end of
        the topic as it is now, or from its beginning. Records that are not
        results are skipped and counted in ``stats.invalid_records``; repeats
        of a request id among the last ``dedupe_window`` are dropped. The
        stream ends when the client closes; close it early with ``aclose()``
        (or ``contextlib.aclosing``) to free its consumer at once.

        Args:
            from_beginning: Read the whole topic, not only new results.

        Yields:
            Results in partition order, any order across partitions.

        Raises:
            LocalServiceError: Kafka cannot be reached.

        Example:
            >>> async with contextlib.aclosing(client.results()) as stream:  # doctest: +SKIP
            ...     async for result in stream:
            ...         print(result.request_id, result.status)
        """
        connection = self._connection
        connection.check_running()
        consumer = connection.results_consumer()
        try:
            await connection.start_reading(consumer, from_beginning=from_beginning)
            seen: OrderedDict[str, None] = OrderedDict()
            while not connection.closed:
                try:
                    batches = await consumer.getmany(timeout_ms=POLL_MS)
                except ConsumerStoppedError:
                    return  # the client closed
                except KafkaError as exc:  # the consumer reconnects by itself
                    log.warning("reading %s: %s; retrying", self.results_topic, exc)
                    await asyncio.sleep(1.0)
                    continue
                for records in batches.values():
                    for message in records:
                        result = connection.decode(message.value)
                        if result is None:
                            continue
                        if result.request_id in seen:
                            self.stats.duplicates_dropped += 1
                            continue
                        remember(seen, result.request_id, self.dedupe_window)
                        yield result
        finally:
            await connection.release(consumer)

    # -- internals ------------------------------------------------------------------

    def _timeout(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            return self.default_timeout_s
        check_positive("timeout_s", timeout_s)
        return timeout_s
