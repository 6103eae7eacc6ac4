"""Prompt optimizers on the intent task: zero-shot vs BootstrapFewShot vs MIPROv2.

Every stage starts from the same program, ``Predict(ClassifyIntent)`` with the
JSON adapter at temperature 0 (see intent.py), compiles it with one optimizer
on the train split (MIPROv2 and random search also score candidates on the
val split) and evaluates the result on the test split, which no optimizer
sees. Two more stages take MIPROv2's chosen program apart (its demos with the
original instruction; its instruction without demos) to show which half made
the difference. Each stage gets its own LM client, so its response cache,
token counts and wall time are its own. Every number goes to a JSON file;
running only some stages replaces those stages in the file and keeps the others.

    .venv/bin/dspex lm serve --port 8093 &     # the local SmolLM2 server
    .venv/bin/python examples/optimize_intent.py --base-url http://127.0.0.1:8093/v1
    .venv/bin/python examples/optimize_intent.py --stages zero_shot,mipro --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import add_lm_arguments, load
from intent import ClassifyIntent

import dspex
from dspex.optimizers import EvalSummary, Optimizer, Trial, TrialCallback
from dspex.programs.lm.types import TokenUsage

STAGES = (
    "zero_shot",
    "bootstrap",
    "mipro",
    "random_search",
    "mipro_demos_only",
    "mipro_instruction_only",
)
#: Stages that take apart the program MIPROv2 chose (from this run or the results file).
ABLATIONS = {
    "mipro_demos_only": "MIPROv2's demos with the original instruction",
    "mipro_instruction_only": "MIPROv2's instruction without demos",
}
DEFAULT_STAGES = ",".join(STAGES)
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "intent_optimization.json"
METRIC = "exact_match"  # on the one label field, `intent`


@dataclass(frozen=True)
class Budget:
    """Optimizer settings. Demo counts stay at 6 or fewer: more hurt this 2,048-token model."""

    bootstrap_max_bootstrapped_demos: int = 4
    bootstrap_max_labeled_demos: int = 6
    mipro_num_candidates: int = 6
    mipro_num_trials: int = 12
    mipro_minibatch_size: int = 24
    mipro_full_eval_steps: int = 4
    mipro_max_bootstrapped_demos: int = 3
    mipro_max_labeled_demos: int = 4
    mipro_init_temperature: float = 0.7
    random_search_candidates: int = 3
    random_search_max_bootstrapped_demos: int = 4
    random_search_max_labeled_demos: int = 6


@dataclass(frozen=True)
class Data:
    train: list[dspex.Example]
    val: list[dspex.Example]
    test: list[dspex.Example]


@dataclass
class Meter:
    """Token usage of one LM client since the meter was made."""

    lm: dspex.LM
    start: TokenUsage = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.lm.usage

    def read(self) -> dict[str, int]:
        now = self.lm.usage
        return {
            "lm_calls": now.calls - self.start.calls,
            "cached_calls": now.cached_calls - self.start.cached_calls,
            "prompt_tokens": now.prompt_tokens - self.start.prompt_tokens,
            "completion_tokens": now.completion_tokens - self.start.completion_tokens,
        }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stages",
        default=DEFAULT_STAGES,
        help=f"comma-separated stages out of {', '.join(STAGES)} [default: all]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds every optimizer")
    add_lm_arguments(parser)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N examples of each split"
    )
    parser.add_argument("--mipro-trials", type=int, default=Budget.mipro_num_trials)
    parser.add_argument("--mipro-candidates", type=int, default=Budget.mipro_num_candidates)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON file")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        parser.error(f"unknown stage(s) {unknown or stages}; choose from {', '.join(STAGES)}")
    args.stages = [s for s in STAGES if s in stages]  # always in the documented order
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def task_lm(args: argparse.Namespace) -> dspex.OpenAIChat:
    # One cache per stage, large enough for every call of a MIPROv2 run.
    return dspex.OpenAIChat(
        model=args.model,
        base_url=args.lm_url,
        temperature=0.0,
        max_tokens=32,
        cache=dspex.ResponseCache(max_entries=50_000),
    )


def prompt_lm(args: argparse.Namespace, budget: Budget) -> dspex.OpenAIChat:
    """The same local model, sampling, with room for a paragraph of instructions."""
    return dspex.OpenAIChat(
        model=args.model,
        base_url=args.lm_url,
        temperature=budget.mipro_init_temperature,
        max_tokens=256,
        cache=dspex.ResponseCache(max_entries=1_000),
    )


def print_trial(stage: str, started: float) -> TrialCallback:
    def show(trial: Trial) -> None:
        kind = "full val" if trial.full_eval else "minibatch"
        score = "failed" if trial.score is None else f"{trial.score:.3f}"
        params = {k: v for k, v in trial.params.items() if k not in ("pool", "demos")}
        print(
            f"  {stage} trial {trial.number:2d} [{kind:9s} n={trial.examples:3d}] "
            f"score {score}  {json.dumps(params)}  (+{time.monotonic() - started:.0f} s)",
            flush=True,
        )

    return show


def trial_record(trial: Trial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "score": trial.score,
        "examples": trial.examples,
        "full_eval": trial.full_eval,
        "params": {k: v for k, v in trial.params.items() if k != "pool"},
        "lm_calls": trial.usage.calls,
        "cached_calls": trial.usage.cached_calls,
        "error": trial.error,
    }


def describe_program(program: dspex.Module) -> dict[str, Any]:
    (_, predictor), *_ = program.named_predictors()
    return {
        "instructions": predictor.signature.instructions,
        "demo_count": len(predictor.demos),
        "demos": [demo.to_dict() for demo in predictor.demos],
    }


def test_record(summary: EvalSummary, wall_s: float, usage: dict[str, int]) -> dict[str, Any]:
    predicted = Counter(
        str(o.outputs["intent"]) if o.outputs is not None else "(error)" for o in summary.outputs
    )
    return {
        "n": len(summary.outputs),
        "accuracy": summary.score,
        "standard_error": summary.standard_error,
        "errors": summary.errors,
        "error_counts": summary.error_counts(),
        "wall_s": round(wall_s, 1),
        **usage,
        "predicted_labels": dict(predicted.most_common()),
        # Per-example scores in test order: paired comparisons between stages.
        "scores": [o.score for o in summary.outputs],
    }


async def compile_stage(
    stage: str,
    student: dspex.Predict,
    data: Data,
    args: argparse.Namespace,
    budget: Budget,
    executor: dspex.LocalExecutor,
    proposer: dspex.LM | None,
    earlier: dict[str, Any],
) -> tuple[dspex.Module, Optimizer | None, dict[str, Any]]:
    """The compiled program, the optimizer (None for zero-shot and ablations) and its settings."""
    started = time.monotonic()
    on_trial = print_trial(stage, started)
    optimizer: Optimizer | None
    program: dspex.Module
    if stage == "zero_shot":
        return student, None, {}
    if stage in ABLATIONS:
        what = {"from": stage_key("mipro", args.seed), "what": ABLATIONS[stage]}
        return ablation(stage, earlier, args.seed), None, what
    if stage == "bootstrap":
        settings: dict[str, Any] = {
            "max_bootstrapped_demos": budget.bootstrap_max_bootstrapped_demos,
            "max_labeled_demos": budget.bootstrap_max_labeled_demos,
        }
        optimizer = dspex.BootstrapFewShot(METRIC, executor=executor, seed=args.seed, **settings)
        program = await optimizer.acompile(student, trainset=data.train)
        return program, optimizer, settings
    if stage == "mipro":
        settings = {
            "num_candidates": args.mipro_candidates,
            "num_trials": args.mipro_trials,
            "minibatch_size": budget.mipro_minibatch_size,
            "minibatch_full_eval_steps": budget.mipro_full_eval_steps,
            "max_bootstrapped_demos": budget.mipro_max_bootstrapped_demos,
            "max_labeled_demos": budget.mipro_max_labeled_demos,
            "init_temperature": budget.mipro_init_temperature,
        }
        optimizer = dspex.MIPROv2(
            METRIC,
            prompt_model=proposer,
            executor=executor,
            seed=args.seed,
            on_trial=on_trial,
            **settings,
        )
        program = await optimizer.acompile(student, trainset=data.train, valset=data.val)
        return program, optimizer, settings
    settings = {
        "num_candidate_programs": budget.random_search_candidates,
        "max_bootstrapped_demos": budget.random_search_max_bootstrapped_demos,
        "max_labeled_demos": budget.random_search_max_labeled_demos,
    }
    optimizer = dspex.BootstrapFewShotWithRandomSearch(
        METRIC, executor=executor, seed=args.seed, on_trial=on_trial, **settings
    )
    program = await optimizer.acompile(student, trainset=data.train, valset=data.val)
    return program, optimizer, settings


def stage_key(stage: str, seed: int) -> str:
    """Where a stage's record goes in the results file: seed 0 plain, others tagged."""
    return stage if seed == 0 else f"{stage}@seed{seed}"


