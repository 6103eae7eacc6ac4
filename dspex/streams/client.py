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
import os
import re
import socket
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError, UnknownTopicOrPartitionError
from pydantic import ValidationError

from dspex.errors import (
    AdapterParseError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    DSPExError,
    InputError,
    LMAuthError,
    LMBadRequestError,
    LMConnectionError,
    LMError,
    LMRateLimitError,
    LMResponseError,
    LMServerError,
    LMTimeoutError,
    LocalServiceError,
    ProgramNotFoundError,
    ToolError,
    WireFormatError,
)
from dspex.programs._sync import run_sync
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry, ProgramSpec
from dspex.streams.records import (
    ErrorInfo,
    InferenceRequest,
    InferenceResult,
    ProgramRecord,
    decode,
    encode,
    now_ms,
)
from dspex.streams.registry import register_program
from dspex.streams.settings import KafkaSettings
from dspex.streams.topics import TopicNames, TopicSettings

__all__ = ["ClientStats", "DSPExClient", "DSPExClientSync", "RequestItem", "error_from_result"]

log = logging.getLogger(__name__)

#: One item of :meth:`DSPExClient.submit_many`: a mapping of inputs, or a full request.
RequestItem: TypeAlias = Mapping[str, Any] | InferenceRequest

T = TypeVar("T")

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
#: How long one poll of the results topic blocks; bounds how late aclose() notices.
_POLL_MS: Final = 500
#: How long start() waits for a topic's metadata (a topic created just before).
_TOPIC_SETTLE_S: Final = 5.0
#: The service named in errors about the cluster.
_KAFKA: Final = "kafka broker"

#: LM error classes by name, per wire error type: a worker's ``ErrorInfo.exception``
#: picks the precise class, the type alone gives the family's default.
_LM_FAMILIES: Final[Mapping[str, tuple[type[LMError], tuple[type[LMError], ...]]]] = {
    "lm_error": (
        LMError,
        (LMAuthError, LMBadRequestError, LMServerError, LMResponseError, LMError),
    ),
    "lm_rate_limited": (LMRateLimitError, (LMRateLimitError,)),
    "lm_unavailable": (LMConnectionError, (CircuitOpenError, LMTimeoutError, LMConnectionError)),
}


@dataclass
class ClientStats:
    """What a client skipped while reading results (counters since it started).

    Attributes:
        invalid_records: Records on the results topic that are not an
            ``InferenceResult`` (not JSON, another schema, tombstones).
        duplicates_dropped: Repeated results for a request id already delivered.
        timeouts: Requests whose result did not arrive within their timeout.
    """

    invalid_records: int = 0
    duplicates_dropped: int = 0
    timeouts: int = 0


class _Route(Protocol):
    """Where the result of a request in flight goes."""

    def deliver(self, result: InferenceResult) -> None: ...

    def fail(self, exc: DSPExError) -> None: ...


