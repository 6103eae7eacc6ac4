"""What a running worker tells its operators, and how it stops.

One worker serves a 1,500-request backlog against a scripted LM that answers
after 20 ms. While it works, its ``/metrics`` must show the backlog as
consumer lag, partitions paused for a full buffer, LM calls with provider and
model, and a closed circuit; ``dspex.telemetry`` must carry one ``lm_call``
event per LM call next to each ``request`` event. Then SIGTERM mid-backlog:
the worker exits 0 within a bounded time, and every request below the
committed offset has its result (an offset is committed only after its
result is produced). A second worker finishes the rest.

``/metrics`` listens on the topology's ``metrics_host`` and nowhere else:
loopback by default, any interface where Prometheus scrapes from elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer

import dspex
from bench._deployment import read_json_records, write_topology
from dspex._local._process import accepts_connections, free_port
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.streams.worker.offsets import committed_offsets
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import (
    WorkerProcess,
    scripted_lm_process,
    start_worker,
    stop_worker,
)

BACKLOG = 1_500
#: Most seconds a worker may take to exit after SIGTERM.
SHUTDOWN_BOUND_S = 30


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text, or None if absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{key}="{val}"' in series for key, val in labels.items()):
            return float(value)
    return None


async def produce_numbered(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(count):
            body = {
                "schema": "dspex.inference.request/v1",
                "request_id": f"r{i}",
                "program_id": "classify",
                "inputs": {"review": f"review {i}"},
            }
            await producer.send(topic, json.dumps(body).encode(), key=b"classify")
        await producer.flush()
    finally:
        await producer.stop()


async def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    return sum((await committed_offsets(bootstrap, group, topic)).values())


async def test_worker_reports_lag_lm_calls_and_stops_cleanly_on_sigterm(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"o{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    metrics_port = free_port()
    with scripted_lm_process(text=json.dumps({"sentiment": "positive"}), delay_s=0.02) as lm_url:
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=1,
            inflight_limit=4,
            metrics_port=metrics_port,
        )
        await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1))
        program = dspex.Predict("review -> sentiment", adapter=dspex.JSONAdapter())
        await register_program(
            kafka_bootstrap, names, "classify", ProgramSpec.from_program(program)
        )
        await produce_numbered(kafka_bootstrap, names.inference_requests, BACKLOG)

        worker = start_worker(topology, "w-observed")
        scrapes: list[str] = []
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    assert worker.poll() is None, worker.communicate()[0]
                    try:
                        text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                    except httpx.HTTPError:
                        continue
                    scrapes.append(text)
                    done = sample(text, "dspex_inference_requests_total", status="ok") or 0
                    if done >= 300 and (sample(text, "dspex_consumer_lag_records") or 0) > 0:
                        break
            stopping = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            code, output = stop_worker(worker)
            stop_s = time.monotonic() - stopping
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()

        assert code == 0, output
        assert stop_s < SHUTDOWN_BOUND_S, f"worker took {stop_s:.1f}s to stop"
        last = scrapes[-1]
        lag = sample(last, "dspex_consumer_lag_records", channel="inference")
        assert lag is not None
        assert 0 < lag <= BACKLOG
        full = sample(last, "dspex_consumer_buffer_full_total", channel="inference")
        assert (full or 0) >= 1, "a full buffer that paused fetching must be counted"
        lm = {"provider": "openai", "model": "scripted"}
        assert (sample(last, "dspex_lm_calls_total", status="ok", **lm) or 0) >= 300
        assert (sample(last, "dspex_lm_call_duration_seconds_count", **lm) or 0) >= 300
        assert sample(last, "dspex_lm_circuit_state", **lm) == 0

        committed = await committed_offset(
            kafka_bootstrap, f"{prefix}-inference", names.inference_requests
        )
        results = await read_json_records(kafka_bootstrap, names.inference_results)
        answered = {r["request_id"] for r in results}
        assert 0 < committed < BACKLOG
        missing = [f"r{i}" for i in range(committed) if f"r{i}" not in answered]
        assert not missing, f"committed past requests without results: {missing[:5]}"

        events = await read_json_records(kafka_bootstrap, names.telemetry)
        kinds = Counter(e["kind"] for e in events)
        calls = [e for e in events if e["kind"] == "lm_call"]
        assert kinds["request"] == len(results)
        assert kinds["lm_call"] == kinds["request"], "one LM call per request of a Predict"
        assert {(e["provider"], e["model"], e["status"]) for e in calls} == {
            ("openai", "scripted", "ok")
        }
        assert {e["request_id"] for e in calls} == answered
        assert all(e["usage"]["prompt_tokens"] > 0 and e["latency_ms"] > 0 for e in calls)

        # A second worker picks up at the committed offset and finishes the backlog.
        worker = start_worker(topology, "w-after")
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                await asyncio.sleep(2)
                assert worker.poll() is None, worker.communicate()[0]
                results = await read_json_records(kafka_bootstrap, names.inference_results)
                if len({r["request_id"] for r in results}) == BACKLOG:
                    break
        finally:
            stop_worker(worker)
        assert {r["request_id"] for r in results} == {f"r{i}" for i in range(BACKLOG)}


async def scrape_when_up(
    http: httpx.AsyncClient, url: str, worker: subprocess.Popen[str], timeout_s: float = 240
) -> str:
    """The first answer of ``url``; fails if the worker exits or it never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()[0]
        try:
            return (await http.get(url)).text
        except httpx.HTTPError:
            # Another process's HTTP server: nothing to await but its port. The
            # deadline is generous; the poll interval only sets how soon we notice.
            await asyncio.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f}s")


async def test_worker_serves_metrics_on_the_metrics_host_of_its_topology(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"h{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1))
    # Linux routes all of 127.0.0.0/8 to the loopback interface: 127.0.0.2
    # stands for "an interface other than the default" without leaving the host.
    # Case -> the topology's metrics_host (None: left to the default).
    cases = {"other": "127.0.0.2", "default": None}
    addresses: dict[str, tuple[str, int]] = {}
    workers: dict[str, WorkerProcess] = {}
    try:
        for case, host in cases.items():
            listen = host or "127.0.0.1"
            addresses[case] = (listen, free_port(listen))
            metrics_host = {"metrics_host": host} if host else {}
            topology = write_topology(
                tmp_path / f"{case}.yaml",
                prefix=prefix,
                bootstrap=kafka_bootstrap,
                lm_url="http://127.0.0.1:9/v1",  # never called: no request is produced
                partitions=1,
                metrics_port=addresses[case][1],
                **metrics_host,
            )
            workers[case] = start_worker(topology, f"w-{case}")
        async with httpx.AsyncClient(timeout=5) as http:
            for case, (host, port) in addresses.items():
                text = await scrape_when_up(http, f"http://{host}:{port}/metrics", workers[case])
                assert "dspex_inference_requests_total" in text, case
        # Each listens on its own host only: its port on the other host is closed.
        other_port, default_port = addresses["other"][1], addresses["default"][1]
        assert not accepts_connections("127.0.0.1", other_port)
        assert not accepts_connections("127.0.0.2", default_port)
    finally:
        for worker in workers.values():
            stop_worker(worker)
