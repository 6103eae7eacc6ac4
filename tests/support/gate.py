"""A channel consumer's handler that holds chosen records until released, and its helpers.

Each guarantee of :class:`~dspex.streams.worker.consumer.BoundedConsumer` is
checked at the moment it matters by waiting on events, not on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import GroupCoordinatorNotAvailableError

from dspex.streams.metrics import WorkerMetrics
from dspex.streams.worker.consumer import BoundedConsumer
from dspex.streams.worker.inference import Origin, Outgoing
from dspex.streams.worker.offsets import committed_offsets

__all__ = ["Everything", "Gate", "committed", "consumer_for", "eventually", "produce", "read_all"]


class Gate:
    """A handler that echoes each record to ``sink`` once its offset is released."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.released: set[int] = set()
        self.running: set[int] = set()
        self.most_at_once = 0
        self.handled: list[int] = []
        self.changed = asyncio.Condition()

    async def handle(
        self, key: bytes | None, value: bytes | None, origin: Origin
    ) -> list[Outgoing]:
        async with self.changed:
            self.running.add(origin.offset)
            self.most_at_once = max(self.most_at_once, len(self.running))
            self.changed.notify_all()
            await self.changed.wait_for(lambda: origin.offset in self.released)
            self.running.discard(origin.offset)
            self.handled.append(origin.offset)
            self.changed.notify_all()
        return [Outgoing(self.sink, key, value or b"")]

    async def release_all(self) -> None:
        async with self.changed:
            self.released = Everything()
            self.changed.notify_all()

    async def release(self, *offsets: int) -> None:
        async with self.changed:
            self.released.update(offsets)
            self.changed.notify_all()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with self.changed:
            await self.changed.wait_for(condition)


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, f"v{i}".encode(), key=b"k", partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> int:
    """The offset ``group`` committed on ``topic``'s partition 0; 0 until a coordinator answers."""
    try:
        offsets = await committed_offsets(bootstrap, group, topic)
    except GroupCoordinatorNotAvailableError:  # a fresh broker still creating its offsets topic
        return 0
    return offsets.get(TopicPartition(topic, 0), 0)


async def at_least(value: Awaitable[int], floor: int) -> bool:
    """Whether ``value``, once awaited, is ``floor`` or more (for :func:`eventually`)."""
    return await value >= floor


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (the test's own timeout bounds the wait)."""
    while not await check():  # noqa: ASYNC110 - the state is the broker's, no event to await
        await asyncio.sleep(0.05)


async def read_all(
    bootstrap: str, topic: str, count: int, *, isolation_level: str = "read_uncommitted"
) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        while len(values) < count:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values += [r.value or b"" for r in records]
    finally:
        await consumer.stop()
    return values


def consumer_for(
    bootstrap: str,
    topics: tuple[str, str],
    group: str,
    gate: Gate,
    *,
    limit: int,
    **options: Any,
) -> BoundedConsumer:
    source, sink = topics
    return BoundedConsumer(
        topic=source,
        group_id=group,
        bootstrap_servers=bootstrap,
        handle=gate.handle,
        fallback_topic=sink,
        inflight_limit=limit,
        commit_interval_s=0.05,
        session_timeout_s=6,
        drain_timeout_s=30,
        metrics=WorkerMetrics.create(),
        **options,
    )


class Everything(set[int]):
    """Released: every offset."""

    def __contains__(self, item: object) -> bool:
        return True
