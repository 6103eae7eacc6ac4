"""DSPEx against DSPy: evaluation throughput and BootstrapFewShot compile time.

Same inputs, same LM, same run. DSPy comes from PyPI into its own virtualenv
(``.venv/bench-dspy``, made by this benchmark from ``bench/dspy-requirements.txt``
when missing or when that file changed) and runs in its own process
(``bench/_dspy_side.py``, which imports nothing of DSPEx), driven over a pipe.

The program on both sides is ``Predict("question -> answer")`` with its
library's default adapter: DSPy's ChatAdapter, and DSPEx's ChatAdapter, which
reads and writes the same ``[[ ## answer ## ]] ... [[ ## completed ## ]]``
format. The LM is ``bench/lm_server.py`` with a fixed 100 ms latency. It
answers every question ``yes`` in that format, except questions carrying the
mark ``(discontinued)``, which a ``--script`` rule (matched on the last
message, the question's own) answers ``no``; every label is ``yes``. So the
number of right answers is known in advance, and a completion that did not
parse would cost a second call, which the server's request count shows.

(a) Evaluation: N questions (5,000; quick: 300), every fourth one marked.
Contenders: DSPy ``Evaluate`` with its default ``num_threads`` (read from
the installed DSPy) and with 64; DSPEx ``Evaluate`` in-process with
``max_concurrency=64``; and ``dspex eval PROGRAM DATASET.jsonl --metric
exact_match --json`` against the program registered on a cluster of 1 and of
2 ``dspex worker`` processes (in-flight limit 64 each). The ceiling is
examples in flight / 100 ms.

(b) Optimization: ``BootstrapFewShot`` with max_bootstrapped_demos=4,
max_labeled_demos=16, max_rounds=1 on a trainset of 200 where only one
question in eight is unmarked, so the optimizer must try far more than four
examples: DSPy (which runs them one at a time, whatever ``num_threads``), DSPEx
with a LocalExecutor and with a KafkaExecutor on each cluster.

Every contender gets a fresh LM server process per run, so the server's
counts (requests served, most at once) belong to that run alone; starting
one takes half a second, outside the timed part. What is timed: DSPy's
``Evaluate(...)(program)`` and ``compile`` calls inside its process; DSPEx's
``Evaluate.acall`` and ``acompile``; for ``dspex eval`` the ``wall_time_s`` of
its own report, which runs from the moment its Kafka producer is connected to
the last score, so the process start, imports, catalog read and dataset check
are left out (the process's whole wall time is recorded beside it). Warm-up
before each timed evaluation, not timed: the same evaluation on throw-away
questions, one per thread or slot (DSPy: its threads; DSPEx local: 64); on a cluster, the
workers' group stable with every worker, then throw-away rounds through the
evaluation channel until every worker has scored. Caches are off on both
sides: DSPy's LM with ``cache=False`` and ``configure_cache`` with neither
disk nor memory cache; DSPEx's calls under ``dspex.context(cache=False)``.
The workers' LM client, built from the topology, keeps its in-memory cache,
which has no setting there; every question is distinct, so it never answers
a call (the reports' cached-call count must be 0). Progress displays are off
on both sides (DSPy's default); ``dspex eval`` writes its progress line to a
pipe every 2 s.

The contenders go in a rotated order each repeat; each figure is the median
with min and max over repeats, ratios are taken per repeat. The run fails
(exit 1) unless every contender scored every example as expected, made
exactly one LM call per example, and every compile picked four bootstrapped
demos of unmarked questions.

Run: ``python -m bench.dspy_compare [--quick] [--output PATH]
[--bootstrap-servers HOST:PORT]`` from the repository root. Without
``--bootstrap-servers`` a private broker is started on free ports. Making the
DSPy virtualenv the first time takes about two minutes (not counted).
Results: ``bench/results/dspy_compare.json`` by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

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
from dspex.optimizers.executor import Executor, LocalExecutor
from dspex.programs.metrics import exact_match
from dspex.streams.executor import KafkaExecutor

NAME = "dspy_compare"
ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
REQUIREMENTS = BENCH / "dspy-requirements.txt"
DSPY_VENV = ROOT / ".venv" / "bench-dspy"
STAMP = DSPY_VENV / ".requirements-sha256"

LATENCY_S = 0.1
#: Examples in flight for DSPy's 64 threads, DSPEx local, and each worker.
CONCURRENCY = 64
PARTITIONS = 8
PROGRAM_ID = "qa"
METRIC = "exact_match"
MODEL = "bench-model"
MAX_BOOTSTRAPPED_DEMOS = 4
MAX_LABELED_DEMOS = 16
MAX_ROUNDS = 1
#: The mark of questions the LM answers wrongly, and its answers.
MARK = "(discontinued)"
RIGHT, WRONG = "yes", "no"
#: Every EVAL_WRONG_EVERY-th evaluation question is marked.
EVAL_WRONG_EVERY = 4
#: Only trainset questions whose number is TRAIN_RIGHT mod TRAIN_RIGHT_EVERY are unmarked.
TRAIN_RIGHT_EVERY, TRAIN_RIGHT = 8, 3
WARMUP_ROUND = 4 * PARTITIONS
WARMUP_ATTEMPTS = 3
KAFKA_IDLE_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Plan:
    repeats: int
    evalset_size: int
    trainset_size: int


QUICK = Plan(repeats=1, evalset_size=300, trainset_size=200)
FULL = Plan(repeats=3, evalset_size=5_000, trainset_size=200)


class BenchmarkError(Exception):
    """A contender did not do the work asked of it, or a part failed."""


def completion(answer: str) -> str:
    """A completion in the ChatAdapter format both libraries read."""
    return f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"


# -- the data ----------------------------------------------------------------------------


def question(kind: str, number: int, marked: bool) -> str:
    return f"Is {kind} {number} in stock?" + (f" {MARK}" if marked else "")


def write_jsonl(path: Path, questions: Sequence[str]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for text in questions:
            out.write(json.dumps({"question": text, "answer": RIGHT}) + "\n")
    return path


def eval_questions(count: int) -> list[str]:
    return [question("item", i, i % EVAL_WRONG_EVERY == EVAL_WRONG_EVERY - 1) for i in range(count)]


def train_questions(count: int) -> list[str]:
    return [question("part", i, i % TRAIN_RIGHT_EVERY != TRAIN_RIGHT) for i in range(count)]


def expected_scores(questions: Sequence[str]) -> list[float]:
    return [0.0 if MARK in text else 1.0 for text in questions]


def as_examples(questions: Sequence[str]) -> list[dspex.Example]:
    return [dspex.Example(question=q, answer=RIGHT).with_inputs("question") for q in questions]


@dataclass
class Data:
    """The run's files and examples; warm-up questions are new for every round."""

    workdir: Path
    eval_questions: list[str]
    train_questions: list[str]
    eval_file: Path
    train_file: Path
    warmups: int = 0

    @classmethod
    def write(cls, workdir: Path, plan: Plan) -> Data:
        evals, trains = eval_questions(plan.evalset_size), train_questions(plan.trainset_size)
        return cls(
            workdir,
            evals,
            trains,
            write_jsonl(workdir / "eval.jsonl", evals),
            write_jsonl(workdir / "train.jsonl", trains),
        )

    def warmup_questions(self, count: int) -> list[str]:
        self.warmups += 1
        return [f"Is warm-up {self.warmups} item {i} in stock?" for i in range(count)]

    def warmup_file(self, count: int) -> Path:
        questions = self.warmup_questions(count)
        return write_jsonl(self.workdir / f"warmup-{self.warmups}.jsonl", questions)


