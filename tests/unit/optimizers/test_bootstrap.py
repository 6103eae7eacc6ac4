"""bootstrap_demos' selection rules against an in-memory executor (no LM).

The executor plays the teacher: an example passes when its word is in a
chosen set, and it yields outputs in reverse order, so a selection that
depended on completion order would show.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

import dspex
from dspex.errors import ConfigurationError, OptimizationError
from dspex.optimizers.bootstrap import (
    BootstrapFewShot,
    bootstrap_demo_sets,
    bootstrap_demos,
    with_demos,
)
from dspex.optimizers.executor import Executor, ScoredOutput, ScoreError
from dspex.programs.example import TraceStep
from dspex.programs.metrics import Metric

WORDS = [f"w{i:02d}" for i in range(20)]
TRAIN = [dspex.Example(word=w, answer=w.upper()).with_inputs("word") for w in WORDS]


@dataclass
class Call:
    shown: set[str]  # words the teacher shows as demos
    run: list[str]  # words it was asked to run
    rollout_id: str | None
    temperatures: set[object]


@dataclass
class FakeExecutor(Executor):
    passing: set[str] = field(default_factory=lambda: set(WORDS))
    error: str | None = None
    calls: list[Call] = field(default_factory=list)
    bound: int | None = None
    #: Evaluations running at once: now, and the most seen.
    active: int = 0
    most_active: int = 0

    @property
    def max_in_flight(self) -> int | None:
        return self.bound

    async def score(
        self,
        program: dspex.Module,
        examples: Sequence[dspex.Example],
        metric: Metric | str,
        *,
        rollout_id: str | None = None,
        failure_score: float = 0.0,
    ) -> AsyncIterator[ScoredOutput]:
        predictors = program.named_predictors()
        self.calls.append(
            Call(
                shown={d.word for _, p in predictors for d in p.demos},
                run=[e.word for e in examples],
                rollout_id=rollout_id,
                temperatures={p.lm_kwargs.get("temperature") for _, p in predictors},
            )
        )
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await asyncio.sleep(0)  # an evaluation started beside this one would be running now
        self.active -= 1
        for index in reversed(range(len(examples))):
            word = examples[index].word
            trace = tuple(
                TraceStep(name, "Sig", {"word": word}, {"answer": f"{word}!{name}"})
                for name, _ in predictors
            )
            error = ScoreError(self.error, "boom") if self.error else None
            yield ScoredOutput(
                index=index,
                example=examples[index],
                outputs=None if error else {"answer": word},
                score=1.0 if word in self.passing and not error else 0.0,
                trace=trace,
                error=error,
            )


class Pipeline(dspex.Module):
    def __init__(self) -> None:
        self.draft = dspex.Predict("word -> answer")
        self.polish = dspex.ChainOfThought("word -> answer")


async def test_demos_are_the_first_passing_examples_in_shuffle_order() -> None:
    passing = set(WORDS[::3])
    executor = FakeExecutor(passing=passing)
    demos = await bootstrap_demos(
        Pipeline(),
        TRAIN,
        "exact_match",
        executor,
        max_bootstrapped_demos=3,
        max_labeled_demos=3,
        seed=4,
        shuffle=False,
        batch_size=5,
    )
    assert list(demos) == ["draft", "polish.predict"]
    for path, chosen in demos.items():
        assert [d.word for d in chosen] == ["w00", "w03", "w06"]
        assert [d.answer for d in chosen] == [f"{w}!{path}" for w in ("w00", "w03", "w06")]
    # Batches of five stop once both predictors are full (after w06, in batch 2).
    assert sorted(w for call in executor.calls for w in call.run) == WORDS[:10]


async def test_a_teacher_never_runs_an_example_it_shows() -> None:
    executor = FakeExecutor(passing=set())
    await bootstrap_demos(
        dspex.Predict("word -> answer"),
        TRAIN,
        "exact_match",
        executor,
        max_labeled_demos=16,
        max_bootstrapped_demos=4,
    )
    assert sorted(w for call in executor.calls for w in call.run) == WORDS
    for call in executor.calls:
        assert call.shown
        assert call.shown.isdisjoint(call.run)


async def test_later_rounds_use_a_temperature_and_a_rollout_per_round() -> None:
    executor = FakeExecutor(passing=set())
    await bootstrap_demos(
        dspex.Predict("word -> answer"),
        TRAIN[:4],
        "exact_match",
        executor,
        max_rounds=3,
        seed=9,
        max_labeled_demos=0,
    )
    assert [(c.rollout_id, c.temperatures) for c in executor.calls] == [
        (None, {None}),
        ("bootstrap-9-1", {0.701}),
        ("bootstrap-9-2", {0.702}),
    ]


async def test_seed_decides_the_demos_whatever_the_batch_size() -> None:
    async def words(seed: int, batch_size: int) -> list[str]:
        demos = await bootstrap_demos(
            dspex.Predict("word -> answer"),
            TRAIN,
            "exact_match",
            FakeExecutor(passing=set(WORDS[1::2])),
            seed=seed,
            batch_size=batch_size,
            max_bootstrapped_demos=4,
            max_labeled_demos=6,
        )
        return [d.word for d in demos["self"]]

    assert await words(1, 3) == await words(1, 16) == await words(1, 3)
    assert await words(1, 3) != await words(2, 3)


async def test_every_example_failing_is_an_optimization_error() -> None:
    program = dspex.Predict("word -> answer")
    with pytest.raises(OptimizationError, match="every one of 20 trainset examples failed"):
        await bootstrap_demos(program, TRAIN, "exact_match", FakeExecutor(error="lm_error"))
    with pytest.raises(OptimizationError, match="metric raised on every one of 20"):
        await bootstrap_demos(program, TRAIN, "exact_match", FakeExecutor(error="metric_error"))
    # Runs that merely fail the metric are not an error: labelled demos remain.
    demos = await bootstrap_demos(
        program, TRAIN, "exact_match", FakeExecutor(passing=set()), max_labeled_demos=2
    )
    assert all(d in TRAIN for d in demos["self"])
    assert len(demos["self"]) == 2


async def test_no_bootstrapping_runs_nothing() -> None:
    executor = FakeExecutor()
    demos = await bootstrap_demos(
        dspex.Predict("word -> answer"),
        TRAIN,
        "exact_match",
        executor,
        max_bootstrapped_demos=0,
        max_labeled_demos=3,
    )
    assert executor.calls == []
    assert len(demos["self"]) == 3


async def test_demo_sets_layout() -> None:
    sets = await bootstrap_demo_sets(
        Pipeline(),
        TRAIN,
        "exact_match",
        FakeExecutor(),
        num_sets=8,
        seed=0,
        max_bootstrapped_demos=5,
        max_labeled_demos=5,
        min_bootstrapped_demos=2,
    )
    assert sets[0] == {"draft": [], "polish.predict": []}
    assert all(d in TRAIN for d in sets[1]["draft"])
    assert [d.word for d in sets[2]["draft"]] == WORDS[:5]
    for demo_set in sets[3:]:
        boot = [d for d in demo_set["draft"] if "!" in d.answer]
        assert 2 <= len(boot) <= 5
        assert len(demo_set["draft"]) == 5
    assert len({tuple(d.word for d in s["draft"]) for s in sets[3:]}) > 1


def test_arguments_are_checked() -> None:
    for kwargs in (
        {"max_bootstrapped_demos": -1},
        {"max_labeled_demos": -1},
        {"max_rounds": 0},
        {"batch_size": 0},
    ):
        with pytest.raises(ConfigurationError):
            BootstrapFewShot("exact_match", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="does not have"):
        with_demos(dspex.Predict("word -> answer"), {"draft": []})


async def test_demo_set_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="min_bootstrapped_demos"):
        await bootstrap_demo_sets(
            Pipeline(),
            TRAIN,
            "exact_match",
            FakeExecutor(),
            num_sets=4,
            min_bootstrapped_demos=5,
            max_bootstrapped_demos=4,
        )
    with pytest.raises(ConfigurationError, match="no predictors"):
        await bootstrap_demos(dspex.Module(), TRAIN, "exact_match", FakeExecutor())


async def test_the_teachers_run_their_shares_of_a_batch_at_once() -> None:
    executor = FakeExecutor(passing=set())
    await bootstrap_demos(dspex.Predict("word -> answer"), TRAIN, "exact_match", executor)
    assert executor.most_active == 2


async def test_teachers_take_turns_when_a_batch_exceeds_the_executors_bound() -> None:
    executor = FakeExecutor(passing=set(), bound=3)  # batches of 8, 8 and 4: each above it
    await bootstrap_demos(
        dspex.Predict("word -> answer"), TRAIN, "exact_match", executor, batch_size=8
    )
    assert executor.most_active == 1


LONG = [dspex.Example(word=f"v{i:02d}", answer="x").with_inputs("word") for i in range(60)]


@pytest.mark.parametrize(
    ("bound", "tried"),
    [
        # Batch 1: 8 examples, one pass; 3 missing at an estimated rate of 2/10,
        # so batch 2 runs twice 15: 30 more, which hold the missing three.
        (None, 38),
        # The bound cuts batch 2 to 12 (two passes); batch 3 runs 11 for the last.
        (12, 31),
    ],
)
async def test_a_low_pass_rate_makes_the_next_batch_big_enough_to_finish(
    bound: int | None, tried: int
) -> None:
    passing = {example.word for example in LONG[3::8]}  # v03, v11, v19, v27, v35, ...
    executor = FakeExecutor(passing=passing, bound=bound)
    demos = await bootstrap_demos(
        dspex.Predict("word -> answer"),
        LONG,
        "exact_match",
        executor,
        max_bootstrapped_demos=4,
        max_labeled_demos=4,
        shuffle=False,
        batch_size=8,
    )
    assert [d.word for d in demos["self"]] == ["v03", "v11", "v19", "v27"]
    ran = sorted(word for call in executor.calls for word in call.run)
    assert ran == [example.word for example in LONG[:tried]]
