"""Chaos: workers killed, the broker restarted, the LM failing, on the real broker.

Each scenario deploys the ``echo`` program on fresh topics of a private broker
(the harness restarts it, so it never uses a shared one), starts ``dspex
worker`` processes, sends its requests through :class:`~dspex.streams.DSPExClient`
and, while they are answered, does its damage:

* ``kill``: SIGKILL a worker at evenly spaced points of the run, starting it
  again at once (the group keeps two members);
* ``rolling_restart``: the same with SIGTERM, each worker started again once
  it has exited (a rolling deploy): nothing may be answered twice;
* ``broker_restart``: stop the broker (SIGTERM) a third of the way and start
  it again on the same ports and data;
* ``lm_flaky``: the LM answers HTTP 500 to 20 % of calls and hangs (well past
  the endpoint's timeout) on 5 %;
* ``lm_429``: the LM serves a fixed number of calls per second and answers
  the rest 429 with ``Retry-After``;
* ``lm_outage``: the LM answers 503 to everything for a while, a third of the
  way.

The LM is a scripted server on loopback in this process (it fails on
demand); the broker, the workers and the client are the real ones. Per
scenario it records: requests; answered (a result reached the client) and
ok; lost (no result on the results topic at all); results on the raw topic
beyond one per request (at-least-once repeats) and how many the client
delivered twice; error results by type; LM calls beyond one per request;
client latency (send to result) p50/p99; what was done when.

Run: ``python -m bench.chaos [--quick] [--output PATH] [--scenario NAME ...]``
from the repository root. ``docs/reliability.md`` is generated from the
result by ``python -m bench.report``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

import dspex
from bench._common import environment, load_average, parser, result_record, write_result
from bench._deployment import read_json_records, start_private_broker, write_topology
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex._local.broker import KafkaBroker
from dspex.programs.state import ProgramSpec
from dspex.streams.client import DSPExClient
from dspex.streams.records import InferenceRequest, InferenceResult
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings

ANSWER = '{"answer": "ok"}'
#: Seconds a hung LM call takes, far past the endpoint's per-attempt timeout.
HANG_S = 30.0
PARTITIONS = 4


class ChaosError(Exception):
    """A scenario could not be run to the end (not: it lost requests; that is a finding)."""


@dataclass(frozen=True, kw_only=True)
class LMFaults:
    """How the scripted LM behaves.

    Args:
        delay_s: Seconds every answer takes.
        error_rate: Share of calls answered HTTP 500.
        hang_rate: Share of calls that hang for ``HANG_S``.
        calls_per_s: The provider's capacity: calls beyond it in any second
            are answered 429 with ``Retry-After: retry_after_s``. None: no limit.
        retry_after_s: The ``Retry-After`` of those 429s.
        outage_s: Seconds of a full outage (503 to every call) a third of the way.
    """

    delay_s: float = 0.02
    error_rate: float = 0.0
    hang_rate: float = 0.0
    calls_per_s: float | None = None
    retry_after_s: int = 1
    outage_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One run: the deployment, the damage, and the LM's faults."""

    name: str
    what: str
    requests: int
    workers: int = 2
    inflight: int = 16
    kills: int = 0
    #: How a worker is stopped at each kill: SIGKILL (a crash) or SIGTERM (a deploy).
    kill_signal: str = "SIGKILL"
    broker_restarts: int = 0
    lm: LMFaults = field(default_factory=LMFaults)
    #: LM endpoint settings of the topology (per-attempt timeout, ...).
    endpoint: dict[str, Any] = field(default_factory=dict)
    #: Seconds each request may take, at the client and (as its deadline) at the worker.
    timeout_s: float = 300.0
    processing_guarantee: str = "at_least_once"


#: The LM of the scenarios that hurt the deployment: slow enough that a run
#: lasts, so kills and the restart land while requests are in flight.
SLOW = LMFaults(delay_s=0.1)