# -- the DSPy side -------------------------------------------------------------------------


def requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_dspy_venv() -> tuple[Path, float | None]:
    """The DSPy virtualenv's python, made first when missing or out of date.

    Returns the python and the seconds spent making the virtualenv (None: it was there).
    """
    python = DSPY_VENV / "bin" / "python"
    digest = requirements_digest()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return python, None
    started = time.monotonic()
    print(
        f"making the DSPy virtualenv {DSPY_VENV.relative_to(ROOT)} from "
        f"{REQUIREMENTS.relative_to(ROOT)} (once; about two minutes)",
        flush=True,
    )
    shutil.rmtree(DSPY_VENV, ignore_errors=True)
    # From the project's interpreter: the same Python version on both sides.
    subprocess.run([sys.executable, "-m", "venv", str(DSPY_VENV)], check=True)
    install = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*install, "-r", str(REQUIREMENTS)], check=True)
    STAMP.write_text(digest + "\n")
    seconds = time.monotonic() - started
    print(f"DSPy virtualenv ready in {seconds:.0f} s", flush=True)
    return python, seconds


class DSPySide:
    """``bench/_dspy_side.py`` in the DSPy virtualenv: one JSON command, one JSON answer."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.log_path = workdir / "dspy-side.log"
        env = {**os.environ, "DSPY_CACHEDIR": str(workdir / "dspy-cache")}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(python), "-I", str(BENCH / "_dspy_side.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=workdir,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, op: str, **command: Any) -> dict[str, Any]:
        stdin: IO[str] | None = self.process.stdin
        stdout: IO[str] | None = self.process.stdout
        if stdin is None or stdout is None:
            raise BenchmarkError("the DSPy process has no pipes")
        stdin.write(json.dumps({"op": op, **command}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise BenchmarkError(f"the DSPy process ended: {self.log_tail()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchmarkError(f"DSPy {op}: {answer['error']}\n{self.log_tail()}")
        return answer

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- contenders and runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    side: Literal["dspy", "dspex_local", "dspex_cluster"]
    #: Examples in flight: DSPy's threads, Evaluate's max_concurrency, or workers x 64.
    concurrency: int
    how: str
    threads: int | None = None
    workers: int = 0
    compiles: bool = True

    @property
    def ceiling(self) -> float:
        """Examples per second if the LM's 100 ms were the only cost."""
        return self.concurrency / LATENCY_S


