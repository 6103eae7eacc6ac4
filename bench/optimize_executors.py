"""BootstrapFewShot and a large evaluation: LocalExecutor versus KafkaExecutor.

An optimizer runs its evaluations through an executor. This measures what
that costs in wall time against an LM that takes 100 ms per answer:

* (a) ``BootstrapFewShot(...).acompile`` on a trainset (max 4 bootstrapped
  demos, default batch size): a few small batches, run one after the other;
* (b) ``executor.evaluate`` of the compiled program on 2,000 examples.

Contenders, each run against a fresh scripted LM process:

* ``local_c{2N}``: LocalExecutor with as many examples in flight as two
  workers together (2 x the worker in-flight limit N);
* ``local_c{N}``: LocalExecutor with as many as one worker;
* ``kafka_1w``: KafkaExecutor, one ``dspex worker`` process;
* ``kafka_2w``: KafkaExecutor, two worker processes in one group.

Every Kafka run gets topics under a fresh prefix on the broker, the student
registered as ``adder``, a topology serving that program id with its LM at
the scripted server and an explicit ``inflight_limit``, and its own workers.
Worker start-up, group joins and first connections are left out: the run
waits until the workers' group is stable with every worker, then evaluates
throw-away questions until every worker has scored part of one round.

The task is addition: ``What is A + B?``. The scripted LM (a
:class:`~tests.support.scripted_lm.ScriptedLM` with a responder, in its own
process) reads the question of the last user message and answers the sum,
except that it drops the carry out of the units (``17 + 25`` gives ``32``),
so the share of right answers is known in advance for any set of questions.
Scores must be identical, example by example, across executors and repeats;
the compiled programs must be identical too.

The ceiling of a contender is its examples in flight / 0.1 s. Contenders go in
a rotated order each repeat, so drift on a shared machine spreads evenly.
Reported: median, min and max over repeats.

Run: ``python -m bench.optimize_executors [--quick] [--bootstrap-servers HOST:PORT]``
from the repository root with a broker running (``dspex broker status``).
Writes ``bench/results/optimize_executors.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

import dspex
from bench.lm_client_overhead import environment, summary
from dspex._local.broker import BrokerSettings
from dspex.errors import DeadlineExceededError
from dspex.optimizers.bootstrap import BootstrapFewShot
from dspex.optimizers.executor import EvalSummary, Executor, LocalExecutor
from dspex.programs.state import ProgramSpec
from dspex.streams.executor import KafkaExecutor
from dspex.streams.registry import register_program
from dspex.streams.settings import KafkaSettings
from dspex.streams.topics import TopicNames, TopicSettings, ensure_topics
from dspex.topologies.topology import Topology
from tests.support.deployment import read_json_records, start_worker, stop_worker, write_topology
from tests.support.scripted_lm import RecordedRequest, Reply, ScriptedLM, serve_until_signalled

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "optimize_executors.json"
PROGRAM_ID = "adder"
METRIC = "exact_match"
LM_DELAY_S = 0.1
#: Most examples one worker runs at once (written into every topology).
INFLIGHT_LIMIT = 32
PARTITIONS = 6
MAX_BOOTSTRAPPED_DEMOS = 4
#: Question numbers of the three sets: never the same question twice in a run.
TRAIN_FIRST, EVAL_FIRST, WARMUP_FIRST = 0, 100_000, 900_000
WARMUP_SIZE = 4 * PARTITIONS
WARMUP_TIMEOUT_S = 180.0
WARMUP_ATTEMPTS = 3
KAFKA_MAX_OUTSTANDING = 1000
#: Seconds without a score after which a Kafka run counts as stalled.
KAFKA_IDLE_TIMEOUT_S = 30.0
QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


@dataclass(frozen=True)
class Plan:
    repeats: int
    trainset_size: int
    evalset_size: int


QUICK = Plan(repeats=1, trainset_size=100, evalset_size=300)
FULL = Plan(repeats=3, trainset_size=200, evalset_size=2_000)


@dataclass(frozen=True)
class Contender:
    name: str
    kind: Literal["local", "kafka"]
    #: Examples in flight: LocalExecutor's max_concurrency, or workers x inflight limit.
    concurrency: int
    workers: int = 0

    @property
    def ceiling(self) -> float:
        """Examples per second if the LM's 100 ms were the only cost."""
        return self.concurrency / LM_DELAY_S


