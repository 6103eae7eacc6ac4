"""Exactly-once output on the real broker: answers commit atomically with their offsets.

With ``exactly_once`` a channel holds each answer until every earlier offset
of its partition is answered, then produces the answers and commits the
offset after them in one transaction. The handler holds chosen records until
released (tests/support/gate.py), so each step is checked when it happens.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from dspex.streams.worker.transactions import PartitionTransactions
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


async def committed_records(bootstrap: str, topic: str) -> list[bytes]:
    """Everything a read_committed reader finds on partition 0 of ``topic`` now."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await reader.start()
    tp = TopicPartition(topic, 0)
    try:
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]  # the last stable offset
        found: list[bytes] = []
        while await reader.position(tp) < end:
            for records in (await reader.getmany(tp, timeout_ms=200)).values():
                found += [record.value or b"" for record in records]
        return found
    finally:
        await reader.stop()


async def _true(value: bool) -> bool:
    return value


async def test_answers_wait_for_the_gap_before_them_then_commit_with_their_offset(
    kafka_bootstrap: str, topics: tuple[str, str], group_id: str
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 10)
    gate = Gate(sink)
    consumer = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=10, exactly_once=True)
    await consumer.start()
    try:
        await gate.until(lambda: len(gate.running) == 10)
        await gate.release(*range(1, 10))  # all but the first
        await gate.until(lambda: len(gate.handled) == 9)
        for _ in range(5):  # several commit rounds end after the nine were answered
            marker = time.monotonic()
            await eventually(lambda m=marker: _true(consumer._last_commit > m))
            # Nothing produced, nothing committed: the nine wait for offset 0.
            assert await committed(kafka_bootstrap, group_id, source) == 0
            assert await committed_records(kafka_bootstrap, sink) == []
        await gate.release(0)
        values = await read_all(kafka_bootstrap, sink, 10, isolation_level="read_committed")
        assert values == [f"v{i}".encode() for i in range(10)]  # in offset order
        assert await committed(kafka_bootstrap, group_id, source) == 10
    finally:
        await consumer.stop()


async def test_a_fenced_owner_produces_nothing_and_the_work_still_lands_once(
    kafka_bootstrap: str, topics: tuple[str, str], group_id: str
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 5)
    gate = Gate(sink)
    consumer = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=5, exactly_once=True)
    await consumer.start()
    tp = TopicPartition(source, 0)
    # Another producer with the partition's transactional id (its next owner,
    # after a pause this one did not notice) starts: the broker fences this one.
    usurper = PartitionTransactions(
        tp, group_id=group_id, bootstrap_servers=kafka_bootstrap, fallback_topic=sink
    )
    try:
        await gate.until(lambda: len(gate.running) == 5)
        # Fetching starts as the partition is assigned, its producer a moment later.
        await eventually(lambda: _true(tp in consumer._transactions))
        fenced = consumer._transactions[tp]
        await usurper.start()
        await usurper.producer.begin_transaction()  # waits for its producer id: fenced now
        await usurper.producer.commit_transaction()
        gate.released = Everything()
        await gate.release()
        await eventually(lambda: _true(fenced.fenced))
        # The group still says the partition is this consumer's: it rejoins,
        # reads the five again and answers them in a transaction of its own.
        await eventually(lambda: _equals(committed(kafka_bootstrap, group_id, source), 5))
        assert len(gate.handled) == 10, "each record was answered twice"
        values = await committed_records(kafka_bootstrap, sink)
        assert values == [f"v{i}".encode() for i in range(5)], "and its output landed once"
    finally:
        await usurper.stop()
        await consumer.stop()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_stop_commits_what_was_answered(
    kafka_bootstrap: str, topics: tuple[str, str], group_id: str
) -> None:
    source, sink = topics
    await produce(kafka_bootstrap, source, 6)
    gate = Gate(sink)
    gate.released = Everything()
    consumer = consumer_for(kafka_bootstrap, topics, group_id, gate, limit=6, exactly_once=True)
    consumer.commit_interval_s = 60.0  # no round before the stop: the stop's own commits them
    await consumer.start()
    try:
        await gate.until(lambda: len(gate.handled) == 6)
        await eventually(lambda: _true(TopicPartition(source, 0) in consumer._transactions))
    finally:
        await consumer.stop()
    assert await committed_records(kafka_bootstrap, sink) == [f"v{i}".encode() for i in range(6)]
    assert await committed(kafka_bootstrap, group_id, source) == 6