def scenarios(quick: bool) -> list[Scenario]:
    """The scenarios of a full run, or the short ones ``make test`` checks."""
    n = 400 if quick else 4000
    m = 300 if quick else 2000
    return [
        Scenario(
            name="kill",
            what=f"2 workers, {3 if quick else 5} SIGKILLs (each restarted at once)",
            requests=n,
            lm=SLOW,
            kills=3 if quick else 5,
        ),
        Scenario(
            name="rolling_restart",
            what=f"2 workers, {2 if quick else 5} SIGTERMs (each started again once it "
            "exited, the next stop once it has joined): a rolling deploy",
            # Each stop waits for the worker before to be back: more requests,
            # so that the stops land while they are served.
            requests=4 * n if quick else n,
            lm=SLOW,
            kills=2 if quick else 5,
            kill_signal="SIGTERM",
        ),
        Scenario(
            name="broker_restart",
            what="2 workers, the broker stopped and started again half way",
            requests=n,
            lm=SLOW,
            broker_restarts=1,
        ),
        Scenario(
            name="exactly_once",
            what=f"2 workers with exactly_once, {2 if quick else 5} SIGKILLs and a broker restart",
            requests=n,
            lm=SLOW,
            kills=2 if quick else 5,
            broker_restarts=1,
            processing_guarantee="exactly_once",
        ),
        Scenario(
            name="lm_flaky",
            what="1 worker; the LM answers 500 to 20 % of calls and hangs on 5 % "
            "(per-attempt timeout 2 s)",
            requests=m,
            workers=1,
            inflight=64,
            lm=LMFaults(error_rate=0.2, hang_rate=0.05),
            endpoint={"timeout_s": 2.0},
        ),
        Scenario(
            name="lm_429",
            what="1 worker; the LM serves 50 calls/s and answers 429 with Retry-After: 1 "
            "beyond that",
            requests=m // 2 if quick else m,
            workers=1,
            inflight=64,
            lm=LMFaults(calls_per_s=50.0),
        ),
        Scenario(
            name="lm_outage",
            what=f"1 worker; the LM answers 503 to every call for {5 if quick else 30} s "
            "a third of the way",
            requests=m,
            workers=1,
            inflight=64,
            lm=LMFaults(outage_s=5.0 if quick else 30.0),
            endpoint={"breaker_recovery_s": 2.0},
        ),
    ]


