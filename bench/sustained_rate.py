"""Predictions per minute end to end: a fixed offered load through Kafka, a 100 ms LM.

Everything runs on this one machine: the submitter and the result reader (this
process), the broker, the workers (``dspex worker``, one or two) and the LM
instrument (``bench/lm_server_go``, answering after 100 ms). Requests are sent
on a fixed schedule at the offered rate (1,000/s: 60,000 a minute) as raw JSON
records from an aiokafka producer, as a client written elsewhere would; the
reader matches results to requests by id.

A program's requests are keyed by its id, so one program is one partition and
one worker (DESIGN, "Partitioning"). The load is spread over as many programs
as the topic has partitions (``echo-N``, each the same ``Predict`` and each
picked to land on its own partition), which is how more than one worker shares
a deployment's traffic.

Per run it records: results per second over the steady part (from ``WARMUP_S``
to the end of sending) and whether every request was answered, with no error,
before the drain deadline; send-to-result latency (p50, p99); and the CPU of
every process over the steady part, in cores (CPU seconds per second), so the
machine's two cores can be seen being shared out.

Run: ``python -m bench.sustained_rate [--quick] [--output PATH]
[--bootstrap-servers HOST:PORT]`` from the repository root. Without
``--bootstrap-servers`` a private broker is started on free ports. Results:
``bench/results/sustained_rate.json`` by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

import dspex
from bench._common import (
    environment,
    lm_server_process,
    load_average,
    parser,
    result_record,
    summary,
    write_result,
)
from bench._cpu import process_cpu_s
from bench._deployment import start_private_broker, write_topology
from bench.pipeline_overhead import BenchmarkError, ready_to_read, worker_process
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings

NAME = "sustained_rate"
PARTITIONS = 4
LM_LATENCY_MS = 100
#: Seconds at the start of each run left out of its figures.
WARMUP_S = 5.0
#: How long after the last send every result must have arrived.
DRAIN_S = 60.0


@dataclass(frozen=True)
class Plan:
    rates: tuple[float, ...]  # offered requests per second, each a case
    duration_s: float  # of sending, warm-up included
    workers: tuple[int, ...]  # cluster sizes to run
    repeats: int
    inflight: int  # per worker


FULL = Plan(rates=(1000.0, 800.0), duration_s=60.0, workers=(1, 2), repeats=2, inflight=160)
QUICK = Plan(rates=(200.0,), duration_s=10.0, workers=(1, 2), repeats=1, inflight=64)
#: A run kept up when nothing was lost and its p99 stayed within this many LM latencies.
KEPT_UP_LATENCIES = 10


def spread_program_ids(partitions: int) -> list[str]:
    """``echo-N`` ids, one landing on each partition under Kafka's default partitioner."""
    partitioner = DefaultPartitioner()
    everyone = list(range(partitions))
    chosen: dict[int, str] = {}
    for n in range(10_000):
        program_id = f"echo-{n}"
        partition = partitioner(program_id.encode(), everyone, everyone)
        chosen.setdefault(partition, program_id)
        if len(chosen) == partitions:
            return [chosen[p] for p in everyone]
    raise RuntimeError(f"no program ids cover {partitions} partitions")  # pragma: no cover


async def deploy(
    bootstrap: str, lm_url: str, workdir: Path, inflight: int, **settings: Any
) -> tuple[Path, list[str]]:
    """Topics, one registered program per partition, and a topology file serving them."""
    prefix = f"rate{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
    spec = ProgramSpec.from_program(
        dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    )
    program_ids = spread_program_ids(PARTITIONS)
    for program_id in program_ids:
        await register_program(bootstrap, names, program_id, spec)
    topology = write_topology(
        workdir / f"{prefix}.yaml",
        prefix=prefix,
        bootstrap=bootstrap,
        lm_url=lm_url,
        partitions=PARTITIONS,
        inflight_limit=inflight,
        **settings,
    )
    return topology, program_ids


@dataclass
class Load:
    """What one offered-load run saw."""

    sent_at: dict[str, float] = field(default_factory=dict)
    arrived_at: dict[str, float] = field(default_factory=dict)
    errors: int = 0