def contenders(dspy_default_threads: int) -> tuple[Contender, ...]:
    return (
        Contender(
            "dspy_default",
            "dspy",
            dspy_default_threads,
            f"dspy.Evaluate, default num_threads ({dspy_default_threads})",
        ),
        Contender(
            "dspy_threads64",
            "dspy",
            CONCURRENCY,
            f"dspy.Evaluate(num_threads={CONCURRENCY})",
            threads=CONCURRENCY,
            # DSPy's BootstrapFewShot runs one example at a time whatever num_threads:
            # its compile is measured once, under dspy_default.
            compiles=False,
        ),
        Contender(
            "dspex_local",
            "dspex_local",
            CONCURRENCY,
            f"dspex.Evaluate(max_concurrency={CONCURRENCY}) in-process",
        ),
        Contender(
            "dspex_cluster_1w",
            "dspex_cluster",
            CONCURRENCY,
            "`dspex eval` CLI, 1 worker",
            workers=1,
        ),
        Contender(
            "dspex_cluster_2w",
            "dspex_cluster",
            2 * CONCURRENCY,
            "`dspex eval` CLI, 2 workers",
            workers=2,
        ),
    )


@dataclass
class RunResult:
    eval_wall_s: float
    eval_lm_calls: int
    lm_max_concurrent: int
    correct: float
    errors: int
    #: Each example's score in dataset order, where the contender reports them.
    scores: list[float] | None
    #: CPU seconds of the client side (DSPy's process, this process, or the workers).
    client_cpu_s: float
    compile_wall_s: float | None = None
    compile_lm_calls: int | None = None
    #: (question, answer, bootstrapped) of each demo of the compiled program.
    demos: list[tuple[str, str, bool]] | None = None
    cached_calls: int = 0
    failed_warm_ups: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    bootstrap: str
    workdir: Path
    data: Data
    dspy: DSPySide