class FaultyLM:
    """The scripted LM's responder for one scenario's faults (seeded: runs repeat)."""

    def __init__(self, faults: LMFaults, seed: int = 7) -> None:
        self.faults = faults
        self.down = False
        self.calls: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._tokens = faults.calls_per_s or 0.0
        self._refilled = time.monotonic()

    def __call__(self, request: RecordedRequest) -> Reply:
        faults = self.faults
        if self.down:
            return self._count("503", Reply.error(503, "down for maintenance"))
        if faults.calls_per_s is not None and not self._take():
            headers = {"Retry-After": str(faults.retry_after_s)}
            return self._count("429", Reply.error(429, "rate limited", headers=headers))
        draw = self._random.random()
        if draw < faults.hang_rate:
            return self._count("hung", Reply(delay_s=HANG_S))
        if draw < faults.hang_rate + faults.error_rate:
            return self._count("500", Reply.error(500, "flaky"))
        return self._count("ok", Reply.completion(ANSWER, delay_s=faults.delay_s))

    def _count(self, outcome: str, reply: Reply) -> Reply:
        self.calls[outcome] += 1
        return reply

    def _take(self) -> bool:
        """One call out of a bucket of ``calls_per_s`` refilled continuously (1 s burst)."""
        rate = self.faults.calls_per_s or 0.0
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Workers:
    """The scenario's ``dspex worker`` processes, by id; killed and restarted on demand."""

    def __init__(self, topology: Path, count: int, logs: Path, *, group: str) -> None:
        self.topology = topology
        self.group = group
        self.logs = logs
        self.ids = [f"w{i}" for i in range(count)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()

    def start(self, worker_id: str) -> None:
        self.starts[worker_id] += 1
        log = self.logs / f"{worker_id}-{self.starts[worker_id]}.log"
        with log.open("w", encoding="utf-8") as out:
            self.processes[worker_id] = subprocess.Popen(
                [sys.executable, "-m", "dspex", "worker", str(self.topology), "--worker-id",
                 worker_id],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def kill(self, worker_id: str, how: str) -> int:
        """Send ``how`` (SIGKILL, SIGTERM) to the worker; its exit code once it exited."""
        process = self.processes[worker_id]
        process.send_signal(signal.Signals[how])
        return await asyncio.to_thread(process.wait)

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every worker, wait; their exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        codes: dict[str, int | None] = {}
        for worker_id, process in self.processes.items():
            try:
                codes[worker_id] = process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[worker_id] = process.wait()
        return codes

    def count_in_logs(self, text: str) -> int:
        """How many times ``text`` occurs in the workers' output."""
        return sum(path.read_text(errors="replace").count(text) for path in self.logs.glob("*.log"))

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
            for path in sorted(self.logs.glob("*.log"))
        )


@dataclass
class Progress:
    """What the client has seen so far; damage is scheduled on ``answered``."""

    requests: int
    answered: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self) -> None:
        self.answered += 1
        self.changed.set()

    async def reach(self, fraction: float) -> None:
        while self.answered < self.requests * fraction:
            self.changed.clear()
            await self.changed.wait()


