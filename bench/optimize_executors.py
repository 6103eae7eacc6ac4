"""BootstrapFewShot and a large evaluation: LocalExecutor versus KafkaExecutor.

An optimizer runs its evaluations through an executor. This measures what
that costs in wall time against an LM that takes 100 ms per answer:

* (a) ``BootstrapFewShot(...).acompile`` on a trainset (max 4 bootstrapped
  demos, default batch size): a few small batches, run one after the other;
* (b) ``executor.evaluate`` of the compiled program on 2,000 examples.

Contenders, each run against a fresh LM server process:

* ``local_c{2N}``: LocalExecutor with as many examples in flight as two
  workers together (2 x the worker in-flight limit N);
* ``local_c{N}``: LocalExecutor with as many as one worker;
* ``kafka_1w``: KafkaExecutor, one ``dspex worker`` process;
* ``kafka_2w``: KafkaExecutor, two worker processes in one group.

Every Kafka run gets topics under a fresh prefix on the broker, the student
registered as ``adder``, a topology serving that program id with its LM at
the LM server and an explicit ``inflight_limit``, and its own workers.
Worker start-up, group joins and first connections are left out: the run
waits until the workers' group is stable with every worker, then evaluates
throw-away questions until every worker has scored part of one round.

The task is addition: ``What is A + B?``. The LM is ``bench.lm_server``, the
benchmark LM instrument, in its own process, with a script written into the
run's temporary directory from the benchmark's own questions: one rule per
train and evaluation question, matched on the whole question in the last
message (``What is 1 + 2?`` with its ``?``, so it never matches
``What is 11 + 2?`` or ``What is 1 + 23?``). A rule answers the sum, except
that it drops the carry out of the units (``17 + 25`` gives ``32``), so the
share of right answers is known in advance. Warm-up questions have no rule
and get a fixed answer. Scores must be identical, example by example, across
executors and repeats; the compiled programs must be identical too.

The ceiling of a contender is its examples in flight / 0.1 s. Contenders go in
a rotated order each repeat, so drift on a shared machine spreads evenly.
Reported: median, min and max over repeats.

Run: ``python -m bench.optimize_executors [--quick] [--output PATH]
[--bootstrap-servers HOST:PORT]`` from the repository root. Without
``--bootstrap-servers`` a private broker is started on free ports. Writes
``bench/results/optimize_executors.json`` by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from bench._deployment import start_private_broker
from bench._executors import (
    Deployment,
    WarmUpFailed,
    cpu_s,
    deployment,
    lm_stats,
    topology_lm,
    warm_up,
)
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.errors import DeadlineExceededError
from dspex.optimizers.bootstrap import BootstrapFewShot
from dspex.optimizers.executor import EvalSummary, Executor, LocalExecutor
from dspex.programs.state import ProgramSpec
from dspex.streams.executor import KafkaExecutor

NAME = "optimize_executors"
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
WARMUP_ATTEMPTS = 3
KAFKA_MAX_OUTSTANDING = 1000
#: Seconds without a score after which a Kafka run counts as stalled.
KAFKA_IDLE_TIMEOUT_S = 30.0
QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
#: The LM's answer to a question without a rule (the warm-up's).
UNSCRIPTED_TEXT = json.dumps({"answer": "0"})


@dataclass(frozen=True)
class Plan:
    repeats: int
    trainset_size: int
    evalset_size: int


QUICK = Plan(repeats=1, trainset_size=100, evalset_size=150)
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


# -- the task and the LM's script -------------------------------------------------


def operands(number: int) -> tuple[int, int]:
    """The two addends of question ``number``: distinct questions for distinct numbers."""
    return number, random.Random(number).randrange(1000)


def lm_answer(a: int, b: int) -> int:
    """What the LM's script answers: the sum, less the carry out of the units."""
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


def addends(example: dspex.Example) -> tuple[int, int]:
    """A and B of an example's ``What is A + B?``."""
    match = QUESTION.fullmatch(example["question"])
    if match is None:
        raise ValueError(f"not a question of this benchmark: {example['question']!r}")
    return int(match[1]), int(match[2])


def expected_score(data: Sequence[dspex.Example]) -> float:
    """The share of ``data`` the LM gets right, from the rule alone."""
    right = 0
    for example in data:
        a, b = addends(example)
        right += lm_answer(a, b) == a + b
    return right / len(data)


def lm_script(data: Sequence[dspex.Example]) -> list[dict[str, str]]:
    """``bench.lm_server`` rules answering every question of ``data`` as :func:`lm_answer`.

    A rule matches the whole question, ``What is A + B?`` with its trailing
    ``?``, which occurs once in the last message (the question of the call;
    demos are earlier messages): no question of the benchmark contains another.
    """
    return [
        {
            "contains": example["question"],
            "text": json.dumps({"answer": str(lm_answer(*addends(example)))}),
        }
        for example in data
    ]


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


