"""A client's link to Kafka: its producer, its results reader and the routes results go to.

:class:`ClientConnection` is the state behind one
:class:`~dspex.streams.client.DSPExClient`. It produces requests, reads the
results topic from the end it had at start (no consumer group) and hands each
result to the route waiting for its request id: the
:class:`~dspex.streams.client._base.Reply` of a ``run`` or the
:class:`~dspex.streams.client._batch.Batch` of a ``submit_many``. Results for
other request ids are ignored, and repeats of a delivered one dropped. When
the reader fails, every waiting route fails with it, and so does every later
call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dspex.errors import ConfigurationError, DSPExError, LocalServiceError, WireFormatError
from dspex.streams._connect import start_client
from dspex.streams.client._base import ClientStats, Route, remember
from dspex.streams.client._kafka import (
    POLL_MS,
    assign,
    kafka_failure,
    new_consumer,
    quietly_stop,
    topic_partitions,
)
from dspex.streams.records import InferenceRequest, InferenceResult, decode, encode
from dspex.streams.topics import TopicNames
from dspex.topologies.settings import KafkaTarget, client_options

__all__ = ["ClientConnection"]

log = logging.getLogger(__name__)


class ClientConnection:
    """The Kafka side of one client: start, produce, read and route results, close.

    Args:
        bootstrap_servers: Kafka brokers.
        names: The deployment's topics.
        reply_to: The client's own results topic; None: the deployment's.
        client_id: Names the client in Kafka.
        connect_timeout_s: How long :meth:`start` may take to reach Kafka.
        dedupe_window: How many delivered request ids are remembered to drop repeats.
        stats: The client's counters, shared with it.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: KafkaTarget,
        names: TopicNames,
        reply_to: str | None,
        client_id: str,
        connect_timeout_s: float,
        dedupe_window: int,
        stats: ClientStats,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.names = names
        self.reply_to = reply_to
        self.results_topic = reply_to or names.inference_results
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.dedupe_window = dedupe_window
        self.stats = stats
        self.producer: Any = None
        #: request id -> where its result goes.
        self.routes: dict[str, Route] = {}
        #: Routes of many requests (``submit_many``): failed with the rest when the reader stops.
        self.batches: set[Route] = set()
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[Any] = set()
        self._result_partitions: list[int] = []
        #: Why the results reader stopped, when it failed: every later call raises it.
        self._failure: DSPExError | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka and start reading results from the topic's current end.

        Raises:
            LocalServiceError: Kafka cannot be reached within ``connect_timeout_s``.
            ConfigurationError: The requests or results topic does not exist, or
                the connection was already started or closed.
        """
        if self._reader is not None or self._closed:
            raise ConfigurationError("a DSPExClient can be started once")
        producer = AIOKafkaProducer(
            **client_options(self.bootstrap_servers), acks="all", client_id=self.client_id
        )
        consumer = new_consumer(self.bootstrap_servers, self.client_id)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await start_client(producer, self.bootstrap_servers)
                await self._partitions(producer, self.names.inference_requests)
                self._result_partitions = await self._partitions(producer, self.results_topic)
                await consumer.start()
                await self._assign(consumer, from_beginning=False)
        except BaseException as exc:
            await quietly_stop(consumer, producer)
            if isinstance(exc, (KafkaError, TimeoutError, OSError)):
                raise self.kafka_failure("cannot connect to", exc) from exc
            raise
        self.producer, self._consumer = producer, consumer
        self._reader = asyncio.create_task(self._read_results(), name=f"{self.client_id} results")
        self._reader.add_done_callback(self._reader_stopped)

    async def aclose(self) -> None:
        """Stop reading and producing; fail the routes still waiting. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fail_all(ConfigurationError("the DSPExClient was closed"))
        tasks = [task for task in (self._reader, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await quietly_stop(*self._streams, self._consumer, self.producer)
        self._streams.clear()

    def check_running(self) -> None:
        """Raise unless the connection is started, not closed, and its reader has not failed."""
        if self._closed:
            raise ConfigurationError("the DSPExClient is closed")
        if self._failure is not None:
            raise self._failure
        if self._reader is None:
            raise ConfigurationError(
                "the DSPExClient is not started: use `async with DSPExClient(...) as client` "
                "or `await client.start()`"
            )

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` in a task that :meth:`aclose` cancels if it is still running."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- producing ------------------------------------------------------------------

    async def send(self, request: InferenceRequest) -> None:
        """Produce ``request`` and wait until Kafka has it.

        Raises:
            LocalServiceError: Kafka did not take it.
        """
        value = encode(request)
        try:
            await self.producer.send_and_wait(
                self.names.inference_requests, value, key=request.kafka_key()
            )
        except KafkaError as exc:
            raise self.kafka_failure(
                f"cannot produce to {self.names.inference_requests} on", exc
            ) from exc

    def kafka_failure(self, action: str, exc: BaseException) -> LocalServiceError:
        """A one-line error naming the brokers, caused by ``exc``."""
        return kafka_failure(
            action,
            exc,
            bootstrap_servers=self.bootstrap_servers,
            connect_timeout_s=self.connect_timeout_s,
        )

    # -- reading --------------------------------------------------------------------

    def results_consumer(self) -> Any:
        """A new consumer of the results topic; :meth:`aclose` stops it if it is still open."""
        consumer = new_consumer(self.bootstrap_servers, self.client_id)
        self._streams.add(consumer)
        return consumer

    async def start_reading(self, consumer: Any, *, from_beginning: bool) -> None:
        """Start a consumer of :meth:`results_consumer` at the results topic's end or beginning.

        Raises:
            LocalServiceError: Kafka cannot be reached within ``connect_timeout_s``.
        """
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await consumer.start()
                await self._assign(consumer, from_beginning=from_beginning)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise self.kafka_failure(f"cannot read {self.results_topic} on", exc) from exc

    async def release(self, consumer: Any) -> None:
        """Stop a consumer of :meth:`results_consumer`."""
        self._streams.discard(consumer)
        await quietly_stop(consumer)

    def decode(self, value: bytes | None) -> InferenceResult | None:
        """The result in a record of the results topic; None (counted) if it is none."""
        try:
            return decode(value or b"", expect=InferenceResult)
        except WireFormatError as exc:
            self.stats.invalid_records += 1
            log.debug("skipping a record on %s: %s", self.results_topic, exc)
            return None

    async def _assign(self, consumer: Any, *, from_beginning: bool) -> None:
        await assign(
            consumer, self.results_topic, self._result_partitions, from_beginning=from_beginning
        )

    async def _partitions(self, producer: Any, topic: str) -> list[int]:
        return await topic_partitions(
            producer, topic, bootstrap_servers=self.bootstrap_servers, prefix=self.names.prefix
        )

    # -- routing --------------------------------------------------------------------

    async def _read_results(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=POLL_MS)
            except KafkaError as exc:  # the consumer reconnects by itself
                log.warning("reading %s: %s; retrying", self.results_topic, exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for message in records:
                    result = self.decode(message.value)
                    if result is not None:
                        self._route(result)

    def _route(self, result: InferenceResult) -> None:
        route = self.routes.pop(result.request_id, None)
        if route is None:
            # Another client's request, one that timed out, or a repeat.
            if result.request_id in self._delivered:
                self.stats.duplicates_dropped += 1
            return
        remember(self._delivered, result.request_id, self.dedupe_window)
        route.deliver(result)

    def _reader_stopped(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        log.error("results reader of %s stopped: %r", self.client_id, exc)
        if exc is not None:
            self._failure = self.kafka_failure(f"stopped reading {self.results_topic} from", exc)
            self._fail_all(self._failure)

    def _fail_all(self, exc: DSPExError) -> None:
        routes: list[Route] = [*self.routes.values(), *self.batches]
        self.routes.clear()
        for route in routes:
            route.fail(exc)
