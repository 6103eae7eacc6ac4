"""Inference pipeline throughput versus a bare aiokafka consume→produce loop.

Both sides read the same number of JSON requests from a topic of the same
broker and write one record per request to another topic. The bare loop does
nothing else: it is the Kafka ceiling on this machine. The dspex worker runs
the whole pipeline per request — decode, registry lookup, a Predict call
through the LM client (cache off) against the benchmark LM server
(bench/lm_server.py) answering at once, result and telemetry records,
metrics — so the ratio is what that costs. Every dspex result must be a
success, or the run fails.

CPU per request is set beside a floor and an alternative measured in the same
run, each in a process of its own: the floor is the bare aiokafka loop plus a
bare aiohttp call (what the worker would cost if dspex's own code cost
nothing); the alternative is a bare Faust agent with the worker's former
consumer settings (64 actors, three records produced and awaited per event,
nothing else) plus the same call: what carrying the requests on Faust's agents
costs before any dspex code runs, the way the worker consumed until its
channels got their own aiokafka consumers. The same worker with
``processing_guarantee: exactly_once`` runs beside them: what transactions
cost.

Run: ``python -m bench.pipeline_overhead [--quick] [--output PATH]
[--bootstrap-servers HOST:PORT]`` from the repository root. Without
``--bootstrap-servers`` a private broker is started on free ports. Results:
``bench/results/pipeline_overhead.json`` by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench._common import (
    environment,
    lm_server_process,
    load_average,
    parser,
    result_record,
    summary,
    write_result,
)
from bench._cpu import bare_kafka_loop, process_cpu_s
from bench._deployment import echo_deployment, produce_backlog, start_private_broker
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings

NAME = "pipeline_overhead"
PARTITIONS = 4
INFLIGHT = 64
#: Seconds at the start of a latency run left out of its quantiles.
WARMUP_S = 2.0


@dataclass(frozen=True)
class Plan:
    requests_per_run: int
    repeats: int
    load_s: float  # length of each half-load latency run, warm-up included


QUICK = Plan(requests_per_run=500, repeats=2, load_s=4.0)
FULL = Plan(requests_per_run=20_000, repeats=3, load_s=30.0)


class BenchmarkError(Exception):
    """A side did not do the work asked of it (missing or failed results)."""


def failed(value: bytes | None) -> bool:
    """Whether a record on a results topic is a dspex result with status ``error``.

    The bare loop's records are the requests themselves, which have no status.
    """
    return bool(json.loads(value or b"{}").get("status") == "error")


@contextlib.contextmanager
def worker_process(
    topology: Path, worker_id: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """One ``dspex worker`` serving ``topology``; its output goes to a log file beside it.

    ``worker_id`` defaults to the topology's file name. A failed run's error
    ends with the log's tail.
    """
    worker_id = worker_id or topology.stem
    log_path = topology.with_name(f"{worker_id}.log")
    with log_path.open("w", encoding="utf-8") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", worker_id],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield worker
        except BenchmarkError as exc:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise BenchmarkError(f"{exc}\nworker log ({log_path}):\n{tail}") from exc
        finally:
            worker.terminate()
            worker.wait(timeout=60)


@dataclass
class Drained:
    """When the records arrived and, if a process was watched, its CPU in between."""

    first: float  # monotonic seconds at the first arrival
    last: float  # ... and at the last
    cpu_s: float | None = None  # the watched process's CPU seconds from first to last


async def drain(
    bootstrap: str, topic: str, count: int, timeout_s: float, *, pid: int | None = None
) -> Drained:
    """Wait for ``count`` records on ``topic``: when they arrived, and ``pid``'s CPU meanwhile.

    Raises:
        BenchmarkError: fewer than ``count`` records within ``timeout_s``, or a
            failed result among them.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # A result of an exactly_once worker counts when its transaction commits.
        isolation_level="read_committed",
    )
    await consumer.start()
    seen = errors = 0
    first = last = 0.0
    cpu_first = cpu_last = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"only {seen}/{count} records on {topic}")
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            got = sum(len(records) for records in batches.values())
            if got and pid is not None:
                cpu_last = process_cpu_s(pid)
            if got and not first:
                first = time.monotonic()
                cpu_first = cpu_last
            seen += got
            last = time.monotonic() if got else last
            errors += sum(failed(r.value) for records in batches.values() for r in records)
    finally:
        await consumer.stop()
    if errors:
        raise BenchmarkError(f"{errors} of {seen} results on {topic} are errors")
    return Drained(first, last, cpu_last - cpu_first if pid is not None else None)


@dataclass(frozen=True)
class Run:
    """One side's run over a backlog: throughput and CPU per record."""

    per_s: float
    cpu_ms: float


