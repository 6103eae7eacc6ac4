"""Inference pipeline throughput versus a bare aiokafka consume→produce loop.

Both sides read the same number of JSON requests from a topic of the same
broker and write one record per request to another topic. The bare loop does
nothing else: it is the Kafka ceiling on this machine. The dspex worker runs
the whole pipeline per request — decode, registry lookup, a Predict call
through the LM client (cache off) against a scripted LM that answers at once,
result and telemetry records, metrics — so the ratio is what that costs.

Run: ``python -m bench.pipeline_overhead [--quick] [--bootstrap-servers HOST:PORT]``
from the repository root. Without ``--bootstrap-servers`` a private broker is
started on free ports. Results: ``bench/results/pipeline_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import dspex
from bench._deployment import echo_deployment, start_private_broker
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.streams.topics import TopicNames, TopicSettings, ensure_topics
from tests.support.deployment import produce_backlog, scripted_lm_process

RESULTS = Path(__file__).parent / "results" / "pipeline_overhead.json"
PARTITIONS = 4
#: Seconds at the start of a latency run left out of its quantiles.
WARMUP_S = 2.0


async def drain(bootstrap: str, topic: str, count: int, timeout_s: float) -> tuple[float, float]:
    """Wait for ``count`` records on ``topic``; (first arrival, last arrival) monotonic."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {seen}/{count} records on {topic}")
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            got = sum(len(records) for records in batches.values())
            if got and not first:
                first = time.monotonic()
            seen += got
            last = time.monotonic() if got else last
    finally:
        await consumer.stop()
    return first, last


async def bare_loop(bootstrap: str, source: str, sink: str, count: int | None) -> None:
    """Consume requests and produce one record each, committing as it goes.

    Stops after ``count`` records, or runs until cancelled when it is None.
    """
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while count is None or done < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            futures = []
            for records in batches.values():
                for record in records:
                    futures.append(await producer.send(sink, record.value, key=record.key))
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
            done += len(futures)
    finally:
        await consumer.stop()
        await producer.stop()


async def run_bare(bootstrap: str, count: int) -> float:
    prefix = f"bare{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
    await produce_backlog(bootstrap, names.inference_requests, program_id="echo", count=count)
    started = time.monotonic()
    loop = asyncio.create_task(
        bare_loop(bootstrap, names.inference_requests, names.inference_results, count)
    )
    _, last = await drain(bootstrap, names.inference_results, count, timeout_s=600)
    await loop
    return count / (last - started)


async def run_dspex(bootstrap: str, lm_url: str, count: int, inflight: int, workdir: Path) -> float:
    prefix = f"dsp{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    topology = await echo_deployment(
        bootstrap, lm_url, prefix, workdir, partitions=PARTITIONS, inflight=inflight
    )
    await produce_backlog(bootstrap, names.inference_requests, program_id="echo", count=count)
    worker = subprocess.Popen([sys.executable, "-m", "dspex", "worker", str(topology)])
    try:
        # Throughput from the first result on: worker start-up is excluded.
        first, last = await drain(bootstrap, names.inference_results, count, timeout_s=900)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return (count - 1) / (last - first) if last > first else float("nan")


