"""What benchmarks and worker tests set up the same way.

A private broker, the ``echo`` program, a topology file serving one LM, a
backlog of raw requests, and reading a topic back as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import dspex
from dspex._local._process import free_port
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics, partitions_of
from dspex.topologies.settings import TopicSettings

__all__ = [
    "echo_deployment",
    "produce_backlog",
    "read_json_records",
    "start_private_broker",
    "write_topology",
]


async def start_private_broker(workdir: Path) -> KafkaBroker:
    """A broker of the benchmark's own on free ports, data under ``workdir`` (caller stops it)."""
    broker = KafkaBroker(
        BrokerSettings(port=free_port(), controller_port=free_port(), data_dir=workdir / "kafka")
    )
    await broker.start()
    return broker


async def echo_deployment(
    bootstrap: str,
    lm_url: str,
    prefix: str,
    workdir: Path,
    *,
    partitions: int,
    inflight: int,
    **extra: Any,
) -> Path:
    """Topics, the registered ``echo`` program and a topology file for its workers.

    ``extra``: further topology settings (``linger_ms=0``, say).
    """
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=partitions))
    program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    await register_program(bootstrap, TopicNames(prefix), "echo", ProgramSpec.from_program(program))
    topology = workdir / f"{prefix}.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "name": prefix,
                "kafka": {"bootstrap_servers": bootstrap},
                "topics": {"prefix": prefix, "partitions": partitions},
                "lms": {"instant": {"model": "instant", "base_url": lm_url}},
                "inflight_limit": inflight,
                **extra,
            }
        )
    )
    return topology


def write_topology(
    path: Path, *, prefix: str, bootstrap: str, lm_url: str, partitions: int, **extra: Any
) -> Path:
    """A topology serving every program with one LM at ``lm_url``."""
    topology = {
        "name": prefix,
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"prefix": prefix, "partitions": partitions},
        "lms": {"lm": {"model": "scripted", "base_url": lm_url}},
        **extra,
    }
    path.write_text(yaml.safe_dump(topology))
    return path


async def produce_backlog(
    bootstrap: str, topic: str, *, program_id: str, count: int, input_name: str = "question"
) -> None:
    """``count`` requests for ``program_id`` as raw JSON, as fast as the producer batches."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(count):
            body = {
                "schema": "dspex.inference.request/v1",
                "program_id": program_id,
                "inputs": {input_name: f"{input_name} {i}"},
            }
            await producer.send(topic, json.dumps(body).encode(), key=program_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def read_json_records(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> list[Any]:
    """Every record on ``topic`` up to its end at the call, decoded as JSON.

    Read to the end offsets taken first (the last stable offset for
    ``read_committed``), not until the topic goes quiet for a while: a slow
    fetch on a loaded machine cannot end the read early.
    """
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    found: list[Any] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        pending = {tp for tp in partitions if ends[tp] > 0}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for records in batches.values():
                found.extend(json.loads(record.value or b"null") for record in records)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return found
    finally:
        await consumer.stop()