async def run_bare(bootstrap: str, count: int) -> Run:
    """The bare loop in a process of its own, so its CPU is its own."""
    prefix = f"bare{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
    await produce_backlog(bootstrap, names.inference_requests, program_id="echo", count=count)
    started = time.monotonic()
    loop = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._cpu",
        "kafka",
        bootstrap,
        names.inference_requests,
        names.inference_results,
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )
    drained = await drain(bootstrap, names.inference_results, count, timeout_s=600)
    out, _ = await loop.communicate()
    if loop.returncode != 0:
        raise BenchmarkError(f"the bare loop exited with status {loop.returncode}")
    measured = json.loads(out)
    return Run(count / (drained.last - started), measured["cpu_s"] / measured["records"] * 1000)


#: Records the worker produces per request: the result, a request event, an LM-call event.
RECORDS_PER_REQUEST = 3


async def run_bare_faust(bootstrap: str, count: int) -> Run:
    """A bare Faust agent (the worker's settings, 3 records per event) in its own process."""
    prefix = f"faust{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
    await produce_backlog(bootstrap, names.inference_requests, program_id="echo", count=count)
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._cpu",
        "faust",
        bootstrap,
        names.inference_requests,
        names.inference_results,
        str(count),
        str(INFLIGHT),
        str(RECORDS_PER_REQUEST),
        stdout=asyncio.subprocess.PIPE,
    )
    drained = await drain(
        bootstrap, names.inference_results, count * RECORDS_PER_REQUEST, timeout_s=600
    )
    out, _ = await agent.communicate()
    if agent.returncode != 0:
        raise BenchmarkError(f"the bare Faust agent exited with status {agent.returncode}")
    text = out.decode("utf-8", errors="replace")
    # Faust may write terminal control bytes around the line; the JSON object is the result.
    measured = json.loads(text[text.index("{") : text.rindex("}") + 1])
    window = drained.last - drained.first
    return Run(count / window if window > 0 else float("nan"), measured["cpu_s"] / count * 1000)


async def bare_http_cpu_ms(lm_url: str, count: int) -> float:
    """CPU per call of bare aiohttp POSTs to the same LM server, INFLIGHT at a time."""
    caller = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._cpu",
        "http",
        f"{lm_url}/chat/completions",
        str(count),
        str(INFLIGHT),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await caller.communicate()
    if caller.returncode != 0:
        raise BenchmarkError(f"the bare HTTP caller exited with status {caller.returncode}")
    measured = json.loads(out)
    return float(measured["cpu_s"] / measured["records"] * 1000)


async def run_dspex(
    bootstrap: str,
    lm_url: str,
    count: int,
    inflight: int,
    workdir: Path,
    profile: Path | None = None,
    **settings: Any,
) -> Run:
    prefix = f"dsp{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    topology = await echo_deployment(
        bootstrap, lm_url, prefix, workdir, partitions=PARTITIONS, inflight=inflight, **settings
    )
    await produce_backlog(bootstrap, names.inference_requests, program_id="echo", count=count)
    with worker_process(topology) as worker, py_spy(worker.pid, profile):
        # Throughput and CPU from the first result on: worker start-up is excluded.
        drained = await drain(
            bootstrap, names.inference_results, count, timeout_s=900, pid=worker.pid
        )
    window = drained.last - drained.first
    per_s = (count - 1) / window if window > 0 else float("nan")
    return Run(per_s, (drained.cpu_s or 0.0) / (count - 1) * 1000)