CONTENDERS = (
    Contender(f"local_c{2 * INFLIGHT_LIMIT}", "local", 2 * INFLIGHT_LIMIT),
    Contender(f"local_c{INFLIGHT_LIMIT}", "local", INFLIGHT_LIMIT),
    Contender("kafka_1w", "kafka", INFLIGHT_LIMIT, workers=1),
    Contender("kafka_2w", "kafka", 2 * INFLIGHT_LIMIT, workers=2),
)


# -- the task and the scripted LM ------------------------------------------------


def operands(number: int) -> tuple[int, int]:
    """The two addends of question ``number``: distinct questions for distinct numbers."""
    return number, random.Random(number).randrange(1000)


def lm_answer(a: int, b: int) -> int:
    """What the scripted LM answers: the sum, less the carry out of the units."""
    carry = 10 if a % 10 + b % 10 >= 10 else 0
    return a + b - carry


def examples(first: int, count: int) -> list[dspex.Example]:
    found = []
    for number in range(first, first + count):
        a, b = operands(number)
        found.append(
            dspex.Example(question=f"What is {a} + {b}?", answer=str(a + b)).with_inputs("question")
        )
    return found


def expected_score(data: Sequence[dspex.Example]) -> float:
    """The share of ``data`` the scripted LM gets right, from the rule alone."""
    right = 0
    for example in data:
        match = QUESTION.fullmatch(example["question"])
        if match is None:
            raise ValueError(f"not a question of this benchmark: {example['question']!r}")
        a, b = int(match[1]), int(match[2])
        right += lm_answer(a, b) == a + b
    return right / len(data)


def respond(request: RecordedRequest) -> Reply:
    """Answer the question of the last user message (demos come before it)."""
    sent = request.json if isinstance(request.json, dict) else {}
    users = [m for m in sent.get("messages", []) if m.get("role") == "user"]
    found = QUESTION.findall(str(users[-1].get("content", ""))) if users else []
    if not found:
        return Reply.error(400, "no question in the last user message", delay_s=LM_DELAY_S)
    a, b = (int(value) for value in found[-1])
    return Reply.completion(json.dumps({"answer": str(lm_answer(a, b))}), delay_s=LM_DELAY_S)


def serve_lm() -> None:
    """Process entry: serve :func:`respond` on a free port until SIGTERM; print the port."""

    asyncio.run(serve_until_signalled(ScriptedLM(responder=respond, record=False)))


@dataclass(frozen=True)
class LMServer:
    url: str
    pid: int