async def offer(
    bootstrap: str,
    names: TopicNames,
    program_ids: list[str],
    rate: float,
    duration_s: float,
    watch: CpuWatch | None = None,
) -> tuple[Load, float]:
    """Send ``rate`` requests a second for ``duration_s``, reading results as they come.

    Returns what was seen and the monotonic time sending started. Sends go out
    every 10 ms in the batch the schedule owes, so the producer keeps up at any
    rate. ``watch`` is read when the warm-up ends and when sending ends.
    """
    load = Load()
    total = int(rate * duration_s)
    consumer = AIOKafkaConsumer(
        names.inference_results,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    await ready_to_read(consumer)

    async def receive() -> None:
        while len(load.arrived_at) < total:
            batches = await consumer.getmany(timeout_ms=200)
            arrived = time.monotonic()
            for records in batches.values():
                for record in records:
                    body = json.loads(record.value or b"{}")
                    request_id = body.get("request_id")
                    if request_id in load.sent_at and request_id not in load.arrived_at:
                        load.arrived_at[request_id] = arrived
                        load.errors += body.get("status") == "error"

    receiver = asyncio.create_task(receive())
    started = time.monotonic()
    try:
        sent = 0
        while sent < total:
            elapsed = time.monotonic() - started
            if watch is not None and not watch.readings and elapsed >= WARMUP_S:
                watch.read()
            owed = min(total, int(elapsed * rate) + 1)
            for i in range(sent, owed):
                program_id = program_ids[i % len(program_ids)]
                request_id = f"r{i}"
                body = {
                    "schema": "dspex.inference.request/v1",
                    "request_id": request_id,
                    "program_id": program_id,
                    "inputs": {"question": f"question {i}"},
                }
                load.sent_at[request_id] = time.monotonic()
                await producer.send(
                    names.inference_requests, json.dumps(body).encode(), key=program_id.encode()
                )
            sent = owed
            await asyncio.sleep(0.01)
        if watch is not None:
            watch.read()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), timeout=DRAIN_S)
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
    return load, started


