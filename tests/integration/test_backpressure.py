"""Backpressure: a slow LM slows consumption; it does not grow the worker's memory.

A 20,000-record backlog waits on the requests topic while a worker with an
in-flight limit of 8 serves it against a scripted LM that answers after 50 ms
(a slow provider, on demand — the real model cannot be made slow to order).
The bound checked: the worker's resident memory grows by less than
``RSS_GROWTH_BOUND_MB`` between its first answers and the end of the run, and
the LM server never sees more than 8 calls at once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

import dspex
from bench._deployment import produce_backlog, write_topology
from dspex._local._process import free_port
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import scripted_lm_process

BACKLOG = 20_000
INFLIGHT_LIMIT = 8
RSS_GROWTH_BOUND_MB = 40
RUN_S = 25


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_large_backlog_keeps_memory_flat_and_inflight_bounded(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    metrics_port = free_port()
    worker: subprocess.Popen[str] | None = None
    with scripted_lm_process(text=json.dumps({"sentiment": "positive"}), delay_s=0.05) as lm_url:
        lm_port = httpx.URL(lm_url).port
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=2,
            inflight_limit=INFLIGHT_LIMIT,
            metrics_port=metrics_port,
        )
        await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2))
        program = dspex.Predict("review -> sentiment", adapter=dspex.JSONAdapter())
        await register_program(
            kafka_bootstrap, names, "classify", ProgramSpec.from_program(program)
        )
        await produce_backlog(
            kafka_bootstrap,
            names.inference_requests,
            program_id="classify",
            count=BACKLOG,
            input_name="review",
        )
        try:
            worker = subprocess.Popen(
                [sys.executable, "-m", "dspex", "worker", str(topology)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            samples: list[tuple[float, float, float]] = []  # (seconds, rss MB, in-flight)
            started = time.monotonic()
            async with httpx.AsyncClient(timeout=5) as http:
                while time.monotonic() - started < RUN_S:
                    await asyncio.sleep(1.0)
                    assert worker.poll() is None, worker.communicate()[0]
                    try:
                        text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                    except httpx.HTTPError:
                        continue  # not serving metrics yet
                    samples.append(
                        (
                            time.monotonic() - started,
                            rss_mb(worker.pid),
                            metric(text, "dspex_inference_inflight_requests"),
                        )
                    )
                final = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                stats = (await http.get(f"http://127.0.0.1:{lm_port}/stats")).json()
        finally:
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.communicate(timeout=60)

    answered = metric(
        final,
        'dspex_inference_requests_total{error_type="",program="classify",status="ok",version="1"}',
    )
    assert 100 < answered < BACKLOG, "the run must end with most of the backlog still queued"
    assert stats["max_concurrent"] <= INFLIGHT_LIMIT
    assert max(inflight for _, _, inflight in samples) <= INFLIGHT_LIMIT
    serving = [rss for seconds, rss, _ in samples if seconds >= 5]
    assert len(serving) >= 10
    growth = max(serving) - serving[0]
    print(f"worker RSS {serving[0]:.0f} -> {max(serving):.0f} MB; {answered:.0f} done; {stats}")
    assert growth < RSS_GROWTH_BOUND_MB, f"worker RSS grew {growth:.0f} MB under a backlog"
