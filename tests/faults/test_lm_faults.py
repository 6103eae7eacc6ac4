"""A worker under LM faults: flaky calls are retried to success; an outage pauses consumption.

The LM is the scripted server on loopback (the one test double allowed: it
fails on demand); the broker and the worker process are real. The worker's
LM endpoint keeps its defaults where they matter here: retries until each
request's deadline, and a circuit breaker that opens on a failure *rate*
and holds requests while open (``breaker_when_open: wait``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

import dspex
from bench._deployment import produce_backlog, write_topology
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex._local._process import free_port
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import start_worker, stop_worker

ANSWER = Reply.completion(json.dumps({"answer": "ok"}))
#: Seconds a "hung" call takes to answer, well past the per-attempt timeout.
HANG_S = 5.0


async def _deploy(
    tmp_path: Path, kafka_bootstrap: str, lm_url: str, **extra: Any
) -> tuple[Path, TopicNames]:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    topology = write_topology(
        tmp_path / "topology.yaml",
        prefix=prefix,
        bootstrap=kafka_bootstrap,
        lm_url=lm_url,
        partitions=2,
        **extra,
    )
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2))
    program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    await register_program(kafka_bootstrap, names, "echo", ProgramSpec.from_program(program))
    return topology, names


def _lm(url: str, **endpoint: Any) -> dict[str, Any]:
    return {"lms": {"lm": {"model": "scripted", "base_url": url, **endpoint}}}


async def _results(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    """The first ``count`` results on ``topic``, by request id (waits for them)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: dict[str, dict[str, Any]] = {}
    try:
        while len(found) < count:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    body = json.loads(record.value or b"{}")
                    found.setdefault(body["request_id"], body)
    finally:
        await consumer.stop()
    return list(found.values())


async def test_flaky_lm_every_request_succeeds(tmp_path: Path, kafka_bootstrap: str) -> None:
    # One call in five answers 500 and one in twenty hangs past the timeout:
    # retries get every request through, and 25 % failures never open the breaker.
    calls = itertools.count()

    def flaky(request: RecordedRequest) -> Reply:
        n = next(calls)
        if n % 20 == 3:
            return Reply(delay_s=HANG_S)
        if n % 5 == 1:
            return Reply.error(500, "flaky")
        return ANSWER

    requests = 600
    async with ScriptedLM(responder=flaky) as server:
        url = server.openai_url
        topology, names = await _deploy(
            tmp_path,
            kafka_bootstrap,
            url,
            inflight_limit=64,
            **_lm(url, timeout_s=1.0),
        )
        await produce_backlog(
            kafka_bootstrap, names.inference_requests, program_id="echo", count=requests
        )
        worker = start_worker(topology, "flaky")
        try:
            results = await asyncio.wait_for(
                _results(kafka_bootstrap, names.inference_results, requests), 600
            )
        finally:
            stop_worker(worker)
    statuses = Counter(r["status"] for r in results)
    errors = Counter(r["error"]["type"] for r in results if r["status"] == "error")
    assert statuses == {"ok": requests}, errors
    # The faults really happened: more calls than requests.
    assert len(server.requests) > requests * 1.2


async def test_an_outage_pauses_the_worker_and_traffic_recovers_by_itself(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    down = True
    calls_while_down = 0
    #: Set once the LM has seen ``watch_for`` more calls while down.
    seen = asyncio.Event()
    watch_for: int | None = None

    def outage(request: RecordedRequest) -> Reply:
        nonlocal calls_while_down
        if not down:
            return ANSWER
        calls_while_down += 1
        if watch_for is not None and calls_while_down >= watch_for:
            seen.set()
        return Reply.error(503, "down for maintenance")

    requests = 300
    metrics_port = free_port()
    async with ScriptedLM(responder=outage) as server:
        url = server.openai_url
        topology, names = await _deploy(
            tmp_path,
            kafka_bootstrap,
            url,
            inflight_limit=16,
            metrics_port=metrics_port,
            **_lm(url, breaker_recovery_s=1.0),
        )
        await produce_backlog(
            kafka_bootstrap, names.inference_requests, program_id="echo", count=requests
        )
        worker = start_worker(topology, "outage")
        try:
            await asyncio.wait_for(_breaker_open(metrics_port), 300)
            reached = calls_while_down
            # While it is down, the LM sees only probes, one per recovery period,
            # not the backlog: wait for two of them.
            watch_for = reached + 2
            await asyncio.wait_for(seen.wait(), 300)
            assert calls_while_down - reached < 16 * 3
            down = False
            results = await asyncio.wait_for(
                _results(kafka_bootstrap, names.inference_results, requests), 600
            )
        finally:
            stop_worker(worker)
    errors = Counter(r["error"]["type"] for r in results if r["status"] == "error")
    assert errors == Counter(), "an outage must delay requests, not fail them"
    assert len(results) == requests


async def _breaker_open(port: int) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                text = ""  # not serving yet
            for line in text.splitlines():
                if line.startswith("dspex_lm_circuit_state{") and float(line.split()[-1]) > 0:
                    return
            await asyncio.sleep(0.5)