class _Reply:
    """The route of one :meth:`DSPExClient.run` call: a future."""

    def __init__(self) -> None:
        self.future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()

    def deliver(self, result: InferenceResult) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: DSPExError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _Batch:
    """The route of one :meth:`DSPExClient.submit_many` call.

    ``pending`` is in submission order, and every request of a batch has the
    same timeout, so its first entry is always the next to expire.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.slots = asyncio.Semaphore(max_in_flight)
        #: request id -> (monotonic deadline, program id)
        self.pending: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.ready: deque[InferenceResult] = deque()
        self.wakeup = asyncio.Event()
        self.fed_all = False
        #: Why feeding stopped early: raised once the requests already sent are answered.
        self.feed_error: BaseException | None = None
        #: Why the client cannot go on (Kafka, closed): raised at once.
        self.fatal: DSPExError | None = None

    def deliver(self, result: InferenceResult) -> None:
        if self.pending.pop(result.request_id, None) is not None:
            self.ready.append(result)
            self.wakeup.set()

    def fail(self, exc: DSPExError) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.wakeup.set()


class DSPExClient:
    """Produce inference requests to dspex workers and await their results.

    An async context manager: entering connects to Kafka and starts reading
    results, leaving (or :meth:`aclose`) stops everything the client started.
    Only requests sent after the client started can be answered to it.

    Args:
        bootstrap_servers: Kafka brokers; default ``$DSPEX_BOOTSTRAP_SERVERS``
            (:class:`~dspex.streams.settings.KafkaSettings`).
        prefix: Topic name prefix; default ``$DSPEX_TOPICS_PREFIX`` or ``dspex``.
        default_timeout_s: How long :meth:`run` and :meth:`submit_many` wait for
            a result when no ``timeout_s`` is given.
        reply_to: A topic of this client's own for its results (it must exist);
            None: the deployment's results topic.
        client_id: Names the client in Kafka and in the timeout results it makes.
        connect_timeout_s: How long :meth:`start` may take to reach Kafka.
        dedupe_window: How many delivered request ids :meth:`results` streams
            remember to drop duplicates.

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
        bootstrap_servers: str | None = None,
        prefix: str | None = None,
        default_timeout_s: float = 60.0,
        reply_to: str | None = None,
        client_id: str | None = None,
        connect_timeout_s: float = 30.0,
        dedupe_window: int = 100_000,
    ) -> None:
        try:
            self.bootstrap_servers = bootstrap_servers or KafkaSettings().bootstrap_servers
            self.names = TopicNames(prefix if prefix is not None else TopicSettings().prefix)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid client setting: {_validation_summary(exc)}") from exc
        if reply_to is not None and not _TOPIC_NAME.match(reply_to):
            raise ConfigurationError(f"reply_to {reply_to!r} is not a legal Kafka topic name")
        _check_positive("default_timeout_s", default_timeout_s)
        _check_positive("connect_timeout_s", connect_timeout_s)
        if dedupe_window < 1:
            raise ConfigurationError(f"dedupe_window must be at least 1, not {dedupe_window}")
        self.default_timeout_s = default_timeout_s
        self.reply_to = reply_to
        #: The topic this client reads its results from.
        self.results_topic = reply_to or self.names.inference_results
        self.client_id = client_id or _default_client_id()
        self.connect_timeout_s = connect_timeout_s
        self.dedupe_window = dedupe_window
        self.stats = ClientStats()
        self._producer: Any = None
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._routes: dict[str, _Route] = {}
        self._batches: set[_Batch] = set()
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[Any] = set()
        self._result_partitions: list[int] = []
        #: Why the results reader stopped, when it failed: every later call raises it.
        self._failure: DSPExError | None = None
        self._closed = False

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
        if self._reader is not None or self._closed:
            raise ConfigurationError("a DSPExClient can be started once")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, acks="all", client_id=self.client_id
        )
        consumer = self._new_consumer()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await producer.start()
                await self._partitions(producer, self.names.inference_requests)
                self._result_partitions = await self._partitions(producer, self.results_topic)
                await consumer.start()
                await self._assign(consumer, from_beginning=False)
        except BaseException as exc:
            await _quietly_stop(consumer, producer)
            if isinstance(exc, (KafkaError, TimeoutError, OSError)):
                raise self._kafka_failure("cannot connect to", exc) from exc
            raise
        self._producer, self._consumer = producer, consumer
        self._reader = asyncio.create_task(self._read_results(), name=f"{self.client_id} results")
        self._reader.add_done_callback(self._reader_stopped)

    async def aclose(self) -> None:
        """Stop reading and producing; fail requests still waiting. Idempotent.

        Calls waiting in :meth:`run` or :meth:`submit_many` raise
        ConfigurationError; open :meth:`results` streams end.
        """
        if self._closed:
            return
        self._closed = True
        self._fail_all(ConfigurationError("the DSPExClient was closed"))
        tasks = [task for task in (self._reader, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _quietly_stop(*self._streams, self._consumer, self._producer)
        self._streams.clear()

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
                f"cannot register {program_id!r}: {_validation_summary(exc)}"
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
        self._check_running()
        timeout = self._timeout(timeout_s)
        request = self._new_request(program_id, version, inputs, timeout)
        reply = _Reply()
        self._routes[request.request_id] = reply
        try:
            async with asyncio.timeout(timeout):
                await self._send(request)
                return await reply.future
        except TimeoutError:
            self.stats.timeouts += 1
            raise DeadlineExceededError(
                f"no result for request {request.request_id} (program {program_id!r}) within "
                f"{timeout:g}s on {self.results_topic} at {self.bootstrap_servers}; "
                "is a worker serving it?",
                timeout_s=timeout,
            ) from None
        finally:
            self._routes.pop(request.request_id, None)

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
    ) -> AsyncIterator[InferenceResult]:
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
        self._check_running()
        if max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be at least 1, not {max_in_flight}")
        timeout = self._timeout(timeout_s)
        batch = _Batch(max_in_flight)
        self._batches.add(batch)
        feeder = self._spawn(
            self._feed(batch, requests, program_id, version, timeout),
            name=f"{self.client_id} submit {program_id}",
        )
        try:
            while True:
                batch.wakeup.clear()
                self._expire(batch, timeout)
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
                await self._wait(batch)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            for request_id in batch.pending:
                self._routes.pop(request_id, None)
            self._batches.discard(batch)

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
        self._check_running()
        consumer = self._new_consumer()
        self._streams.add(consumer)
        try:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await consumer.start()
                    await self._assign(consumer, from_beginning=from_beginning)
            except (KafkaError, TimeoutError, OSError) as exc:
                raise self._kafka_failure(f"cannot read {self.results_topic} on", exc) from exc
            seen: OrderedDict[str, None] = OrderedDict()
            while not self._closed:
                try:
                    batches = await consumer.getmany(timeout_ms=_POLL_MS)
                except ConsumerStoppedError:
                    return  # the client closed
                except KafkaError as exc:  # the consumer reconnects by itself
                    log.warning("reading %s: %s; retrying", self.results_topic, exc)
                    await asyncio.sleep(1.0)
                    continue
                for records in batches.values():
                    for message in records:
                        result = self._decode(message.value)
                        if result is None:
                            continue
                        if result.request_id in seen:
                            self.stats.duplicates_dropped += 1
                            continue
                        _remember(seen, result.request_id, self.dedupe_window)
                        yield result
        finally:
            self._streams.discard(consumer)
            await _quietly_stop(consumer)

    # -- internals ------------------------------------------------------------------

    def _new_consumer(self) -> Any:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            enable_auto_commit=False,
            # Only if the position vanished (topic recreated): re-read rather than skip.
            auto_offset_reset="earliest",
        )

    async def _assign(self, consumer: Any, *, from_beginning: bool) -> None:
        partitions = [
            TopicPartition(self.results_topic, partition) for partition in self._result_partitions
        ]
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        # Resolve the offsets now: a result produced after start() returns must
        # be after them, whenever the first fetch happens.
        for partition in partitions:
            await consumer.position(partition)

    async def _partitions(self, producer: Any, topic: str) -> list[int]:
        """The topic's partitions; waits briefly for a topic that was just created."""
        try:
            async with asyncio.timeout(_TOPIC_SETTLE_S):
                partitions: set[int] = await producer.partitions_for(topic)
                return sorted(partitions)
        except (TimeoutError, UnknownTopicOrPartitionError):
            raise ConfigurationError(
                f"topic {topic} does not exist on Kafka at {self.bootstrap_servers}: create "
                f"the topics with `dspex topics create --prefix {self.names.prefix}` "
                "(a worker creates them too)"
            ) from None

    async def _read_results(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=_POLL_MS)
            except KafkaError as exc:  # the consumer reconnects by itself
                log.warning("reading %s: %s; retrying", self.results_topic, exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for message in records:
                    result = self._decode(message.value)
                    if result is not None:
                        self._route(result)

    def _route(self, result: InferenceResult) -> None:
        route = self._routes.pop(result.request_id, None)
        if route is None:
            # Another client's request, one that timed out, or a repeat.
            if result.request_id in self._delivered:
                self.stats.duplicates_dropped += 1
            return
        _remember(self._delivered, result.request_id, self.dedupe_window)
        route.deliver(result)

    def _reader_stopped(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        log.error("results reader of %s stopped: %r", self.client_id, exc)
        if exc is not None:
            self._failure = self._kafka_failure(f"stopped reading {self.results_topic} from", exc)
            self._fail_all(self._failure)

    def _fail_all(self, exc: DSPExError) -> None:
        routes: list[_Route] = [*self._routes.values(), *self._batches]
        self._routes.clear()
        for route in routes:
            route.fail(exc)

    def _decode(self, value: bytes | None) -> InferenceResult | None:
        try:
            return decode(value or b"", expect=InferenceResult)
        except WireFormatError as exc:
            self.stats.invalid_records += 1
            log.debug("skipping a record on %s: %s", self.results_topic, exc)
            return None

    async def _send(self, request: InferenceRequest) -> None:
        value = encode(request)
        try:
            await self._producer.send_and_wait(
                self.names.inference_requests, value, key=request.kafka_key()
            )
        except KafkaError as exc:
            raise self._kafka_failure(
                f"cannot produce to {self.names.inference_requests} on", exc
            ) from exc

    async def _feed(
        self,
        batch: _Batch,
        requests: Iterable[RequestItem] | AsyncIterable[RequestItem],
        program_id: str,
        version: int | None,
        wait_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        topic = self.names.inference_requests
        try:
            async for item in _each(requests):
                await batch.slots.acquire()
                request = self._batch_request(item, program_id, version, wait_s)
                value = encode(request)
                self._routes[request.request_id] = batch
                if not batch.pending:
                    batch.wakeup.set()  # the iterator may be waiting without a deadline
                batch.pending[request.request_id] = (loop.time() + wait_s, request.program_id)
                try:
                    delivery = await self._producer.send(topic, value, key=request.kafka_key())
                except KafkaError as exc:
                    batch.fail(self._kafka_failure(f"cannot produce to {topic} on", exc))
                    return
                # Pipelined: the next request is sent while this one is delivered.
                delivery.add_done_callback(lambda done: self._delivered_or_failed(batch, done))
        except Exception as exc:  # a bad item, or the caller's iterable raised: theirs to see
            batch.feed_error = exc
        finally:
            batch.fed_all = True
            batch.wakeup.set()

    def _delivered_or_failed(self, batch: _Batch, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            return
        exc = delivery.exception()
        if exc is not None:
            topic = self.names.inference_requests
            batch.fail(self._kafka_failure(f"cannot produce to {topic} on", exc))

    def _batch_request(
        self, item: RequestItem, program_id: str, version: int | None, timeout: float
    ) -> InferenceRequest:
        if isinstance(item, InferenceRequest):
            if item.program_id != program_id:
                raise ConfigurationError(
                    f"request {item.request_id} is for program {item.program_id!r}, "
                    f"not {program_id!r}"
                )
            request = item.model_copy(
                update={"reply_to": self.reply_to, "deadline_ms": _deadline_ms(timeout)}
            )
        elif isinstance(item, Mapping):
            request = self._new_request(program_id, version, item, timeout)
        else:
            raise ConfigurationError(
                "submit_many takes mappings of inputs or InferenceRequest records, "
                f"not {type(item).__name__}"
            )
        if request.request_id in self._routes:
            raise ConfigurationError(f"request id {request.request_id} is already in flight")
        return request

    def _new_request(
        self, program_id: str, version: int | None, inputs: Mapping[str, Any], timeout: float
    ) -> InferenceRequest:
        try:
            return InferenceRequest(
                program_id=program_id,
                program_version=version,
                inputs=dict(inputs),
                reply_to=self.reply_to,
                deadline_ms=_deadline_ms(timeout),
            )
        except ValidationError as exc:
            raise ConfigurationError(f"invalid request: {_validation_summary(exc)}") from exc

    def _expire(self, batch: _Batch, timeout: float) -> None:
        now = asyncio.get_running_loop().time()
        while batch.pending:
            request_id, (deadline, program_id) = next(iter(batch.pending.items()))
            if deadline > now:
                return
            del batch.pending[request_id]
            self._routes.pop(request_id, None)
            self.stats.timeouts += 1
            batch.ready.append(self._timeout_result(request_id, program_id, timeout))

    async def _wait(self, batch: _Batch) -> None:
        """Until something happens to the batch, or its next deadline."""
        deadline = next(iter(batch.pending.values()))[0] if batch.pending else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await batch.wakeup.wait()

    def _timeout_result(self, request_id: str, program_id: str, timeout: float) -> InferenceResult:
        return InferenceResult(
            request_id=request_id,
            program_id=program_id,
            program_version=None,
            status="error",
            error=ErrorInfo(
                type="deadline_exceeded",
                message=(
                    f"no result for request {request_id} within {timeout:g}s "
                    f"(client-side timeout of {self.client_id}); is a worker serving "
                    f"{program_id!r}?"
                ),
                retryable=True,
                exception=DeadlineExceededError.__name__,
            ),
            latency_ms=timeout * 1000,
            worker_id=self.client_id,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_running(self) -> None:
        if self._closed:
            raise ConfigurationError("the DSPExClient is closed")
        if self._failure is not None:
            raise self._failure
        if self._reader is None:
            raise ConfigurationError(
                "the DSPExClient is not started: use `async with DSPExClient(...) as client` "
                "or `await client.start()`"
            )

    def _timeout(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            return self.default_timeout_s
        _check_positive("timeout_s", timeout_s)
        return timeout_s

    def _kafka_failure(self, action: str, exc: BaseException) -> LocalServiceError:
        """A one-line error naming the brokers, caused by ``exc``.

        Raised with ``from exc`` where it is raised; handed to waiting calls
        otherwise, so the cause is set here too.
        """
        # aiokafka's messages may start with the class name, shown once here.
        detail = " ".join(str(exc).split()).removeprefix(f"{type(exc).__name__}: ")
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {self.connect_timeout_s:g}s"
        error = LocalServiceError(
            f"{action} Kafka at {self.bootstrap_servers}: {type(exc).__name__}"
            + (f" ({detail})" if detail else ""),
            service=_KAFKA,
        )
        error.__cause__ = exc
        return error


class DSPExClientSync:
    """:class:`DSPExClient` for scripts and notebooks: blocking calls.

    The async client runs on dspex's background event loop (see
    :func:`~dspex.programs._sync.run_sync`); this class only waits for it.
    Takes the same keyword arguments as :class:`DSPExClient` and connects at
    once.

    Example:
        >>> with DSPExClientSync(bootstrap_servers="127.0.0.1:9092") as client:  # doctest: +SKIP
        ...     client.register("qa", dspex.Predict("question -> answer"))
        ...     print(client.run("qa", question="Why?").outputs)
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str | None = None,
        prefix: str | None = None,
        default_timeout_s: float = 60.0,
        reply_to: str | None = None,
        client_id: str | None = None,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.client = DSPExClient(
            bootstrap_servers=bootstrap_servers,
            prefix=prefix,
            default_timeout_s=default_timeout_s,
            reply_to=reply_to,
            client_id=client_id,
            connect_timeout_s=connect_timeout_s,
        )
        run_sync(self.client.start())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def register(
        self,
        program_id: str,
        program: Module | ProgramSpec,
        *,
        description: str = "",
        version: int | None = None,
        registry: ProgramRegistry | None = None,
    ) -> ProgramRecord:
        """See :meth:`DSPExClient.register`."""
        return run_sync(
            self.client.register(
                program_id, program, description=description, version=version, registry=registry
            )
        )

    def run(
        self,
        program_id: str,
        /,
        *,
        version: int | None = None,
        timeout_s: float | None = None,
        **inputs: Any,
    ) -> InferenceResult:
        """See :meth:`DSPExClient.run`."""
        return run_sync(self.client.run(program_id, version=version, timeout_s=timeout_s, **inputs))

    def predict(
        self,
        program_id: str,
        /,
        *,
        version: int | None = None,
        timeout_s: float | None = None,
        **inputs: Any,
    ) -> dict[str, Any]:
        """See :meth:`DSPExClient.predict`."""
        return run_sync(
            self.client.predict(program_id, version=version, timeout_s=timeout_s, **inputs)
        )

    def submit_many(
        self,
        requests: Iterable[RequestItem],
        *,
        program_id: str,
        version: int | None = None,
        max_in_flight: int = 1000,
        timeout_s: float | None = None,
    ) -> Iterator[InferenceResult]:
        """See :meth:`DSPExClient.submit_many`; ``requests`` is read on the client's loop."""
        stream = self.client.submit_many(
            requests,
            program_id=program_id,
            version=version,
            max_in_flight=max_in_flight,
            timeout_s=timeout_s,
        )
        try:
            while True:
                try:
                    yield run_sync(_next(stream))
                except StopAsyncIteration:
                    return
        finally:
            run_sync(_close(stream))

    def close(self) -> None:
        """Stop the client (idempotent)."""
        run_sync(self.client.aclose())


def error_from_result(
    result: InferenceResult, *, requested_version: int | None = None
) -> DSPExError:
    """The dspex error that an error result stands for, to raise in the caller.

    The class follows the wire error type (``unknown_program``:
    ProgramNotFoundError, ``invalid_inputs``: InputError, ``parse_error``:
    AdapterParseError, ``tool_error``: ToolError, ``lm_*``: the LMError
    subclass the worker named, ``deadline_exceeded``: DeadlineExceededError,
    ``internal``: DSPExError). Details the wire does not carry are marked
    ``"remote"`` (an LM error's provider, a parse error's adapter, a tool's name
    unless the error names a field). The message names the request id and the
    program.

    Args:
        result: An error result.
        requested_version: The version the request pinned, if any.

    Returns:
        The error, not raised.

    Raises:
        ConfigurationError: ``result`` is not an error result.

    Example:
        >>> info = ErrorInfo(type="invalid_inputs", message="missing `q`", retryable=False)
        >>> result = InferenceResult(request_id="r1", program_id="qa", program_version=1,
        ...     status="error", error=info, latency_ms=1.0, worker_id="w1")
        >>> type(error_from_result(result)).__name__
        'InputError'
    """
    info = result.error
    if info is None:
        raise ConfigurationError(f"result {result.request_id} is not an error result")
    message = (
        f"request {result.request_id} to program {result.program_id!r} failed "
        f"({info.type}): {info.message}"
    )
    kind = info.type
    if kind in ("unknown_program", "unknown_version"):
        return ProgramNotFoundError(
            message,
            program_id=result.program_id,
            version=requested_version if kind == "unknown_version" else None,
        )
    if kind == "invalid_inputs":
        return InputError(message, fields=[info.field] if info.field else [])
    if kind == "parse_error":
        return AdapterParseError(message, adapter="remote", completion="", field=info.field)
    if kind == "tool_error":
        return ToolError(message, tool=info.field or "remote")
    if kind == "deadline_exceeded":
        return DeadlineExceededError(message, timeout_s=result.latency_ms / 1000)
    family = _LM_FAMILIES.get(kind)
    if family is not None:
        default, members = family
        cls = next((c for c in members if c.__name__ == info.exception), default)
        return cls(message, provider="remote", request_id=result.request_id)
    return DSPExError(message)


# -- helpers --------------------------------------------------------------------------


def _default_client_id() -> str:
    return f"dspex-client-{socket.gethostname()[:64]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _deadline_ms(timeout: float) -> int:
    return now_ms() + int(timeout * 1000)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")


def _remember(seen: OrderedDict[str, None], request_id: str, limit: int) -> None:
    seen[request_id] = None
    if len(seen) > limit:
        seen.popitem(last=False)


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )


async def _each(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


async def _close(stream: AsyncIterator[InferenceResult]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()


async def _quietly_stop(*clients: Any) -> None:
    """Stop Kafka clients during shutdown or after a failed start; errors are moot then."""
    for client in clients:
        if client is None:
            continue
        try:
            await client.stop()
        except (KafkaError, OSError) as exc:
            log.debug("stopping %r: %s", client, exc)
