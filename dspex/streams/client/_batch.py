"""The internals of :meth:`DSPExClient.submit_many`: one batch's route, feeding and expiry.

A :class:`Batch` is the route of one ``submit_many`` call: it feeds the
caller's requests to Kafka within ``max_in_flight`` slots, collects their
results and turns the ones that time out into ``deadline_exceeded`` results.
``submit_many`` itself, the loop that yields them, stays on the client. A batch
works on its client's connection (routing table and producer): it is part of
the client, kept apart only because it is a responsibility of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from dspex.errors import ConfigurationError, DeadlineExceededError, DSPExError
from dspex.streams.client._base import RequestItem, deadline_ms, new_request
from dspex.streams.client._connection import ClientConnection
from dspex.streams.records import ErrorInfo, InferenceRequest, InferenceResult, encode

__all__ = ["Batch"]

T = TypeVar("T")


class Batch:
    """The route of one :meth:`DSPExClient.submit_many` call.

    ``pending`` is in submission order, and every request of a batch has the
    same timeout, so its first entry is always the next to expire.
    """

    def __init__(self, connection: ClientConnection, max_in_flight: int, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
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

    async def feed(
        self,
        requests: Iterable[RequestItem] | AsyncIterable[RequestItem],
        program_id: str,
        version: int | None,
    ) -> None:
        connection = self.connection
        loop = asyncio.get_running_loop()
        topic = connection.names.inference_requests
        try:
            async for item in each(requests):
                await self.slots.acquire()
                request = self._request(item, program_id, version)
                value = encode(request)
                connection.routes[request.request_id] = self
                if not self.pending:
                    self.wakeup.set()  # the iterator may be waiting without a deadline
                self.pending[request.request_id] = (loop.time() + self.timeout, request.program_id)
                try:
                    delivery = await connection.producer.send(topic, value, key=request.kafka_key())
                except KafkaError as exc:
                    self.fail(connection.kafka_failure(f"cannot produce to {topic} on", exc))
                    return
                # Pipelined: the next request is sent while this one is delivered.
                delivery.add_done_callback(self._delivered_or_failed)
        except Exception as exc:  # a bad item, or the caller's iterable raised: theirs to see
            self.feed_error = exc
        finally:
            self.fed_all = True
            self.wakeup.set()

    def expire(self) -> None:
        now = asyncio.get_running_loop().time()
        while self.pending:
            request_id, (deadline, program_id) = next(iter(self.pending.items()))
            if deadline > now:
                return
            del self.pending[request_id]
            self.connection.routes.pop(request_id, None)
            self.connection.stats.timeouts += 1
            self.ready.append(self._timeout_result(request_id, program_id))

    async def wait(self) -> None:
        """Until something happens to the batch, or its next deadline."""
        deadline = next(iter(self.pending.values()))[0] if self.pending else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.wakeup.wait()

    def _delivered_or_failed(self, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            return
        exc = delivery.exception()
        if exc is not None:
            topic = self.connection.names.inference_requests
            self.fail(self.connection.kafka_failure(f"cannot produce to {topic} on", exc))

    def _request(self, item: RequestItem, program_id: str, version: int | None) -> InferenceRequest:
        connection = self.connection
        if isinstance(item, InferenceRequest):
            if item.program_id != program_id:
                raise ConfigurationError(
                    f"request {item.request_id} is for program {item.program_id!r}, "
                    f"not {program_id!r}"
                )
            request = item.model_copy(
                update={"reply_to": connection.reply_to, "deadline_ms": deadline_ms(self.timeout)}
            )
        elif isinstance(item, Mapping):
            request = new_request(
                program_id,
                version,
                item,
                reply_to=connection.reply_to,
                deadline_ms=deadline_ms(self.timeout),
            )
        else:
            raise ConfigurationError(
                "submit_many takes mappings of inputs or InferenceRequest records, "
                f"not {type(item).__name__}"
            )
        if request.request_id in connection.routes:
            raise ConfigurationError(f"request id {request.request_id} is already in flight")
        return request

    def _timeout_result(self, request_id: str, program_id: str) -> InferenceResult:
        client_id, timeout = self.connection.client_id, self.timeout
        return InferenceResult(
            request_id=request_id,
            program_id=program_id,
            program_version=None,
            status="error",
            error=ErrorInfo(
                type="deadline_exceeded",
                message=(
                    f"no result for request {request_id} within {timeout:g}s "
                    f"(client-side timeout of {client_id}); is a worker serving "
                    f"{program_id!r}?"
                ),
                retryable=True,
                exception=DeadlineExceededError.__name__,
            ),
            latency_ms=timeout * 1000,
            worker_id=client_id,
        )


async def each(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
