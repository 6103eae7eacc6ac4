"""The optimizer service reads committed records only.

Workers with ``processing_guarantee: exactly_once`` write in transactions; a
record of an aborted transaction must never become a trace. Here an aborted
and a committed feedback record go to the feedback topic; the service (a
real process on the real broker) must take in the committed one only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bench._deployment import write_topology
from dspex._local._process import free_port
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import start_dspex, stop_worker
from tests.support.gate import at_least, committed, eventually
from tests.support.metrics import counter_total

pytestmark = pytest.mark.kafka


def feedback() -> bytes:
    body = {"schema": "dspex.feedback/v1", "request_id": uuid.uuid4().hex, "score": 1.0}
    return json.dumps(body).encode()


async def test_an_aborted_transactions_records_never_reach_the_service(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    port = free_port()
    topology = write_topology(
        tmp_path / "topology.yaml",
        prefix=prefix,
        bootstrap=kafka_bootstrap,
        lm_url="http://127.0.0.1:9/v1",  # no job runs: the LM is never called
        partitions=1,
        optimizer={"metrics_port": port},
    )
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1))
    service = start_dspex(["optimizer", "serve", str(topology)], "optimizer-committed")
    try:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=f"{prefix}-writer"
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(names.feedback, feedback())
            await producer.abort_transaction()
            async with producer.transaction():
                last = await producer.send_and_wait(names.feedback, feedback())
        finally:
            await producer.stop()
        group = f"{prefix}-optimizer"
        # Past the committed record (and the transaction markers after it).
        await eventually(
            lambda: at_least(committed(kafka_bootstrap, group, names.feedback), last.offset + 1)
        )
        assert await asyncio.to_thread(counter_total, port, "dspex_optimizer_feedback") == 1
    finally:
        code, log = stop_worker(service)
    assert code == 0, log[-3000:]
