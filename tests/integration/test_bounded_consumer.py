"""BoundedConsumer on the real broker: the bound, commit after produce, drain on revoke and stop.

The handler is a test function that holds chosen records until released, so
each guarantee is checked at the moment it matters, by waiting on events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from dspex.streams.worker.consumer import BoundedConsumer
from tests.conftest import TopicFactory
from tests.support.gate import (
    Everything,
    Gate,
    committed,
    consumer_for,
    eventually,
    produce,
    read_all,
)

pytestmark = pytest.mark.kafka


async def test_in_flight_stays_bounded_and_a_full_set_pauses_fetching(
    kafka_bootstrap: str, topics: tuple[str, str], group_id: str
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 20)
    gate = Gate(sink)
    consumer = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=3)
    await consumer.start()
    try:
        await gate.until(lambda: len(gate.running) == 3)
        await eventually(lambda: _true(bool(consumer.paused_partitions())))
        assert gate.running == {0, 1, 2}
        assert consumer.metrics is not None
        registry = consumer.metrics.registry
        paused = registry.get_sample_value(
            "dspex_consumer_paused_partitions", {"channel": "inference"}
        )
        assert paused == 1
        await gate.release(*range(20))
        await gate.until(lambda: len(gate.handled) == 20)
        assert gate.most_at_once == 3
        assert not consumer.paused_partitions(), "fetching resumes once a slot frees"
    finally:
        await consumer.stop()
    assert sorted(await read_all(kafka_bootstrap, sink, 20)) == sorted(
        f"v{i}".encode() for i in range(20)
    )


async def _true(value: bool) -> bool:
    return value


async def test_an_offset_is_committed_only_when_every_earlier_one_is_answered(
    kafka_bootstrap: str, topics: tuple[str, str], group_id: str
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 10)
    gate = Gate(sink)
    consumer = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=10)
    await consumer.start()
    try:
        await gate.until(lambda: len(gate.running) == 10)
        await gate.release(*range(1, 10))  # all but the first
        await gate.until(lambda: len(gate.handled) == 9)
        # The nine later results are delivered; their offsets must wait for offset 0.
        await read_all(kafka_bootstrap, sink, 9)
        for _ in range(5):  # several commit rounds end after the nine were answered
            marker = time.monotonic()
            await eventually(lambda m=marker: _true(consumer._last_commit > m))
            assert await committed(kafka_bootstrap, group_id, source) == 0
        await gate.release(0)
        await eventually(lambda: _equals(committed(kafka_bootstrap, group_id, source), 10))
    finally:
        await consumer.stop()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_stop_finishes_and_commits_what_is_in_flight(
    kafka_bootstrap: str, topics: tuple[str, str], group_id: str
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 8)
    gate = Gate(sink)
    consumer = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=4)
    await consumer.start()
    await gate.release(0, 1, 2, 3)
    await gate.until(lambda: len(gate.handled) == 4)
    await gate.until(lambda: len(gate.running) == 4)  # 4..7 taken, held
    stopping = asyncio.create_task(consumer.stop())
    runner = consumer._runner
    assert runner is not None
    await asyncio.wait([runner])  # the stop has begun: nothing more is taken
    assert gate.running == {4, 5, 6, 7}
    assert not stopping.done(), "the stop waits for the requests in flight"
    await gate.release(4, 5, 6, 7)
    await stopping
    assert await committed(kafka_bootstrap, group_id, source) == 8
    assert len(await read_all(kafka_bootstrap, sink, 8)) == 8


async def test_a_rebalance_hands_partitions_over_with_nothing_answered_twice(
    kafka_bootstrap: str, new_topic: TopicFactory, group_id: str
) -> None:
    source, sink = await new_topic(partitions=4), await new_topic(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(200):
            await producer.send(source, f"v{i}".encode(), partition=i % 4)
        await producer.flush()
    finally:
        await producer.stop()
    first, second = Gate(sink), Gate(sink)
    second.released = Everything()
    first.released = Everything()
    a = Watched(consumer_for(kafka_bootstrap, (source, sink), group_id, first, limit=8))
    b = Watched(consumer_for(kafka_bootstrap, (source, sink), group_id, second, limit=8))
    await a.start()
    try:
        await first.until(lambda: len(first.handled) >= 20)
        first.released = set()  # hold what a takes from now on
        await first.until(lambda: len(first.running) > 0)
        joining = asyncio.create_task(b.start())
        await a.revoking.wait()
        assert first.running, "a's requests in flight are still held"
        assert not joining.done(), "b joins only once a has drained and committed"
        await first.release_all()
        await joining
        await eventually(lambda: _true(len(first.handled) + len(second.handled) >= 200))
    finally:
        await asyncio.gather(a.stop(), b.stop())
    answered = await read_all(kafka_bootstrap, sink, 200)
    assert len(answered) == len(set(answered)) == 200
    assert second.handled, "the second consumer took partitions over"


class Watched(BoundedConsumer):
    """A BoundedConsumer that says when its partitions are first revoked."""

    def __init__(self, of: BoundedConsumer) -> None:
        self.__dict__.update(of.__dict__)
        self.revoking = asyncio.Event()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            self.revoking.set()
        await super().on_partitions_revoked(revoked)


async def test_a_new_group_starts_where_the_seed_group_left_off(
    kafka_bootstrap: str, topics: tuple[str, str], group_id: str
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 10)
    old_group = f"{group_id}-old"
    old = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=old_group, enable_auto_commit=False
    )
    await old.start()
    try:
        old.assign([TopicPartition(source, 0)])
        await old.commit({TopicPartition(source, 0): 6})
    finally:
        await old.stop()
    gate = Gate(sink)
    gate.released = Everything()
    consumer = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=4)
    consumer.seed_group = old_group
    await consumer.start()
    try:
        await eventually(lambda: _equals(committed(kafka_bootstrap, group_id, source), 10))
    finally:
        await consumer.stop()
    assert sorted(gate.handled) == [6, 7, 8, 9]
    # Once the new group has committed, its own offsets win over the seed.
    await produce(kafka_bootstrap, source, 2)
    again = Gate(sink)
    again.released = Everything()
    restarted = consumer_for(kafka_bootstrap, topics, group_id, again, limit=4)
    restarted.seed_group = old_group
    await restarted.start()
    try:
        await eventually(lambda: _equals(committed(kafka_bootstrap, group_id, source), 12))
    finally:
        await restarted.stop()
    assert sorted(again.handled) == [10, 11]


class WedgedCommit(BoundedConsumer):
    """A consumer whose first commit round never returns, as Faust's consumer once hung."""

    def __init__(self, of: BoundedConsumer) -> None:
        self.__dict__.update(of.__dict__)
        self.wedged = False

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        if not self.wedged:
            self.wedged = True
            await asyncio.Event().wait()  # never set: only a cancellation ends it
        await super()._commit(partitions)


async def test_a_wedged_consumer_is_detected_leaves_its_group_and_is_replaced(
    kafka_bootstrap: str,
    topics: tuple[str, str],
    group_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 30)
    gate = Gate(sink)
    gate.released = Everything()
    plain = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=8)
    plain.stall_after_s = 1.0
    consumer = WedgedCommit(plain)
    await consumer.start()
    try:
        await eventually(lambda: _equals(committed(kafka_bootstrap, group_id, source), 30))
        assert consumer.metrics is not None
        registry = consumer.metrics.registry
        labels = {"channel": "inference"}
        assert registry.get_sample_value("dspex_consumer_stalls_total", labels) == 1
        age = registry.get_sample_value("dspex_consumer_step_age_seconds", labels)
        assert age is not None
        assert 0 <= age < consumer.stall_after_s
    finally:
        await consumer.stop()
    assert "stalled" in caplog.text
    assert "_commit" in caplog.text, "the log names where it hung"
    # Nothing was committed before the stall, so the new consumer answered everything again.
    answered = await read_all(kafka_bootstrap, sink, 60)
    assert sorted(set(answered)) == sorted(f"v{i}".encode() for i in range(30))
