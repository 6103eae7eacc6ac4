"""A registry update applies while a large inference backlog is queued.

5,000 requests wait on the requests topic; a worker works through them
against a scripted LM that answers after 20 ms. Version 2 is registered early;
because the registry has its own channel, the worker applies it at once, not
after the backlog: every request answered after the update reports version 2.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import dspex
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, TopicSettings, ensure_topics

BACKLOG = 5_000


async def test_version_two_applies_before_the_backlog_drains(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.scripted_lm",
            "--port",
            "0",
            "--delay-s",
            "0.02",
            "--text",
            json.dumps({"answer": "ok"}),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    lm_port = int(server.stdout.readline())
    prefix = f"h{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "name": prefix,
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "topics": {"prefix": prefix, "partitions": 2},
                "lms": {"scripted": {"model": "m", "base_url": f"http://127.0.0.1:{lm_port}/v1"}},
                "inflight_limit": 8,
            }
        )
    )
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2))
    v1 = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    await register_program(kafka_bootstrap, names, "echo", ProgramSpec.from_program(v1))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(BACKLOG):
            body = {
                "schema": "dspex.inference.request/v1",
                "program_id": "echo",
                "inputs": {"question": f"q{i}"},
            }
            await producer.send(names.inference_requests, json.dumps(body).encode(), key=b"echo")
        await producer.flush()
    finally:
        await producer.stop()

    worker = subprocess.Popen(
        [sys.executable, "-m", "dspex", "worker", str(topology)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    consumer = AIOKafkaConsumer(
        names.inference_results,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    versions: list[tuple[float, int]] = []  # (completed_at_ms, version)
    registered_at_ms = 0.0
    try:
        deadline = time.monotonic() + 240
        while len(versions) < BACKLOG and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    result = json.loads(record.value or b"{}")
                    versions.append((result["completed_at_ms"], result["program_version"]))
            if len(versions) >= 200 and not registered_at_ms:
                v2 = dspex.Predict(
                    "question -> answer", adapter=dspex.JSONAdapter()
                ).signature.with_instructions("Answer briefly.")
                registered_at_ms = time.time() * 1000
                await register_program(
                    kafka_bootstrap,
                    names,
                    "echo",
                    ProgramSpec.from_program(dspex.Predict(v2, adapter=dspex.JSONAdapter())),
                )
    finally:
        await consumer.stop()
        worker.terminate()
        await asyncio.to_thread(worker.wait, 60)
        server.terminate()
        server.communicate(timeout=30)

    assert len(versions) == BACKLOG
    assert registered_at_ms
    # Allow two seconds for the record to reach the worker and in-flight calls to end.
    late = [version for at_ms, version in versions if at_ms > registered_at_ms + 2000]
    early_v2 = sum(1 for _, version in versions if version == 2)
    print(f"{early_v2} of {BACKLOG} answered by version 2; {len(late)} finished >2 s after it")
    assert late, "the backlog drained before the update could apply"
    assert set(late) == {2}
    assert early_v2 > BACKLOG // 2