async def offered_load(
    bootstrap: str, source: str, sink: str, *, rate: float, duration_s: float, warmup_s: float
) -> list[float]:
    """Send requests at ``rate`` per second; seconds from each send to its result.

    Requests go out on a fixed schedule (not as fast as answers come back), so
    queueing shows up in the latency. Those sent during the first
    ``warmup_s`` seconds are left out.
    """
    consumer = AIOKafkaConsumer(
        sink, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    total = int(rate * duration_s)
    sent: dict[str, float] = {}
    latencies: dict[str, float] = {}

    async def receive() -> None:
        while len(latencies) < total:
            batches = await consumer.getmany(timeout_ms=200)
            arrived = time.monotonic()
            for records in batches.values():
                for record in records:
                    request_id = json.loads(record.value or b"{}").get("request_id")
                    if request_id in sent and request_id not in latencies:
                        latencies[request_id] = arrived - sent[request_id]

    receiver = asyncio.create_task(receive())
    started = time.monotonic()
    try:
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            request_id = f"load-{i}"
            body = {
                "schema": "dspex.inference.request/v1",
                "request_id": request_id,
                "program_id": "echo",
                "inputs": {"question": f"question {i}"},
            }
            sent[request_id] = time.monotonic()
            await producer.send(source, json.dumps(body).encode(), key=b"echo")
        await asyncio.wait_for(receiver, timeout=120)
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
    kept = [latencies[f"load-{i}"] for i in range(int(rate * warmup_s), total)]
    return sorted(kept)


def quantiles_ms(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p99": cuts[98] * 1000, "max": latencies[-1] * 1000}


async def latency_bare(bootstrap: str, rate: float, duration_s: float) -> list[float]:
    prefix = f"barel{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
    loop = asyncio.create_task(
        bare_loop(bootstrap, names.inference_requests, names.inference_results, None)
    )
    try:
        return await offered_load(
            bootstrap,
            names.inference_requests,
            names.inference_results,
            rate=rate,
            duration_s=duration_s,
            warmup_s=WARMUP_S,
        )
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def latency_dspex(
    bootstrap: str, lm_url: str, rate: float, duration_s: float, inflight: int, workdir: Path
) -> list[float]:
    prefix = f"dspl{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    topology = await echo_deployment(
        bootstrap, lm_url, prefix, workdir, partitions=PARTITIONS, inflight=inflight
    )
    worker = subprocess.Popen([sys.executable, "-m", "dspex", "worker", str(topology)])
    try:
        # One request answered first: the worker's start-up is not part of the load.
        await produce_backlog(bootstrap, names.inference_requests, program_id="echo", count=1)
        await drain(bootstrap, names.inference_results, 1, timeout_s=120)
        return await offered_load(
            bootstrap,
            names.inference_requests,
            names.inference_results,
            rate=rate,
            duration_s=duration_s,
            warmup_s=WARMUP_S,
        )
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    count = 2_000 if args.quick else 20_000
    repeats = 2 if args.quick else 3
    inflight = 64
    workdir = Path(tempfile.mkdtemp(prefix="dspex-bench-"))
    broker: KafkaBroker | None = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        broker = await start_private_broker(workdir)
        bootstrap = broker.settings.bootstrap_servers
    bare: list[float] = []
    pipeline: list[float] = []
    bare_latency: list[dict[str, float]] = []
    dspex_latency: list[dict[str, float]] = []
    load_s = 8.0 if args.quick else 30.0
    started = time.monotonic()
    try:
        with scripted_lm_process(text='{"answer": "ok"}') as lm_url:
            for repeat in range(repeats):
                # Alternate which side goes first: drift on a shared machine spreads evenly.
                order = ("bare", "dspex") if repeat % 2 == 0 else ("dspex", "bare")
                for side in order:
                    if side == "bare":
                        bare.append(await run_bare(bootstrap, count))
                    else:
                        pipeline.append(
                            await run_dspex(bootstrap, lm_url, count, inflight, workdir)
                        )
                    latest = (bare if side == "bare" else pipeline)[-1]
                    print(f"repeat {repeat} {side}: {latest:.0f}/s")
            # Latency at half of the pipeline's measured throughput, both sides
            # offered the same schedule, alternating which goes first.
            rate = statistics.median(pipeline) / 2
            for repeat in range(repeats):
                order = ("bare", "dspex") if repeat % 2 == 0 else ("dspex", "bare")
                for side in order:
                    if side == "bare":
                        found = await latency_bare(bootstrap, rate, load_s)
                        bare_latency.append(quantiles_ms(found))
                    else:
                        found = await latency_dspex(
                            bootstrap, lm_url, rate, load_s, inflight, workdir
                        )
                        dspex_latency.append(quantiles_ms(found))
                    shown = (bare_latency if side == "bare" else dspex_latency)[-1]
                    print(
                        f"latency repeat {repeat} {side} at {rate:.0f}/s: "
                        f"p50 {shown['p50']:.1f} ms, p99 {shown['p99']:.1f} ms"
                    )
    finally:
        if broker is not None:
            broker.stop()
    return {
        "benchmark": "pipeline_overhead",
        "mode": "quick" if args.quick else "full",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "versions": {"dspex": dspex.__version__, "kafka": BrokerSettings().kafka_version},
        },
        "setup": {
            "requests_per_run": count,
            "repeats": repeats,
            "partitions": PARTITIONS,
            "worker_inflight_limit": inflight,
            "lm": "scripted loopback server, 0 ms latency, cache off",
            "bare": "aiokafka consume -> produce, commit per batch, no processing",
            "dspex": "one worker process; throughput from its first result to its last",
            "latency": (
                "requests sent on a fixed schedule at half the median dspex throughput for "
                f"{load_s:.0f} s (first {WARMUP_S:.0f} s left out); send to result arrival"
            ),
        },
        "results": {
            "bare_records_per_s": summary(bare),
            "dspex_requests_per_s": summary(pipeline),
            "ratio_dspex_to_bare": statistics.median(pipeline) / statistics.median(bare),
            "half_load_requests_per_s": statistics.median(pipeline) / 2,
            "bare_latency_ms": {
                q: summary([run[q] for run in bare_latency]) for q in ("p50", "p99", "max")
            },
            "dspex_latency_ms": {
                q: summary([run[q] for run in dspex_latency]) for q in ("p50", "p99", "max")
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,000 requests, 2 repeats")
    parser.add_argument("--bootstrap-servers", help="use this broker instead of a private one")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["results"], indent=2))


if __name__ == "__main__":
    main()