def served(before: dict[str, int], after: dict[str, int]) -> int:
    """Requests between two ``/stats`` readings (each reading counts the one before it)."""
    return after["served"] - before["served"] - 1


async def run_dspy(contender: Contender, ctx: Context, url: str) -> RunResult:
    common = {"url": url, "model": MODEL, "num_threads": contender.threads}
    warmup = ctx.data.warmup_file(contender.concurrency)
    await asyncio.to_thread(ctx.dspy.request, "evaluate", dataset=str(warmup), **common)
    before, cpu_before = await lm_stats(url), cpu_s(ctx.dspy.pid)
    answer = await asyncio.to_thread(
        ctx.dspy.request, "evaluate", dataset=str(ctx.data.eval_file), **common
    )
    cpu_after, middle = cpu_s(ctx.dspy.pid), await lm_stats(url)
    scores = [float(s) for s in answer["scores"]]
    result = RunResult(
        eval_wall_s=answer["wall_s"],
        eval_lm_calls=served(before, middle),
        lm_max_concurrent=middle["max_concurrent"],
        correct=sum(scores),
        errors=answer["errors"],
        scores=scores,
        client_cpu_s=cpu_after - cpu_before,
        extra={"engines": answer["engines"]},
    )
    if contender.compiles:
        compiled = await asyncio.to_thread(
            ctx.dspy.request,
            "compile",
            url=url,
            model=MODEL,
            trainset=str(ctx.data.train_file),
            max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
            max_labeled_demos=MAX_LABELED_DEMOS,
            max_rounds=MAX_ROUNDS,
        )
        result.compile_wall_s = compiled["wall_s"]
        result.compile_lm_calls = served(middle, await lm_stats(url))
        result.demos = [(d["question"], d["answer"], d["augmented"]) for d in compiled["demos"]]
    return result


def dspex_demos(optimizer: BootstrapFewShot) -> list[tuple[str, str, bool]]:
    """The compiled demos; the bootstrapped ones come first in each predictor's list."""
    return [
        (str(demo["question"]), str(demo["answer"]), index < MAX_BOOTSTRAPPED_DEMOS)
        for demos in optimizer.demos.values()
        for index, demo in enumerate(demos)
    ]


def optimizer_for(executor: Executor) -> BootstrapFewShot:
    return BootstrapFewShot(
        METRIC,
        executor=executor,
        seed=0,
        max_bootstrapped_demos=MAX_BOOTSTRAPPED_DEMOS,
        max_labeled_demos=MAX_LABELED_DEMOS,
        max_rounds=MAX_ROUNDS,
    )


async def run_dspex_local(contender: Contender, ctx: Context, url: str) -> RunResult:
    program = dspex.Predict("question -> answer")
    async with (
        deployment(
            workers=0,
            bootstrap=ctx.bootstrap,
            lm_url=url,
            program=program,
            program_id=PROGRAM_ID,
            workdir=ctx.workdir,
            partitions=PARTITIONS,
            inflight_limit=CONCURRENCY,
            stem="dspyc",
        ) as found,
        topology_lm(found) as lm,
    ):  # the LM client exactly as a worker builds it
        with dspex.context(lm=lm, cache=False):

            def evaluator(questions: Sequence[str]) -> dspex.Evaluate:
                return dspex.Evaluate(
                    devset=as_examples(questions),
                    metric=exact_match,
                    max_concurrency=contender.concurrency,
                    display_progress=False,
                )

            await evaluator(ctx.data.warmup_questions(contender.concurrency)).acall(program)
            evaluate = evaluator(ctx.data.eval_questions)
            before, cpu_before = await lm_stats(url), time.process_time()
            started = time.perf_counter()
            evaluation = await evaluate.acall(program)
            wall_s = time.perf_counter() - started
            cpu_after, middle = time.process_time(), await lm_stats(url)
            optimizer = optimizer_for(LocalExecutor(max_concurrency=contender.concurrency))
            started = time.perf_counter()
            await optimizer.acompile(program, trainset=as_examples(ctx.data.train_questions))
            compile_s = time.perf_counter() - started
            after = await lm_stats(url)
    scores = [r.score for r in evaluation.results]
    return RunResult(
        eval_wall_s=wall_s,
        eval_lm_calls=served(before, middle),
        lm_max_concurrent=middle["max_concurrent"],
        correct=sum(scores),
        errors=evaluation.errors,
        scores=scores,
        client_cpu_s=cpu_after - cpu_before,
        compile_wall_s=compile_s,
        compile_lm_calls=served(middle, after),
        demos=dspex_demos(optimizer),
        cached_calls=evaluation.usage.cached_calls,
    )


