"""Produce and consume against the real broker, with per-test topics and groups."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.conftest import TopicFactory


async def _consume(
    bootstrap: str, topic: str, group: str, count: int
) -> list[tuple[int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[tuple[int, bytes, bytes]] = []
    try:
        while len(seen) < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=count)
            for records in batches.values():
                seen += [(r.partition, r.key or b"", r.value or b"") for r in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    return seen


async def test_records_round_trip_and_keys_keep_their_partition(
    kafka_bootstrap: str, new_topic: TopicFactory, group_id: str
) -> None:
    topic = await new_topic(partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = [(f"program-{i % 5}".encode(), f"request-{i}".encode()) for i in range(30)]
        for key, value in sent:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    received = await _consume(kafka_bootstrap, topic, group_id, len(sent))
    assert sorted(v for _, _, v in received) == sorted(v for _, v in sent)
    partitions_by_key: dict[bytes, set[int]] = {}
    for partition, key, _ in received:
        partitions_by_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in partitions_by_key.values())
    assert len({p for p, _, _ in received}) > 1, "30 records over 5 keys used one partition"


async def test_topics_of_different_tests_are_isolated(
    kafka_bootstrap: str, new_topic: TopicFactory, group_id: str
) -> None:
    mine, other = await new_topic(), await new_topic()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(other, b"not for you")
        await producer.send_and_wait(mine, b"for you")
    finally:
        await producer.stop()
    assert [v for _, _, v in await _consume(kafka_bootstrap, mine, group_id, 1)] == [b"for you"]
    theirs = await _consume(kafka_bootstrap, other, f"{group_id}-other", 1)
    assert [v for _, _, v in theirs] == [b"not for you"]