def key_order(key: str) -> tuple[int, int]:
    stage, _, seed = key.partition("@seed")
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), int(seed or 0))


def ablation(stage: str, earlier: dict[str, Any], seed: int) -> dspex.Predict:
    """Half of MIPROv2's chosen program: its demos, or its instruction."""
    source = stage_key("mipro", seed)
    if source not in earlier:
        raise dspex.errors.ConfigurationError(
            f"stage {stage} needs the mipro stage with seed {seed}: run it first "
            "(or in the same run)"
        )
    chosen = earlier[source]["program"]
    if stage == "mipro_demos_only":
        demos = [dspex.Example(demo).with_inputs("message") for demo in chosen["demos"]]
        return dspex.Predict(ClassifyIntent, adapter=dspex.JSONAdapter(), demos=demos)
    signature = ClassifyIntent.with_instructions(chosen["instructions"])
    return dspex.Predict(signature, adapter=dspex.JSONAdapter())


async def run_stage(
    stage: str, data: Data, args: argparse.Namespace, earlier: dict[str, Any]
) -> dict[str, Any]:
    budget = Budget()
    print(f"== {stage}", flush=True)
    async with AsyncExitStack() as stack:
        lm = await stack.enter_async_context(task_lm(args))
        proposer = (
            await stack.enter_async_context(prompt_lm(args, budget)) if stage == "mipro" else None
        )
        executor = dspex.LocalExecutor(max_concurrency=args.concurrency)
        student = dspex.Predict(ClassifyIntent, adapter=dspex.JSONAdapter())
        with dspex.context(lm=lm, adapter=dspex.JSONAdapter()):
            meter = Meter(lm)
            proposer_meter = Meter(proposer) if proposer is not None else None
            started = time.monotonic()
            program, optimizer, settings = await compile_stage(
                stage, student, data, args, budget, executor, proposer, earlier
            )
            compile_s = time.monotonic() - started
            compile_usage = meter.read()
            record: dict[str, Any] = {
                "optimizer": type(optimizer).__name__ if optimizer is not None else None,
                "seed": args.seed,
                "settings": settings,
                "compile": {"wall_s": round(compile_s, 1), **compile_usage},
            }
            if proposer_meter is not None:
                record["compile"]["prompt_model"] = proposer_meter.read()
            if optimizer is not None:
                print(
                    f"{stage}: compiled in {compile_s:.0f} s, "
                    f"{compile_usage['lm_calls']} LM calls "
                    f"(+{compile_usage['cached_calls']} from cache)",
                    flush=True,
                )
            meter = Meter(lm)
            started = time.monotonic()
            summary = await executor.evaluate(program, data.test, METRIC)
            test_s = time.monotonic() - started
    record["program"] = describe_program(program)
    record["test"] = test_record(summary, test_s, meter.read())
    if optimizer is not None:
        record["trials"] = [trial_record(t) for t in optimizer.trials]
    if isinstance(optimizer, dspex.MIPROv2):
        record["instruction_candidates"] = optimizer.instruction_candidates
        record["demo_candidate_sizes"] = [
            max((len(d) for d in demo_set.values()), default=0)
            for demo_set in optimizer.demo_candidates
        ]
    test = record["test"]
    print(
        f"{stage}: test accuracy {test['accuracy']:.3f} ± {test['standard_error']:.3f} "
        f"(n={test['n']}, errors={test['errors']}, {test_s:.0f} s, "
        f"{record['program']['demo_count']} demos)",
        flush=True,
    )
    return record