def dspex_eval(found: Deployment, ctx: Context) -> tuple[dict[str, Any], float]:
    """``dspex eval`` as a user runs it; its JSON report and the process's wall time."""
    command = [
        *(sys.executable, "-m", "dspex", "eval", PROGRAM_ID, str(ctx.data.eval_file)),
        *("--metric", METRIC, "--json"),
        *("--bootstrap-servers", ctx.bootstrap, "--prefix", found.prefix),
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchmarkError(f"dspex eval exited {done.returncode}:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report, process_s


async def run_dspex_cluster(contender: Contender, ctx: Context, url: str) -> RunResult:
    for attempt in range(WARMUP_ATTEMPTS):
        try:
            result = await measure_cluster(contender, ctx, url)
        except WarmUpFailed as exc:
            print(f"{contender.name}: warm-up failed, fresh deployment ({exc})", flush=True)
            continue
        result.failed_warm_ups = attempt
        return result
    raise BenchmarkError(f"{contender.name}: warm-up failed {WARMUP_ATTEMPTS} times")


async def measure_cluster(contender: Contender, ctx: Context, url: str) -> RunResult:
    program = dspex.Predict("question -> answer")
    async with (
        deployment(
            workers=contender.workers,
            bootstrap=ctx.bootstrap,
            lm_url=url,
            program=program,
            program_id=PROGRAM_ID,
            workdir=ctx.workdir,
            partitions=PARTITIONS,
            inflight_limit=CONCURRENCY,
            stem="dspyc",
        ) as found,
        KafkaExecutor(
            program_id=PROGRAM_ID,
            bootstrap_servers=ctx.bootstrap,
            prefix=found.prefix,
            idle_timeout_s=KAFKA_IDLE_TIMEOUT_S,
        ) as executor,
    ):

        async def warm_round(number: int) -> None:
            examples = as_examples(ctx.data.warmup_questions(WARMUP_ROUND))
            try:
                async for output in executor.score_registered(examples, METRIC):
                    if output.error is not None:
                        raise BenchmarkError(f"warm-up failed: {output.error}")
            except DeadlineExceededError as exc:
                raise WarmUpFailed(str(exc)) from exc

        await warm_up(found, ctx.bootstrap, warm_round)
        before, cpu_before = await lm_stats(url), sum(cpu_s(p) for p in found.worker_pids)
        report, process_s = await asyncio.to_thread(dspex_eval, found, ctx)
        cpu_after = sum(cpu_s(p) for p in found.worker_pids)
        middle = await lm_stats(url)
        optimizer = optimizer_for(executor)
        started = time.perf_counter()
        await optimizer.acompile(program, trainset=as_examples(ctx.data.train_questions))
        compile_s = time.perf_counter() - started
        after = await lm_stats(url)
    return RunResult(
        eval_wall_s=report["wall_time_s"],
        eval_lm_calls=served(before, middle),
        lm_max_concurrent=middle["max_concurrent"],
        # The mean of 0/1 scores is a plain sum over the count: exact.
        correct=round(report["mean"] * report["examples"], 6),
        errors=report["errors"],
        scores=None,
        client_cpu_s=cpu_after - cpu_before,
        compile_wall_s=compile_s,
        compile_lm_calls=served(middle, after),
        demos=dspex_demos(optimizer),
        cached_calls=report["usage"]["cached_calls"],
        extra={"cli_process_wall_s": process_s, "examples": report["examples"]},
    )


async def run_contender(contender: Contender, ctx: Context) -> RunResult:
    rules = ctx.workdir / "rules.json"
    if not rules.exists():
        rules.write_text(json.dumps([{"contains": MARK, "text": completion(WRONG)}]))
    latency = f"fixed:{LATENCY_S}"
    with lm_server_process(latency=latency, text=completion(RIGHT), script=rules) as (url, _):
        if contender.side == "dspy":
            return await run_dspy(contender, ctx, url)
        if contender.side == "dspex_local":
            return await run_dspex_local(contender, ctx, url)
        return await run_dspex_cluster(contender, ctx, url)


# -- checks and figures -------------------------------------------------------------------


def check(plan: Plan, data: Data, runs: dict[str, list[RunResult]]) -> dict[str, Any]:
    """What every run must have done; ``problems`` lists what it did not."""
    want = expected_scores(data.eval_questions)
    problems: list[str] = []
    for name, results in runs.items():
        for repeat, r in enumerate(results, start=1):
            where = f"{name} repeat {repeat}"
            if r.correct != sum(want):
                problems.append(f"{where}: {r.correct} right, expected {sum(want)}")
            if r.scores is not None and r.scores != want:
                problems.append(f"{where}: per-example scores differ from the expected ones")
            if r.errors or r.cached_calls:
                problems.append(f"{where}: {r.errors} errors, {r.cached_calls} cached calls")
            if r.eval_lm_calls != plan.evalset_size:
                problems.append(f"{where}: {r.eval_lm_calls} LM calls for {plan.evalset_size}")
            if r.demos is not None and r.compile_lm_calls is not None:
                problems += check_demos(where, r.demos, r.compile_lm_calls)
    compiled = {
        tuple(r.demos) for n, rs in runs.items() if n.startswith("dspex") for r in rs if r.demos
    }
    if len(compiled) != 1:
        problems.append("DSPEx compiles disagree on the demos (local and cluster must not)")
    return {
        "expected_correct": sum(want),
        "examples": plan.evalset_size,
        "problems": problems,
    }


def check_demos(where: str, demos: Sequence[tuple[str, str, bool]], calls: int) -> list[str]:
    problems = []
    boots = [d for d in demos if d[2]]
    if len(demos) != MAX_LABELED_DEMOS or len(boots) != MAX_BOOTSTRAPPED_DEMOS:
        problems.append(f"{where}: {len(demos)} demos, {len(boots)} bootstrapped")
    if any(MARK in q or a != RIGHT for q, a, _ in boots):
        problems.append(f"{where}: a bootstrapped demo is not a right answer: {boots}")
    if calls <= MAX_BOOTSTRAPPED_DEMOS:
        problems.append(f"{where}: compile made only {calls} LM calls")
    return problems


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    return summary([x / y for x, y in zip(a, b, strict=True)])


def figures(
    plan: Plan, lineup: Sequence[Contender], runs: dict[str, list[RunResult]]
) -> dict[str, Any]:
    rates = {c.name: [plan.evalset_size / r.eval_wall_s for r in runs[c.name]] for c in lineup}
    compiles = {
        c.name: [r.compile_wall_s for r in runs[c.name] if r.compile_wall_s is not None]
        for c in lineup
    }
    table: dict[str, Any] = {}
    for c in lineup:
        results = runs[c.name]
        table[c.name] = {
            "library": "dspy" if c.side == "dspy" else "dspex",
            "how": c.how,
            "examples_in_flight": c.concurrency,
            "workers": c.workers,
            "examples_per_s": summary(rates[c.name]),
            "ceiling_examples_per_s": c.ceiling,
            "ratio_to_ceiling": summary([rate / c.ceiling for rate in rates[c.name]]),
            "eval_wall_s": summary([r.eval_wall_s for r in results]),
            "lm_max_concurrent": summary([float(r.lm_max_concurrent) for r in results]),
            "client_cpu_ms_per_example": summary(
                [r.client_cpu_s / plan.evalset_size for r in results], 1000
            ),
            "compile_wall_s": summary(compiles[c.name]) if compiles[c.name] else None,
            "compile_lm_calls": (
                summary([float(r.compile_lm_calls or 0) for r in results])
                if compiles[c.name]
                else None
            ),
        }
    dspex_names = [c.name for c in lineup if c.side != "dspy"]
    ratios: dict[str, Any] = {"examples_per_s": {}, "compile_wall_s": {}}
    for name in dspex_names:
        for dspy_name in ("dspy_threads64", "dspy_default"):
            ratios["examples_per_s"][f"{name}/{dspy_name}"] = paired(rates[name], rates[dspy_name])
        ratios["compile_wall_s"][f"{name}/dspy"] = paired(compiles[name], compiles["dspy_default"])
    return {"contenders": table, "ratios": ratios}


# -- the whole benchmark -----------------------------------------------------------------------


async def run(plan: Plan, python: Path, bootstrap: str | None, workdir: Path) -> dict[str, Any]:
    data = Data.write(workdir, plan)
    side = DSPySide(python, workdir)  # imports DSPy while the rest gets ready
    broker: KafkaBroker | None = None
    try:
        if bootstrap is None:
            broker = await start_private_broker(workdir)
            bootstrap = broker.settings.bootstrap_servers
        hello = await asyncio.to_thread(side.request, "hello")
        lineup = contenders(int(hello["default_num_threads"]))
        ctx = Context(bootstrap, workdir, data, side)
        runs: dict[str, list[RunResult]] = {c.name: [] for c in lineup}
        for repeat in range(plan.repeats):
            shift = repeat % len(lineup)
            for contender in lineup[shift:] + lineup[:shift]:
                result = await run_contender(contender, ctx)
                runs[contender.name].append(result)
                compiled = (
                    f", compile {result.compile_wall_s:.2f} s ({result.compile_lm_calls} calls)"
                    if result.compile_wall_s is not None
                    else ""
                )
                print(
                    f"repeat {repeat + 1}/{plan.repeats} {contender.name}: "
                    f"{plan.evalset_size / result.eval_wall_s:.0f}/s of {contender.ceiling:.0f}/s, "
                    f"{result.correct:g} right, LM peak {result.lm_max_concurrent}{compiled}",
                    flush=True,
                )
    finally:
        side.close()
        if broker is not None:
            broker.stop()
    return {
        "dspy": hello,
        "lineup": lineup,
        "figures": figures(plan, lineup, runs),
        "checks": check(plan, data, runs),
        "bootstrapped_demos": {
            name: [question for question, _, bootstrapped in rs[0].demos if bootstrapped]
            for name, rs in runs.items()
            if rs[0].demos is not None
        },
        "failed_warm_ups": {name: sum(r.failed_warm_ups for r in rs) for name, rs in runs.items()},
        "cli_process_wall_s": {
            name: summary([r.extra["cli_process_wall_s"] for r in rs])
            for name, rs in runs.items()
            if rs[0].extra.get("cli_process_wall_s") is not None
        },
        "dspy_engines": sorted(
            {e for rs in runs.values() for r in rs for e in r.extra.get("engines") or []}
        ),
    }


def setup(plan: Plan, outcome: dict[str, Any], private_broker: bool) -> dict[str, Any]:
    hello = outcome["dspy"]
    return {
        "repeats": plan.repeats,
        "evalset_size": plan.evalset_size,
        "trainset_size": plan.trainset_size,
        "program": 'Predict("question -> answer"), default adapter (ChatAdapter) on both sides',
        "lm": (
            f"bench/lm_server.py, fixed {LATENCY_S * 1000:.0f} ms latency, a fresh process per "
            f'run; answers "{RIGHT}" in the ChatAdapter format, "{WRONG}" when the question '
            f"carries {MARK!r}; every label is {RIGHT!r}"
        ),
        "evalset": f"every {EVAL_WRONG_EVERY}th question marked",
        "trainset": f"only questions numbered {TRAIN_RIGHT} mod {TRAIN_RIGHT_EVERY} unmarked",
        "metric": "DSPy: dspy.evaluate.answer_exact_match; DSPEx: exact_match",
        "optimizer": {
            "max_bootstrapped_demos": MAX_BOOTSTRAPPED_DEMOS,
            "max_labeled_demos": MAX_LABELED_DEMOS,
            "max_rounds": MAX_ROUNDS,
            "dspex": "BootstrapFewShot(seed=0, batch_size=16 default)",
        },
        "contenders": {c.name: c.how for c in outcome["lineup"]},
        "dspy_default_num_threads": hello["default_num_threads"],
        "dspy_settings": (
            'dspy.LM("openai/bench-model", api_base=URL, api_key="unused", cache=False), '
            "dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False), "
            "Evaluate(display_progress=False), default ChatAdapter, default engine"
        ),
        "dspy_engines_used": outcome["dspy_engines"],
        "dspex_settings": (
            "LM client built from the topology (as a worker builds it), calls under "
            "dspex.context(cache=False); Evaluate(display_progress=False)"
        ),
        "worker_inflight_limit": CONCURRENCY,
        "partitions": PARTITIONS,
        "dspex_eval": (
            f"python -m dspex eval {PROGRAM_ID} eval.jsonl --metric {METRIC} --json "
            "--bootstrap-servers B --prefix P (defaults otherwise: max-outstanding 1000)"
        ),
        "timed": (
            "DSPy: the Evaluate call and the compile call in its process; DSPEx local: "
            "Evaluate.acall and acompile; dspex eval: its report's wall_time_s (from its "
            "Kafka producer connected to the last score)"
        ),
        "warm_up": (
            "not timed; DSPy and DSPEx local: the same evaluation on as many throw-away "
            "questions as examples in flight; cluster: group stable with every worker, then "
            f"rounds of {WARMUP_ROUND} throw-away questions until every worker scored"
        ),
        "order": "contenders rotated by one place each repeat; ratios paired per repeat",
        "ceiling": "examples in flight / LM latency",
        "client_cpu": (
            "CPU seconds during the timed evaluation of DSPy's process, of this process "
            "(DSPEx local) or of the workers (cluster; the dspex eval process not counted)"
        ),
        "broker": "private, started by the benchmark" if private_broker else "given",
    }


def main() -> None:
    args = parser(
        NAME,
        __doc__,
        quick=f"{QUICK.evalset_size} examples, {QUICK.repeats} repeat",
        broker=True,
    ).parse_args()
    # aiokafka logs a topic created a moment ago as an error; it is not one here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    plan = QUICK if args.quick else FULL
    try:
        python, venv_s = ensure_dspy_venv()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"error: making the DSPy virtualenv failed: {exc}")
    started = time.monotonic()
    # The machine may be shared: its load says how far to trust the figures.
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="dspex-bench-") as workdir:
        try:
            outcome = asyncio.run(run(plan, python, args.bootstrap_servers, Path(workdir)))
        except BenchmarkError as exc:
            sys.exit(f"error: {exc}")
    hello = outcome["dspy"]
    env = environment(
        load_at_start=load_at_start,
        dspy=hello["dspy"],
        litellm=hello["litellm"],
        kafka=BrokerSettings().kafka_version,
    )
    env["dspy_venv_made_s"] = None if venv_s is None else round(venv_s, 1)
    results = {
        **outcome["figures"],
        "checks": outcome["checks"],
        "bootstrapped_demos": outcome["bootstrapped_demos"],
        "cli_process_wall_s": outcome["cli_process_wall_s"],
        "failed_warm_ups": outcome["failed_warm_ups"],
    }
    record = result_record(
        NAME,
        quick=args.quick,
        started=started,
        setup=setup(plan, outcome, args.bootstrap_servers is None),
        results=results,
        env=env,
    )
    write_result(record, args.output)
    if outcome["checks"]["problems"]:
        sys.exit("error: " + "; ".join(outcome["checks"]["problems"]))


if __name__ == "__main__":
    main()