@dataclass
class Damage:
    """What was done to the deployment, when (seconds from the first request)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def log(self, what: str, **details: Any) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.started, 2), "what": what,
                            **details})  # fmt: skip


async def group_serving(bootstrap: str, group: str, members: int) -> None:
    """Wait until consumer ``group`` is stable with ``members`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            [response] = await admin.describe_consumer_groups([group])
            _, _, state, _, _, found, *_ = response.groups[0]
            if state == "Stable" and len(found) >= members:
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def damage(
    scenario: Scenario,
    progress: Progress,
    workers: Workers,
    broker: KafkaBroker,
    lm: FaultyLM,
    done: Damage,
) -> None:
    """Do the scenario's damage as the answers come in, kills and restarts interleaved."""
    plan: list[tuple[float, str]] = [
        ((kill + 1) / (scenario.kills + 1), "kill") for kill in range(scenario.kills)
    ]
    plan += [
        ((2 * i + 1) / (2 * scenario.broker_restarts), "broker")
        for i in range(scenario.broker_restarts)
    ]
    if scenario.lm.outage_s:
        plan.append((1 / 3, "outage"))
    kills = 0
    for fraction, what in sorted(plan):
        await progress.reach(fraction)
        if what == "kill":
            victim = workers.ids[kills % len(workers.ids)]
            kills += 1
            answered = progress.answered
            code = await workers.kill(victim, scenario.kill_signal)
            done.log(scenario.kill_signal, worker=victim, answered=answered, exit_code=code)
            workers.start(victim)
            if scenario.kill_signal == "SIGTERM":  # a rolling deploy waits for readiness
                await group_serving(
                    broker.settings.bootstrap_servers, workers.group, len(workers.ids)
                )
                done.log("rejoined", worker=victim, answered=progress.answered)
        elif what == "broker":
            done.log("broker stop", answered=progress.answered)
            await asyncio.to_thread(broker.stop)
            await broker.start()
            done.log("broker started", answered=progress.answered)
        else:
            lm.down = True
            done.log("LM down", answered=progress.answered)
            await asyncio.sleep(scenario.lm.outage_s)
            lm.down = False
            done.log("LM up", answered=progress.answered)


async def run_scenario(scenario: Scenario, broker: KafkaBroker, workdir: Path) -> dict[str, Any]:
    """Deploy, serve ``scenario.requests`` under its damage, and account for every request."""
    bootstrap = broker.settings.bootstrap_servers
    prefix = f"chaos-{scenario.name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    names = TopicNames(prefix)
    lm = FaultyLM(scenario.lm)
    logs = workdir / prefix
    logs.mkdir(parents=True)
    async with ScriptedLM(responder=lm, record=False) as server:
        topology = write_topology(
            logs / "topology.yaml",
            prefix=prefix,
            bootstrap=bootstrap,
            lm_url=server.openai_url,
            partitions=PARTITIONS,
            inflight_limit=scenario.inflight,
            session_timeout_s=6,
            processing_guarantee=scenario.processing_guarantee,
            lms={"lm": {"model": "scripted", "base_url": server.openai_url,
                        **scenario.endpoint}},
        )  # fmt: skip
        await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
        workers = Workers(topology, scenario.workers, logs, group=f"{prefix}-inference")
        for worker_id in workers.ids:
            workers.start(worker_id)
        progress = Progress(scenario.requests)
        done = Damage()
        try:
            outcome = await serve(scenario, bootstrap, names, progress, done, workers, broker, lm)
        except Exception as exc:
            raise ChaosError(f"scenario {scenario.name}: {exc!r}\n{workers.log_tails()}") from exc
        finally:
            codes = await asyncio.to_thread(workers.stop_all)
        raw = Counter(
            record["request_id"]
            # As a read_committed reader sees it (the same as read_uncommitted
            # without transactions): what a consumer of the results acts on.
            for record in await read_json_records(
                bootstrap, outcome.pop("results_topic"), isolation_level="read_committed"
            )
        )
    sent: set[str] = outcome.pop("sent")
    repeats = sum(raw.values()) - len(raw)
    disruptions = scenario.kills + scenario.broker_restarts
    return {
        "what": scenario.what,
        "requests": scenario.requests,
        **outcome,
        "lost": len(sent - set(raw)),
        "duplicated_on_topic": repeats,
        "duplicated_per_disruption": round(repeats / disruptions, 1) if disruptions else None,
        "inflight_limit": scenario.inflight,
        "lm_calls": dict(lm.calls),
        "lm_calls_beyond_one_per_request": max(sum(lm.calls.values()) - scenario.requests, 0),
        "damage": done.events,
        "worker_exit_codes": codes,
        # A stalled consumer is replaced (it leaves the group; what it had not
        # committed is read again); while the broker is away it is only waited for.
        "consumers_replaced": workers.count_in_logs("consumer of " + names.inference_requests
                                                    + " stalled"),
        "waited_for_kafka": workers.count_in_logs("Kafka does not answer"),
        "setup": {**asdict(scenario.lm), "workers": scenario.workers,
                  "processing_guarantee": scenario.processing_guarantee,
                  "endpoint": scenario.endpoint, "timeout_s": scenario.timeout_s},
    }  # fmt: skip


async def serve(
    scenario: Scenario,
    bootstrap: str,
    names: TopicNames,
    progress: Progress,
    done: Damage,
    workers: Workers,
    broker: KafkaBroker,
    lm: FaultyLM,
) -> dict[str, Any]:
    """Send every request, read every result, with the damage running beside."""
    loop = asyncio.get_running_loop()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    delivered: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    async with DSPExClient(bootstrap_servers=bootstrap, prefix=names.prefix) as client:
        program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
        await client.register("echo", ProgramSpec.from_program(program))

        async def requests() -> AsyncIterator[InferenceRequest]:
            for i in range(scenario.requests):
                request = InferenceRequest(program_id="echo", inputs={"question": f"q{i}"})
                sent_at[request.request_id] = loop.time()
                yield request

        hurt = asyncio.create_task(damage(scenario, progress, workers, broker, lm, done))
        started = time.monotonic()
        done.started = started
        try:
            results = client.submit_many(
                requests(),
                program_id="echo",
                max_in_flight=scenario.requests,
                timeout_s=scenario.timeout_s,
            )
            async with contextlib.aclosing(results):
                async for result in results:
                    account(result, client.client_id, delivered, statuses, errors)
                    latencies.append(loop.time() - sent_at[result.request_id])
                    progress.count()
                    if hurt.done() and not hurt.cancelled() and (failed := hurt.exception()):
                        raise failed
            elapsed = time.monotonic() - started
            await hurt  # an outage still running is waited out; damage errors surface
        finally:
            hurt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hurt
        timeouts = client.stats.timeouts
        dropped = client.stats.duplicates_dropped
        results_topic = client.results_topic
    latencies.sort()
    return {
        "answered": len(delivered) - timeouts,
        "ok": statuses["ok"],
        "ok_share": round(statuses["ok"] / scenario.requests, 5),
        "errors_by_type": dict(errors),
        "client_timeouts": timeouts,
        "delivered_twice_by_client": sum(1 for count in delivered.values() if count > 1),
        "repeats_dropped_by_client": dropped,
        "duration_s": round(elapsed, 1),
        "answered_per_s": round(len(delivered) / elapsed, 1),
        "latency_ms": quantiles_ms(latencies),
        "results_topic": results_topic,
        "sent": set(sent_at),
    }


def account(
    result: InferenceResult,
    client_id: str,
    delivered: Counter[str],
    statuses: Counter[str],
    errors: Counter[str],
) -> None:
    delivered[result.request_id] += 1
    statuses[result.status] += 1
    if result.error is not None:
        errors[result.error.type if result.worker_id != client_id else "client_timeout"] += 1


def quantiles_ms(sorted_s: list[float]) -> dict[str, float]:
    if len(sorted_s) < 2:
        return {}
    cuts = statistics.quantiles(sorted_s, n=100, method="inclusive")
    return {"p50": round(cuts[49] * 1000, 1), "p99": round(cuts[98] * 1000, 1),
            "max": round(sorted_s[-1] * 1000, 1)}  # fmt: skip


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    chosen = [s for s in scenarios(args.quick) if not args.scenario or s.name in args.scenario]
    broker = await start_private_broker(workdir)
    results: dict[str, Any] = {}
    try:
        for scenario in chosen:
            print(f"chaos: {scenario.name}: {scenario.what}", file=sys.stderr, flush=True)
            results[scenario.name] = await run_scenario(scenario, broker, workdir)
            summary = {k: results[scenario.name][k] for k in ("answered", "lost",
                       "duplicated_on_topic", "errors_by_type", "duration_s")}  # fmt: skip
            print(f"chaos: {scenario.name}: {summary}", file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(broker.stop)
    return results


def main(argv: list[str] | None = None) -> None:
    cli = parser(
        "chaos",
        __doc__,
        quick="every scenario with 300-400 requests, 3 kills, a 5 s outage",
    )
    cli.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in scenarios(False)],
        help="run only this scenario (repeatable) [default: all]",
    )
    args = cli.parse_args(argv)
    # The client's reconnect attempts while the broker is down are expected here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    started = time.monotonic()
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="dspex-chaos-") as tmp:
        try:
            results = asyncio.run(main_async(args, Path(tmp)))
        except ChaosError as exc:
            print(f"chaos: {exc}", file=sys.stderr)
            sys.exit(1)
    setup = {"partitions": PARTITIONS, "session_timeout_s": 6, "hang_s": HANG_S,
             "program": "echo: Predict(question -> answer), JSON adapter",
             "client": "DSPExClient.submit_many, every request sent at once"}  # fmt: skip
    record = result_record(
        "chaos",
        quick=args.quick,
        started=started,
        setup=setup,
        results=results,
        env=environment(load_at_start=load_at_start),
    )
    write_result(record, args.output)


if __name__ == "__main__":
    main()