def paired(scores: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Difference to the baseline on the same examples, with its paired standard error."""
    differences = [a - b for a, b in zip(scores, baseline, strict=True)]
    error = statistics.stdev(differences) / math.sqrt(len(differences))
    return {
        "difference": statistics.fmean(differences),
        "standard_error": error,
        "gained": sum(1 for d in differences if d > 0),
        "lost": sum(1 for d in differences if d < 0),
    }


def read_stages(path: Path) -> dict[str, Any]:
    """The stages recorded in a results file ({} when there is none)."""
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("stages") or {})
    except (json.JSONDecodeError, AttributeError):
        print(f"warning: {path} is not a results file; it will be replaced", file=sys.stderr)
        return {}


def write_results(path: Path, args: argparse.Namespace, data: Data, new: dict[str, Any]) -> None:
    stages = read_stages(path)
    stages.update(new)
    stages = {key: stages[key] for key in sorted(stages, key=key_order)}
    # Zero-shot does not depend on the seed: any zero-shot record is the baseline.
    zero_shot = [key for key in stages if key.partition("@seed")[0] == "zero_shot"]
    baseline: list[float] = stages[zero_shot[0]]["test"]["scores"] if zero_shot else []
    for key, record in stages.items():
        scores = record["test"]["scores"]
        comparable = bool(baseline) and len(scores) == len(baseline) and key not in zero_shot
        record["vs_zero_shot"] = paired(scores, baseline) if comparable else None
    result = {
        "task": "intent classification (examples/data/intent_*.jsonl), metric exact_match",
        "model": args.model,
        "adapter": "JSONAdapter",
        "temperature": 0.0,
        "max_tokens": 32,
        "concurrency": args.concurrency,
        "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "stages": stages,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


async def check_lm(args: argparse.Namespace, example: dspex.Example) -> None:
    """Fail fast, before any optimizer runs, when the LM server is not there."""
    async with task_lm(args) as lm:
        predict = dspex.Predict(ClassifyIntent, adapter=dspex.JSONAdapter(), lm=lm)
        await predict.acall(**dict(example.inputs().items()))


async def main() -> int:
    args = arguments()
    data = Data(
        train=load("intent_train.jsonl", "message", limit=args.limit),
        val=load("intent_val.jsonl", "message", limit=args.limit),
        test=load("intent_test.jsonl", "message", limit=args.limit),
    )
    print(
        f"intent: train {len(data.train)}, val {len(data.val)}, test {len(data.test)}; "
        f"stages {', '.join(args.stages)}; seed {args.seed}; concurrency {args.concurrency}",
        flush=True,
    )
    try:
        await check_lm(args, data.train[0])
    except dspex.DSPExError as exc:
        print(f"error: the LM at {args.lm_url} does not answer: {exc}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    for stage in args.stages:
        try:
            earlier = {**read_stages(args.output), **results}
            results[stage_key(stage, args.seed)] = await run_stage(stage, data, args, earlier)
        except dspex.DSPExError as exc:
            print(f"error: stage {stage} failed: {exc}", file=sys.stderr)
            if results:
                write_results(args.output, args, data, results)
            return 1
        write_results(args.output, args, data, results)  # after every stage: nothing is lost
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