@contextlib.contextmanager
def lm_process() -> Iterator[LMServer]:
    """The scripted LM in its own process, so its CPU is not the executor's."""
    server = subprocess.Popen(
        [sys.executable, "-c", "from bench.optimize_executors import serve_lm; serve_lm()"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if server.stdout is None:
            raise RuntimeError("scripted LM process has no stdout")
        yield LMServer(f"http://127.0.0.1:{int(server.stdout.readline())}/v1", server.pid)
    finally:
        server.terminate()
        server.communicate(timeout=30)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def lm_stats(lm_url: str) -> dict[str, int]:
    """Requests the LM served before this one, and the most it answered at once."""
    async with httpx.AsyncClient() as http:
        response = await http.get(lm_url.removesuffix("/v1") + "/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats


# -- one run -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    compile_s: float
    compile_lm_calls: int
    evaluate_s: float
    evaluate_lm_calls: int
    lm_max_concurrent: int
    failed_warm_ups: int
    #: CPU seconds used during the evaluation, by this process, the workers and the LM.
    evaluate_cpu_s: dict[str, float]
    evaluation: EvalSummary
    compiled_spec: str


@dataclass
class Deployment:
    prefix: str
    topology: Path
    workers: list[subprocess.Popen[str]]
    created_topics: list[str]


@contextlib.asynccontextmanager
async def deployment(
    contender: Contender, bootstrap: str, lm_url: str, student: dspex.Module, workdir: Path
) -> AsyncIterator[Deployment]:
    """Topology for the contender; for Kafka ones also topics, registration and workers."""
    prefix = f"bopt{uuid.uuid4().hex[:8]}"
    topology = write_topology(
        workdir / f"{prefix}.yaml",
        prefix=prefix,
        bootstrap=bootstrap,
        lm_url=lm_url,
        partitions=PARTITIONS,
        programs=[PROGRAM_ID],
        default_lm="lm",
        inflight_limit=INFLIGHT_LIMIT,
    )
    found = Deployment(prefix, topology, [], [])
    if contender.kind == "local":
        yield found
        return
    report = await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS))
    found.created_topics = report.created
    try:
        await register_program(
            bootstrap, TopicNames(prefix), PROGRAM_ID, ProgramSpec.from_program(student)
        )
        for index in range(contender.workers):
            found.workers.append(start_worker(topology, f"{prefix}-w{index}"))
        yield found
    finally:
        for worker in found.workers:
            code, output = stop_worker(worker)
            if code != 0:
                print(f"worker exited with {code}:\n{output[-4000:]}", file=sys.stderr)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(found.created_topics)
        finally:
            await admin.close()


class WarmUpFailed(Exception):
    """The deployment did not come up whole; a fresh one is tried."""


async def wait_for_group(bootstrap: str, group: str, members: int) -> None:
    """Wait until the workers' consumer group is stable with ``members`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaError):
                [response] = await admin.describe_consumer_groups([group])
                [described] = response.to_object()["groups"]
                if described["state"] == "Stable" and len(described["members"]) == members:
                    return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    raise WarmUpFailed(f"group {group} did not become stable with {members} members")


async def warm_up(
    executor: Executor, student: dspex.Module, bootstrap: str, found: Deployment
) -> None:
    """Evaluate throw-away questions until every worker scored some of one round.

    Workers join their group before the first request, then each must score:
    a worker still joining would rebalance the group during the measurement.
    Local executors run one round.

    Raises:
        WarmUpFailed: The group did not form, or a round stalled.
    """
    if found.workers:
        await wait_for_group(bootstrap, f"{found.prefix}-inference", len(found.workers))
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    rounds = 0
    seen_runs: set[str] = set()
    while True:
        data = examples(WARMUP_FIRST + rounds * WARMUP_SIZE, WARMUP_SIZE)
        rounds += 1
        try:
            result = await executor.evaluate(student, data, METRIC)
        except DeadlineExceededError as exc:
            raise WarmUpFailed(str(exc)) from exc
        if result.errors:
            raise RuntimeError(f"warm-up failed: {result.error_counts()}")
        if not found.workers:
            return
        scores = await read_json_records(
            bootstrap, TopicNames(found.prefix).eval_scores, idle_ms=300
        )
        runs: dict[str, set[str]] = {}
        for score in scores:
            runs.setdefault(score["run_id"], set()).add(score["worker_id"])
        latest = set(runs) - seen_runs
        seen_runs |= set(runs)
        if any(len(runs[run]) == len(found.workers) for run in latest):
            return
        if time.monotonic() > deadline:
            raise WarmUpFailed(f"not every worker of {found.prefix} scored within the warm-up")


def cpu_use(server: LMServer, found: Deployment) -> dict[str, float]:
    return {
        "executor_process": time.process_time(),
        "workers": sum(cpu_s(worker.pid) for worker in found.workers),
        "lm_server": cpu_s(server.pid),
    }


async def run_once(
    contender: Contender,
    bootstrap: str,
    workdir: Path,
    trainset: Sequence[dspex.Example],
    evalset: Sequence[dspex.Example],
) -> RunResult:
    """One measured run; a deployment that fails its warm-up is replaced by a fresh one."""
    for attempt in range(WARMUP_ATTEMPTS):
        try:
            return await measure(contender, bootstrap, workdir, trainset, evalset, attempt)
        except WarmUpFailed as exc:
            print(f"{contender.name}: warm-up failed, fresh deployment ({exc})", flush=True)
    raise RuntimeError(f"{contender.name}: warm-up failed {WARMUP_ATTEMPTS} times")


async def measure(
    contender: Contender,
    bootstrap: str,
    workdir: Path,
    trainset: Sequence[dspex.Example],
    evalset: Sequence[dspex.Example],
    failed_warm_ups: int,
) -> RunResult:
    student = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    with lm_process() as server:
        lm_url = server.url
        async with deployment(contender, bootstrap, lm_url, student, workdir) as found:
            executor: Executor
            lm: dspex.LM | None = None
            if contender.kind == "local":
                # The LM client exactly as a worker builds it from the topology.
                lm = Topology.from_file(found.topology).lms["lm"].build()
                executor = LocalExecutor(max_concurrency=contender.concurrency)
            else:
                executor = KafkaExecutor(
                    program_id=PROGRAM_ID,
                    bootstrap_servers=bootstrap,
                    prefix=found.prefix,
                    max_outstanding=KAFKA_MAX_OUTSTANDING,
                    idle_timeout_s=KAFKA_IDLE_TIMEOUT_S,
                )
            async with contextlib.AsyncExitStack() as stack:
                if lm is not None:
                    await stack.enter_async_context(lm)
                    stack.enter_context(dspex.context(lm=lm))
                await stack.enter_async_context(executor)
                await warm_up(executor, student, bootstrap, found)
                optimizer = BootstrapFewShot(
                    METRIC, executor=executor, seed=0, max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS
                )
                before = await lm_stats(lm_url)
                started = time.perf_counter()
                compiled = await optimizer.acompile(student, trainset=trainset)
                compile_s = time.perf_counter() - started
                middle = await lm_stats(lm_url)
                cpu_before = cpu_use(server, found)
                started = time.perf_counter()
                evaluation = await executor.evaluate(compiled, evalset, METRIC)
                evaluate_s = time.perf_counter() - started
                cpu_after = cpu_use(server, found)
                after = await lm_stats(lm_url)
    return RunResult(
        compile_s=compile_s,
        # Each reading counts the reading before it: one request less.
        compile_lm_calls=middle["served"] - before["served"] - 1,
        evaluate_s=evaluate_s,
        evaluate_lm_calls=after["served"] - middle["served"] - 1,
        lm_max_concurrent=after["max_concurrent"],
        failed_warm_ups=failed_warm_ups,
        evaluate_cpu_s={side: cpu_after[side] - cpu_before[side] for side in cpu_after},
        evaluation=evaluation,
        compiled_spec=ProgramSpec.from_program(compiled).model_dump_json(by_alias=True),
    )


# -- the whole benchmark -------------------------------------------------------------


async def run(plan: Plan, bootstrap: str) -> dict[str, Any]:
    trainset = examples(TRAIN_FIRST, plan.trainset_size)
    evalset = examples(EVAL_FIRST, plan.evalset_size)
    workdir = Path(tempfile.mkdtemp(prefix="dspex-bench-"))
    runs: dict[str, list[RunResult]] = {c.name: [] for c in CONTENDERS}
    for repeat in range(plan.repeats):
        shift = repeat % len(CONTENDERS)
        for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
            result = await run_once(contender, bootstrap, workdir, trainset, evalset)
            runs[contender.name].append(result)
            print(
                f"repeat {repeat + 1}/{plan.repeats} {contender.name}: "
                f"compile {result.compile_s:.2f} s ({result.compile_lm_calls} LM calls), "
                f"evaluate {result.evaluate_s:.2f} s = "
                f"{len(evalset) / result.evaluate_s:.0f}/s of {contender.ceiling:.0f}/s, "
                f"score {result.evaluation.score:.4f}, LM peak {result.lm_max_concurrent}",
                flush=True,
            )
    every = [result for results in runs.values() for result in results]
    reference = every[0]
    scores = [o.score for o in reference.evaluation.outputs]
    outputs = [o.outputs for o in reference.evaluation.outputs]
    checks = {
        "expected_score": expected_score(evalset),
        "score": reference.evaluation.score,
        "scores_identical": all([o.score for o in r.evaluation.outputs] == scores for r in every),
        "outputs_identical": all(
            [o.outputs for o in r.evaluation.outputs] == outputs for r in every
        ),
        "compiled_programs_identical": all(
            r.compiled_spec == reference.compiled_spec for r in every
        ),
        "errors": sum(r.evaluation.errors for r in every),
        "cached_calls": sum(r.evaluation.usage.cached_calls for r in every),
        "compile_lm_calls": sorted({r.compile_lm_calls for r in every}),
        "evaluate_lm_calls": sorted({r.evaluate_lm_calls for r in every}),
        "failed_warm_ups": {
            name: sum(r.failed_warm_ups for r in results) for name, results in runs.items()
        },
    }
    figures: dict[str, Any] = {}
    for contender in CONTENDERS:
        results = runs[contender.name]
        rates = [len(evalset) / r.evaluate_s for r in results]
        figures[contender.name] = {
            "executor": "LocalExecutor" if contender.kind == "local" else "KafkaExecutor",
            "examples_in_flight": contender.concurrency,
            "workers": contender.workers,
            "ceiling_examples_per_s": contender.ceiling,
            "compile_wall_s": summary([r.compile_s for r in results]),
            "compile_examples_per_s": summary([r.compile_lm_calls / r.compile_s for r in results]),
            "evaluate_wall_s": summary([r.evaluate_s for r in results]),
            "evaluate_examples_per_s": summary(rates),
            "evaluate_share_of_ceiling": summary([rate / contender.ceiling for rate in rates]),
            "lm_max_concurrent": summary([float(r.lm_max_concurrent) for r in results]),
            "evaluate_cpu_ms_per_example": {
                side: summary([r.evaluate_cpu_s[side] / len(evalset) for r in results], 1000)
                for side in results[0].evaluate_cpu_s
            },
            "evaluate_score": summary([r.evaluation.score for r in results]),
        }
    return {"contenders": figures, "checks": checks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="100 + 300 examples, 1 repeat (< 2 min)"
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=KafkaSettings().bootstrap_servers,
        help="the broker (default: DSPEX_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    load_at_start = list(os.getloadavg())
    results = asyncio.run(run(plan, args.bootstrap_servers))
    env = environment()
    for package in ("aiokafka", "faust-streaming"):
        env["versions"][package] = metadata.version(package)
    env["versions"]["kafka"] = BrokerSettings().kafka_version
    # The machine may be shared: its load says how far to trust the figures.
    env["load_average_1_5_15"] = {"start": load_at_start, "end": list(os.getloadavg())}
    report = {
        "benchmark": "optimize_executors",
        "mode": "quick" if args.quick else "full",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.perf_counter() - started, 1),
        "environment": env,
        "params": {
            "repeats": plan.repeats,
            "trainset_size": plan.trainset_size,
            "evalset_size": plan.evalset_size,
            "lm": (
                f"ScriptedLM with a responder in its own process, {LM_DELAY_S * 1000:.0f} ms "
                "per answer; answers A + B less the carry out of the units"
            ),
            "lm_delay_s": LM_DELAY_S,
            "lm_client": "built from the topology's LM endpoint (defaults) for every executor",
            "program": 'Predict("question -> answer", adapter=JSONAdapter())',
            "metric": METRIC,
            "optimizer": (
                f"BootstrapFewShot(seed=0, max_bootstrapped_demos={MAX_BOOTSTRAPPED_DEMOS}), "
                "other arguments default (max_labeled_demos=16, batch_size=16)"
            ),
            "worker_inflight_limit": INFLIGHT_LIMIT,
            "partitions": PARTITIONS,
            "kafka_executor_max_outstanding": KAFKA_MAX_OUTSTANDING,
            "local_executor_max_concurrency": {
                c.name: c.concurrency for c in CONTENDERS if c.kind == "local"
            },
            "warm_up": (
                "Kafka: wait until the workers' group is stable with every worker, then "
                f"{WARMUP_SIZE} throw-away examples per round until every worker scored "
                "some of one round; a deployment whose warm-up stalls is replaced by a "
                f"fresh one (counted in checks.failed_warm_ups, at most {WARMUP_ATTEMPTS} "
                "tries). Local: one round. Not timed"
            ),
            "kafka_executor_idle_timeout_s": KAFKA_IDLE_TIMEOUT_S,
            "order": "contenders rotated by one place each repeat",
            "ceiling": "examples in flight / LM delay",
            "cpu": (
                "CPU seconds (user + system) used during the evaluation by the executor's "
                "process, the worker processes and the LM server, per example evaluated"
            ),
        },
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))
    print(f"wrote {args.output}")
    checks = results["checks"]
    if not (
        checks["scores_identical"]
        and checks["outputs_identical"]
        and checks["compiled_programs_identical"]
        and checks["score"] == checks["expected_score"]
        and checks["errors"] == 0
    ):
        sys.exit("error: executors disagree or the scores are not the expected ones")


if __name__ == "__main__":
    main()