class CpuWatch:
    """CPU seconds of named processes (and this one) between two readings."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.readings: list[tuple[float, dict[str, float]]] = []

    def read(self) -> None:
        found = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        found["submitter and reader"] = time.process_time()
        self.readings.append((time.monotonic(), found))

    def cores(self) -> dict[str, float]:
        """CPU seconds per second of each process between the first and the last reading."""
        (t0, start), (t1, end) = self.readings[0], self.readings[-1]
        return {name: round((end[name] - start[name]) / (t1 - t0), 3) for name in end}


async def run_once(
    plan: Plan,
    bootstrap: str,
    broker_pid: int | None,
    lm: tuple[str, int],
    workdir: Path,
    workers: int,
    rate: float,
    **settings: Any,
) -> dict[str, Any]:
    lm_url, lm_pid = lm
    topology, program_ids = await deploy(bootstrap, lm_url, workdir, plan.inflight, **settings)
    names = TopicNames(topology.stem)
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(worker_process(topology, f"{topology.stem}-w{n}"))
            for n in range(workers)
        ]
        pids = {f"worker {n}": process.pid for n, process in enumerate(processes)}
        pids["LM server"] = lm_pid
        if broker_pid is not None:
            pids["broker"] = broker_pid
        await warm_up(bootstrap, names, program_ids)
        watch = CpuWatch(pids)
        load, started = await offer(bootstrap, names, program_ids, rate, plan.duration_s, watch)
    return figures(plan, load, started, watch, workers, rate)


async def warm_up(bootstrap: str, names: TopicNames, program_ids: list[str]) -> None:
    """One request per program answered: every worker has joined and served."""
    load, _ = await offer(bootstrap, names, program_ids, rate=len(program_ids) * 10, duration_s=0.1)
    if len(load.arrived_at) < len(load.sent_at):
        raise BenchmarkError("the workers did not answer the warm-up requests")


def figures(
    plan: Plan, load: Load, started: float, watch: CpuWatch, workers: int, rate: float
) -> dict[str, Any]:
    """One run's figures over its steady part."""
    steady_start, steady_end = started + WARMUP_S, started + plan.duration_s
    window = steady_end - steady_start
    answered = sum(1 for t in load.arrived_at.values() if steady_start <= t < steady_end)
    latencies = sorted(
        load.arrived_at[rid] - sent
        for rid, sent in load.sent_at.items()
        if rid in load.arrived_at and sent >= steady_start
    )
    lost = len(load.sent_at) - len(load.arrived_at)
    if load.errors:
        raise BenchmarkError(f"{load.errors} results were errors")
    if not latencies:
        raise BenchmarkError("no results arrived in the steady part of the run")
    p99 = latencies[int(len(latencies) * 0.99)]
    return {
        "workers": workers,
        "offered_per_s": rate,
        "answered_per_s": round(answered / window, 1),
        "predictions_per_minute": round(answered / window * 60),
        "kept_up": lost == 0 and p99 < KEPT_UP_LATENCIES * LM_LATENCY_MS / 1000,
        "unanswered_at_drain_deadline": lost,
        "latency_ms": {
            "p50": round(latencies[len(latencies) // 2] * 1000, 1),
            "p99": round(p99 * 1000, 1),
            "max": round(latencies[-1] * 1000, 1),
        },
        "cpu_cores": watch.cores(),
    }


async def measure(
    plan: Plan, bootstrap: str, broker_pid: int | None, workdir: Path
) -> dict[str, Any]:
    cases = [(workers, rate) for rate in plan.rates for workers in plan.workers]
    runs: dict[tuple[int, float], list[dict[str, Any]]] = {case: [] for case in cases}
    with lm_server_process(latency=f"fixed:{LM_LATENCY_MS / 1000}", engine="go") as (lm_url, lm):
        for repeat in range(plan.repeats):
            # Alternate the order: drift on a shared machine spreads evenly.
            for workers, rate in cases if repeat % 2 == 0 else reversed(cases):
                found = await run_once(
                    plan, bootstrap, broker_pid, (lm_url, lm.pid), workdir, workers, rate
                )
                runs[workers, rate].append(found)
                print(
                    f"repeat {repeat}, {workers} worker(s): {found['answered_per_s']:.0f}/s of "
                    f"{rate:.0f} offered, p50 {found['latency_ms']['p50']:.0f} ms, "
                    f"p99 {found['latency_ms']['p99']:.0f} ms, cores {found['cpu_cores']}",
                    flush=True,
                )
    return {
        f"{workers}_workers_at_{rate:.0f}_per_s": {
            "answered_per_s": summary([r["answered_per_s"] for r in found]),
            "predictions_per_minute": summary([r["predictions_per_minute"] for r in found]),
            "kept_up_every_run": all(r["kept_up"] for r in found),
            "latency_ms": {
                q: summary([r["latency_ms"][q] for r in found]) for q in ("p50", "p99", "max")
            },
            "cpu_cores": {
                name: summary([r["cpu_cores"][name] for r in found])
                for name in found[0]["cpu_cores"]
            },
            "runs": found,
        }
        for (workers, rate), found in runs.items()
    }


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    load_at_start = load_average()
    broker: KafkaBroker | None = None
    bootstrap = args.bootstrap_servers
    broker_pid: int | None = None
    if bootstrap is None:
        broker = await start_private_broker(workdir)
        bootstrap = broker.settings.bootstrap_servers
        record = broker.status().record
        broker_pid = record.pid if record is not None else None
    try:
        results = await measure(plan, bootstrap, broker_pid, workdir)
    finally:
        if broker is not None:
            broker.stop()
    env = environment(load_at_start=load_at_start, kafka=BrokerSettings().kafka_version)
    setup = {
        "offered_per_s": list(plan.rates),
        "kept_up": f"nothing lost and p99 under {KEPT_UP_LATENCIES} LM latencies",
        "duration_s": plan.duration_s,
        "warmup_s": WARMUP_S,
        "repeats": plan.repeats,
        "partitions": PARTITIONS,
        "programs": f"{PARTITIONS} programs, one per partition, each the same Predict",
        "worker_inflight_limit": plan.inflight,
        "lm": f"bench/lm_server_go, {LM_LATENCY_MS} ms latency",
        "submitter": "raw aiokafka producer on a fixed schedule, in the benchmark process",
        "cpu": "process CPU seconds over the steady part / its length (cores), per process",
        "broker": "private, started by the benchmark" if broker is not None else bootstrap,
    }
    return result_record(
        NAME, quick=args.quick, started=started, setup=setup, results=results, env=env
    )


def main() -> None:
    args = parser(
        NAME, __doc__, quick="200 requests/s for 10 s on 1 and 2 workers", broker=True
    ).parse_args()
    with tempfile.TemporaryDirectory(prefix="dspex-bench-") as tmp:
        try:
            record = asyncio.run(main_async(args, Path(tmp)))
        except BenchmarkError as exc:
            sys.exit(f"benchmark failed: {exc}")
    write_result(record, args.output)


if __name__ == "__main__":
    main()
