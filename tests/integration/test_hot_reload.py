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

from aiokafka import AIOKafkaConsumer

import dspex
from bench._deployment import produce_backlog, write_topology
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import scripted_lm_process

BACKLOG = 5_000


async def test_version_two_applies_before_the_backlog_drains(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"h{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    with scripted_lm_process(text=json.dumps({"answer": "ok"}), delay_s=0.02) as lm_url:
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=2,
            inflight_limit=8,
        )
        await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2))
        v1 = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
        await register_program(kafka_bootstrap, names, "echo", ProgramSpec.from_program(v1))
        await produce_backlog(
            kafka_bootstrap, names.inference_requests, program_id="echo", count=BACKLOG
        )
        versions, registered_at_ms = await _serve_and_update(topology, kafka_bootstrap, names)

    assert len(versions) == BACKLOG
    assert registered_at_ms
    # Allow two seconds for the record to reach the worker and in-flight calls to end.
    late = [version for at_ms, version in versions if at_ms > registered_at_ms + 2000]
    early_v2 = sum(1 for _, version in versions if version == 2)
    print(f"{early_v2} of {BACKLOG} answered by version 2; {len(late)} finished >2 s after it")
    assert late, "the backlog drained before the update could apply"
    assert set(late) == {2}
    assert early_v2 > BACKLOG // 2


async def _serve_and_update(
    topology: Path, kafka_bootstrap: str, names: TopicNames
) -> tuple[list[tuple[float, int]], float]:
    """Run a worker over the backlog, registering version 2 after 200 results."""
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
    return versions, registered_at_ms