async def warm_up_run(
    executor: Executor, student: dspex.Module, bootstrap: str, found: Deployment
) -> None:
    """Throw-away rounds until every worker scored some of one (local: one round).

    Raises:
        WarmUpFailed: The group did not form, or a round stalled.
    """

    async def run_round(number: int) -> None:
        data = examples(WARMUP_FIRST + number * WARMUP_SIZE, WARMUP_SIZE)
        try:
            result = await executor.evaluate(student, data, METRIC)
        except DeadlineExceededError as exc:
            raise WarmUpFailed(str(exc)) from exc
        if result.errors:
            raise RuntimeError(f"warm-up failed: {result.error_counts()}")

    await warm_up(found, bootstrap, run_round)


def cpu_use(server: subprocess.Popen[str], found: Deployment) -> dict[str, float]:
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
    script: Path,
) -> RunResult:
    """One measured run; a deployment that fails its warm-up is replaced by a fresh one."""
    for attempt in range(WARMUP_ATTEMPTS):
        try:
            return await measure(contender, bootstrap, workdir, trainset, evalset, script, attempt)
        except WarmUpFailed as exc:
            print(f"{contender.name}: warm-up failed, fresh deployment ({exc})", flush=True)
    raise RuntimeError(f"{contender.name}: warm-up failed {WARMUP_ATTEMPTS} times")


async def measure(
    contender: Contender,
    bootstrap: str,
    workdir: Path,
    trainset: Sequence[dspex.Example],
    evalset: Sequence[dspex.Example],
    script: Path,
    failed_warm_ups: int,
) -> RunResult:
    student = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    latency = f"fixed:{LM_DELAY_S}"
    with lm_server_process(latency=latency, text=UNSCRIPTED_TEXT, script=script) as served:
        lm_url, server = served
        async with deployment(
            workers=contender.workers,
            bootstrap=bootstrap,
            lm_url=lm_url,
            program=student,
            program_id=PROGRAM_ID,
            workdir=workdir,
            partitions=PARTITIONS,
            inflight_limit=INFLIGHT_LIMIT,
            stem="bopt",
        ) as found:
            executor: Executor
            lm: dspex.LM | None = None
            if contender.kind == "local":
                # The LM client exactly as a worker builds it from the topology.
                lm = topology_lm(found)
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
                await warm_up_run(executor, student, bootstrap, found)
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


async def run(plan: Plan, bootstrap: str, workdir: Path) -> dict[str, Any]:
    trainset = examples(TRAIN_FIRST, plan.trainset_size)
    evalset = examples(EVAL_FIRST, plan.evalset_size)
    script = workdir / "lm_script.json"
    script.write_text(json.dumps(lm_script([*trainset, *evalset])))
    runs: dict[str, list[RunResult]] = {c.name: [] for c in CONTENDERS}
    for repeat in range(plan.repeats):
        shift = repeat % len(CONTENDERS)
        for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
            result = await run_once(contender, bootstrap, workdir, trainset, evalset, script)
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


def setup(plan: Plan, private_broker: bool) -> dict[str, Any]:
    return {
        "repeats": plan.repeats,
        "trainset_size": plan.trainset_size,
        "evalset_size": plan.evalset_size,
        "lm": (
            f"bench.lm_server in its own process, latency fixed:{LM_DELAY_S}, with a "
            "script of one rule per train and evaluation question (the whole question "
            "'What is A + B?' in the last message) answering A + B less the carry out "
            f"of the units; questions without a rule (warm-up) get {UNSCRIPTED_TEXT}"
        ),
        "lm_script_rules": plan.trainset_size + plan.evalset_size,
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
        "broker": "private, started by the benchmark" if private_broker else "given",
    }


async def run_with_broker(plan: Plan, bootstrap: str | None, workdir: Path) -> dict[str, Any]:
    """:func:`run` against ``bootstrap``, or a private broker when it is None."""
    broker: KafkaBroker | None = None
    if bootstrap is None:
        broker = await start_private_broker(workdir)
        bootstrap = broker.settings.bootstrap_servers
    try:
        return await run(plan, bootstrap, workdir)
    finally:
        if broker is not None:
            broker.stop()


def main() -> None:
    args = parser(
        NAME,
        __doc__,
        quick=(f"{QUICK.trainset_size} + {QUICK.evalset_size} examples, {QUICK.repeats} repeat"),
        broker=True,
    ).parse_args()
    # aiokafka logs a topic created a moment ago as an error; it is not one here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    # The machine may be shared: its load says how far to trust the figures.
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="dspex-bench-") as workdir:
        results = asyncio.run(run_with_broker(plan, args.bootstrap_servers, Path(workdir)))
    env = environment(load_at_start=load_at_start, kafka=BrokerSettings().kafka_version)
    record = result_record(
        NAME,
        quick=args.quick,
        started=started,
        setup=setup(plan, args.bootstrap_servers is None),
        results=results,
        env=env,
    )
    write_result(record, args.output)
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