@contextlib.contextmanager
def py_spy(pid: int, svg: Path | None) -> Iterator[None]:
    """A py-spy profile of process ``pid`` while the block runs (none without ``svg``).

    An SVG flame graph, or collapsed stacks (one line per stack, for reading
    with text tools) when the file name ends in ``.txt``.
    """
    if svg is None:
        yield
        return
    svg.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw" if svg.suffix == ".txt" else "flamegraph",
            "--output",
            str(svg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes the graph on SIGINT
        recorder.wait(timeout=60)


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
    await ready_to_read(consumer)
    total = int(rate * duration_s)
    sent: dict[str, float] = {}
    latencies: dict[str, float] = {}
    errors: list[str] = []

    async def receive() -> None:
        while len(latencies) < total:
            batches = await consumer.getmany(timeout_ms=200)
            arrived = time.monotonic()
            for records in batches.values():
                for record in records:
                    body = json.loads(record.value or b"{}")
                    request_id = body.get("request_id")
                    if request_id in sent and request_id not in latencies:
                        latencies[request_id] = arrived - sent[request_id]
                        if body.get("status") == "error":
                            errors.append(request_id)

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
        try:
            await asyncio.wait_for(receiver, timeout=120)
        except TimeoutError:
            raise BenchmarkError(f"only {len(latencies)}/{total} results on {sink}") from None
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
    if errors:
        raise BenchmarkError(f"{len(errors)} of {total} results on {sink} are errors")
    kept = [latencies[f"load-{i}"] for i in range(int(rate * warmup_s), total)]
    return sorted(kept)


async def ready_to_read(consumer: AIOKafkaConsumer) -> None:
    """Wait until ``consumer`` knows where to read each of its partitions from.

    A consumer of a topic created moments before may spend a second or more
    finding partition leaders and offsets; a result that arrived meanwhile
    would be timed as if the platform had held it.
    """
    for partition in consumer.assignment():  # all of the topic's: it reads without a group
        await consumer.position(partition)


def quantiles_ms(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p99": cuts[98] * 1000, "max": latencies[-1] * 1000}


async def latency_bare(bootstrap: str, rate: float, duration_s: float) -> list[float]:
    prefix = f"barel{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
    loop = asyncio.create_task(
        bare_kafka_loop(bootstrap, names.inference_requests, names.inference_results, None)
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
    with worker_process(topology):
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


async def measure(
    plan: Plan, bootstrap: str, lm_url: str, workdir: Path, profile: Path | None = None
) -> dict[str, Any]:
    """Throughput of both sides over a backlog, then latency at half the dspex rate."""
    count, inflight = plan.requests_per_run, INFLIGHT
    bare: list[Run] = []
    faust: list[Run] = []
    pipeline: list[Run] = []
    exactly_once: list[Run] = []
    http_cpu: list[float] = []
    bare_latency: list[dict[str, float]] = []
    dspex_latency: list[dict[str, float]] = []
    for repeat in range(plan.repeats):
        # Alternate which side goes first: drift on a shared machine spreads evenly.
        order = ("bare", "dspex") if repeat % 2 == 0 else ("dspex", "bare")
        for side in order:
            if side == "bare":
                bare.append(await run_bare(bootstrap, count))
            else:
                svg = profile if repeat == plan.repeats - 1 else None
                pipeline.append(
                    await run_dspex(bootstrap, lm_url, count, inflight, workdir, profile=svg)
                )
            latest = (bare if side == "bare" else pipeline)[-1]
            print(
                f"repeat {repeat} {side}: {latest.per_s:.0f}/s, {latest.cpu_ms:.3f} ms CPU each",
                flush=True,
            )
        exactly_once.append(
            await run_dspex(
                bootstrap, lm_url, count, inflight, workdir, processing_guarantee="exactly_once"
            )
        )
        print(
            f"repeat {repeat} dspex exactly_once: {exactly_once[-1].per_s:.0f}/s, "
            f"{exactly_once[-1].cpu_ms:.3f} ms CPU each",
            flush=True,
        )
        http_cpu.append(await bare_http_cpu_ms(lm_url, count))
        print(f"repeat {repeat} bare HTTP: {http_cpu[-1]:.3f} ms CPU per call", flush=True)
        faust.append(await run_bare_faust(bootstrap, count))
        print(
            f"repeat {repeat} bare Faust agent: {faust[-1].per_s:.0f}/s, "
            f"{faust[-1].cpu_ms:.3f} ms CPU each",
            flush=True,
        )
    # Latency at half of the pipeline's measured throughput, both sides
    # offered the same schedule, alternating which goes first.
    rate = statistics.median(run.per_s for run in pipeline) / 2
    for repeat in range(plan.repeats):
        order = ("bare", "dspex") if repeat % 2 == 0 else ("dspex", "bare")
        for side in order:
            if side == "bare":
                found = await latency_bare(bootstrap, rate, plan.load_s)
                bare_latency.append(quantiles_ms(found))
            else:
                found = await latency_dspex(bootstrap, lm_url, rate, plan.load_s, inflight, workdir)
                dspex_latency.append(quantiles_ms(found))
            shown = (bare_latency if side == "bare" else dspex_latency)[-1]
            print(
                f"latency repeat {repeat} {side} at {rate:.0f}/s: "
                f"p50 {shown['p50']:.1f} ms, p99 {shown['p99']:.1f} ms",
                flush=True,
            )
    worker_cpu = statistics.median(run.cpu_ms for run in pipeline)
    floor_cpu = statistics.median(run.cpu_ms for run in bare) + statistics.median(http_cpu)
    faust_floor_cpu = statistics.median(run.cpu_ms for run in faust) + statistics.median(http_cpu)
    return {
        "bare_records_per_s": summary([run.per_s for run in bare]),
        "dspex_requests_per_s": summary([run.per_s for run in pipeline]),
        "ratio_dspex_to_bare": statistics.median(run.per_s for run in pipeline)
        / statistics.median(run.per_s for run in bare),
        "worker_cpu_ms_per_request": summary([run.cpu_ms for run in pipeline]),
        "bare_kafka_cpu_ms_per_record": summary([run.cpu_ms for run in bare]),
        "bare_http_cpu_ms_per_call": summary(http_cpu),
        "floor_cpu_ms_per_request": round(floor_cpu, 3),
        "ratio_worker_cpu_to_floor": round(worker_cpu / floor_cpu, 2),
        "bare_faust_requests_per_s": summary([run.per_s for run in faust]),
        "bare_faust_cpu_ms_per_request": summary([run.cpu_ms for run in faust]),
        "faust_floor_cpu_ms_per_request": round(faust_floor_cpu, 3),
        "ratio_worker_cpu_to_faust_floor": round(worker_cpu / faust_floor_cpu, 2),
        "exactly_once_requests_per_s": summary([run.per_s for run in exactly_once]),
        "exactly_once_cpu_ms_per_request": summary([run.cpu_ms for run in exactly_once]),
        "ratio_exactly_once_to_at_least_once": round(
            statistics.median(run.per_s for run in exactly_once)
            / statistics.median(run.per_s for run in pipeline),
            3,
        ),
        "half_load_requests_per_s": rate,
        "bare_latency_ms": {
            q: summary([run[q] for run in bare_latency]) for q in ("p50", "p99", "max")
        },
        "dspex_latency_ms": {
            q: summary([run[q] for run in dspex_latency]) for q in ("p50", "p99", "max")
        },
    }


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.requests:
        plan = dataclasses.replace(plan, requests_per_run=args.requests)
    started = time.monotonic()
    # The machine may be shared: its load says how far to trust the figures.
    load_at_start = load_average()
    broker: KafkaBroker | None = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        broker = await start_private_broker(workdir)
        bootstrap = broker.settings.bootstrap_servers
    try:
        with lm_server_process(latency="fixed:0", text='{"answer": "ok"}') as (lm_url, _):
            results = await measure(plan, bootstrap, lm_url, workdir, profile=args.profile)
    finally:
        if broker is not None:
            broker.stop()
    env = environment(load_at_start=load_at_start, kafka=BrokerSettings().kafka_version)
    setup = {
        "requests_per_run": plan.requests_per_run,
        "repeats": plan.repeats,
        "partitions": PARTITIONS,
        "worker_inflight_limit": INFLIGHT,
        "lm": "bench/lm_server.py, 0 ms latency (fixed:0), cache off",
        "bare": "aiokafka consume -> produce, commit per batch, no processing",
        "dspex": "one worker process; throughput from its first result to its last",
        "exactly_once": (
            "the same worker with processing_guarantee exactly_once (answers produced in "
            "transactions with their offsets every commit_interval_s); results read committed"
        ),
        "cpu": (
            "process CPU seconds (/proc/<pid>/stat) from the first result to the last, per "
            "request; floor = bare loop CPU per record (its own process) + bare aiohttp POST "
            f"CPU per call ({INFLIGHT} in flight, same LM server); Faust floor = a bare Faust "
            f"agent with the worker's consumer settings ({INFLIGHT} actors, "
            f"{RECORDS_PER_REQUEST} records produced and awaited per event, nothing else) + "
            "the same bare HTTP call"
        ),
        "latency": (
            "requests sent on a fixed schedule at half the median dspex throughput for "
            f"{plan.load_s:.0f} s (first {WARMUP_S:.0f} s left out); send to result arrival"
        ),
        "broker": "given" if broker is None else "private, started by the benchmark",
    }
    return result_record(
        NAME, quick=args.quick, started=started, setup=setup, results=results, env=env
    )


def main() -> None:
    flags = parser(
        NAME,
        __doc__,
        quick=(
            f"{QUICK.requests_per_run} requests per run, {QUICK.repeats} repeats, "
            f"{QUICK.load_s:.0f} s latency runs"
        ),
        broker=True,
    )
    flags.add_argument(
        "--profile",
        type=Path,
        help=(
            "Write a py-spy flame graph (.svg) or collapsed stacks (.txt) "
            "of the worker's last backlog run here."
        ),
    )
    flags.add_argument(
        "--requests", type=int, help="Requests per backlog run (overrides the plan)."
    )
    args = flags.parse_args()
    # aiokafka logs a topic created a moment ago as an error; it is not one here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="dspex-bench-") as workdir:
        try:
            record = asyncio.run(main_async(args, Path(workdir)))
        except BenchmarkError as exc:
            sys.exit(f"error: {exc}")
    write_result(record, args.output)


if __name__ == "__main__":
    main()
