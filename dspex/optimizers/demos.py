"""Demos bootstrapped from a program's own successful runs.

A *teacher* (by default a copy of the student primed with labelled demos)
runs over the trainset through an executor. For every example whose score
passes the metric, each predictor call of the run (a
:class:`~dspex.programs.example.TraceStep`) becomes a demo for the predictor
that made it, with that call's inputs and outputs as fields, so a
ChainOfThought demo carries its ``reasoning``. Demos are picked in the order
of the seeded shuffle of the trainset until every predictor has
``max_bootstrapped_demos``; then each predictor is topped up to
``max_labeled_demos`` with labelled examples that gave no demo.

Examples are run in batches (concurrently, as the executor allows; the
teachers' shares of a batch at once) and bootstrapping stops after the batch
that fills every predictor: later examples cost nothing. The first batch has
``batch_size`` examples; each later one is sized from the pass rate so far to
fill what is missing in one more round trip, within the executor's bound.
The result depends only on the seed and the LM's answers, never on batch
size or completion order.

:func:`bootstrap_demos` makes one demo set (what ``BootstrapFewShot``
compiles with); :func:`bootstrap_demo_sets` makes the differently made sets
random search and MIPROv2 choose among.

Example:
    >>> demos = await bootstrap_demos(program, trainset, "exact_match", executor)  # doctest: +SKIP
    >>> compiled = with_demos(program, demos)                                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from dspex.errors import ConfigurationError, OptimizationError
from dspex.optimizers.executor import Executor, ScoredOutput
from dspex.optimizers.labeled import DemoSet, check_trainset, sample_labeled
from dspex.programs._scoring import METRIC_ERROR
from dspex.programs.context import context
from dspex.programs.example import Example
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = ["bootstrap_demo_sets", "bootstrap_demos", "check_counts"]


async def bootstrap_demos(
    program: Module,
    trainset: Sequence[Example],
    metric: Metric | str,
    executor: Executor,
    *,
    max_bootstrapped_demos: int = 4,
    max_labeled_demos: int = 16,
    max_rounds: int = 1,
    metric_threshold: float | None = None,
    seed: int = 0,
    teacher: Module | None = None,
    teacher_settings: Mapping[str, Any] | None = None,
    shuffle: bool = True,
    batch_size: int = 16,
) -> DemoSet:
    """Bootstrap demos for every predictor of ``program`` (which is not modified).

    Args:
        program: The student; its predictor paths key the result.
        trainset: Labelled examples with inputs marked.
        metric: Decides which runs are good enough to copy.
        executor: Runs the teacher.
        max_bootstrapped_demos: Most demos per predictor taken from runs.
        max_labeled_demos: Most demos per predictor in all (labelled fill).
        max_rounds: Attempts per example. Round ``r > 0`` re-runs the examples
            that have not passed yet on a copy of the teacher at temperature
            ``0.7 + 0.001 * r`` with rollout id ``bootstrap-{seed}-{r}``, so
            cached round-0 answers are not reused.
        metric_threshold: A run passes when its score is at least this;
            None means when it is truthy.
        seed: Seeds the shuffle, the teacher's labelled demos and the fill.
        teacher: The program to run; default a copy of ``program`` whose
            predictors show labelled demos: two such copies, each showing up
            to ``max_labeled_demos`` examples of one half of the trainset, and
            each example is run by the copy that does not show it.
        teacher_settings: ``dspex.context`` settings while the teacher runs.
        shuffle: Visit the trainset in a seeded random order (else as given).
        batch_size: Examples in the first batch; later ones are sized from the
            pass rate (see the module docstring).

    Returns:
        Demos per predictor path; every path of ``program`` is present.

    Raises:
        ConfigurationError: Bad arguments, or a teacher whose predictors differ.
        OptimizationError: Every run failed (the message names the error types,
            and says so when the metric raised on every example).
    """
    check_counts(max_bootstrapped_demos, max_labeled_demos, max_rounds, batch_size)
    check_trainset(trainset)
    names = [name for name, _ in program.named_predictors()]
    if not names:
        raise ConfigurationError(f"{type(program).__name__} has no predictors to give demos to")
    order = list(trainset)
    if shuffle:
        random.Random(seed).shuffle(order)
    rng = random.Random(seed)
    teachers = _teachers(program, teacher, order, max_labeled_demos, rng)
    run = _Bootstrap(
        names=names,
        teachers=teachers,
        metric=metric,
        executor=executor,
        max_demos=max_bootstrapped_demos,
        max_rounds=max_rounds,
        threshold=metric_threshold,
        seed=seed,
        settings=dict(teacher_settings or {}),
    )
    used: set[int] = set()
    if max_bootstrapped_demos > 0:
        start, size = 0, batch_size
        while start < len(order):
            positions = range(start, min(start + size, len(order)))
            used |= await run.batch(order, positions)
            if run.full():
                break
            start = positions.stop
            size = run.next_batch_size(batch_size, tried=start, bound=executor.max_in_flight)
        run.raise_if_nothing_worked()
    unused = [example for position, example in enumerate(order) if position not in used]
    demos: DemoSet = {}
    for name in names:
        bootstrapped = run.demos[name]
        fill = max(0, max_labeled_demos - len(bootstrapped))
        demos[name] = bootstrapped + sample_labeled(unused, fill, rng)
    return demos


@dataclass(frozen=True)
class _Teacher:
    """A teacher program and the trainset positions it must not run (its own demos)."""

    program: Module
    shows: frozenset[int]


def _teachers(
    program: Module,
    teacher: Module | None,
    order: Sequence[Example],
    max_labeled_demos: int,
    rng: random.Random,
) -> list[_Teacher]:
    if teacher is not None:
        student_names = [name for name, _ in program.named_predictors()]
        teacher_names = [name for name, _ in teacher.named_predictors()]
        if teacher_names != student_names:
            raise ConfigurationError(
                f"the teacher's predictors {teacher_names} differ from the student's "
                f"{student_names}: demos are matched by predictor path"
            )
        return [_Teacher(teacher.deepcopy(), frozenset())]
    base = program.deepcopy()
    base.reset()
    if max_labeled_demos == 0:
        return [_Teacher(base, frozenset())]
    # Two primed teachers whose labelled demos come from the two halves of the
    # trainset: an example one of them shows is run by the other, so no run can
    # just copy its own label (DSPy drops the example from the demos per call,
    # which a batch executor running one program cannot do).
    positions = list(range(len(order)))
    rng.shuffle(positions)
    half = (len(positions) + 1) // 2
    first = rng.sample(positions[:half], min(max_labeled_demos, half))
    second = rng.sample(positions[half:], min(max_labeled_demos, len(positions) - half))
    return [_primed(base, order, first), _primed(base, order, second)]


def _primed(base: Module, order: Sequence[Example], positions: Sequence[int]) -> _Teacher:
    teacher = base.deepcopy()
    for predictor in teacher.predictors():
        predictor.demos = [order[p] for p in positions]
    return _Teacher(teacher, frozenset(positions))


@dataclass
class _Bootstrap:
    """The running state of one bootstrap: demos so far and every final output."""

    names: list[str]
    teachers: list[_Teacher]
    metric: Metric | str
    executor: Executor
    max_demos: int
    max_rounds: int
    threshold: float | None
    seed: int
    settings: dict[str, Any]
    demos: DemoSet = field(init=False)
    #: The last output of every example run, by trainset position.
    outputs: dict[int, ScoredOutput] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.demos = {name: [] for name in self.names}

    def full(self) -> bool:
        return all(len(demos) >= self.max_demos for demos in self.demos.values())

    def next_batch_size(self, batch_size: int, *, tried: int, bound: int | None) -> int:
        """How many examples to run next: enough, at the pass rate so far, to fill every predictor.

        At least ``batch_size``; at most the executor's bound (four batches
        without one). The rate is estimated with one pass and one failure
        added (so no pass yet is not a rate of zero), and twice the estimate
        is run: a round trip saved is worth a few more calls.
        """
        need = max(self.max_demos - len(demos) for demos in self.demos.values())
        passes = sum(1 for output in self.outputs.values() if self.passed(output))
        rate = (passes + 1) / (tried + 2)
        wanted = math.ceil(2 * need / rate)
        return max(batch_size, min(wanted, bound if bound is not None else 4 * batch_size))

    def passed(self, output: ScoredOutput) -> bool:
        if not output.ok:
            return False
        if self.threshold is None:
            return bool(output.score)
        return output.score >= self.threshold

    async def batch(self, order: Sequence[Example], positions: Sequence[int]) -> set[int]:
        """Run ``positions`` for up to ``max_rounds`` rounds; return those that gave demos."""
        pending = list(positions)
        for round_index in range(self.max_rounds):
            if not pending:
                break
            await self._round(order, pending, round_index)
            pending = [p for p in pending if not self.passed(self.outputs[p])]
        used: set[int] = set()
        # Trainset order, not completion order: the same seed picks the same demos.
        for position in positions:
            output = self.outputs[position]
            if not self.passed(output):
                continue
            for step in output.trace:
                demos = self.demos.get(step.predictor)
                if demos is None or len(demos) >= self.max_demos:
                    continue
                fields = {**step.inputs, **step.outputs}
                demos.append(Example(fields).with_inputs(*step.inputs))
                used.add(position)
        return used

    async def _round(self, order: Sequence[Example], pending: list[int], round_index: int) -> None:
        groups: list[tuple[Module, list[int]]] = []
        remaining = list(pending)
        for index, teacher in enumerate(self.teachers):
            last = index == len(self.teachers) - 1
            mine = [p for p in remaining if last or p not in teacher.shows]
            remaining = [p for p in remaining if p not in mine]
            if mine:
                groups.append((_for_round(teacher.program, round_index), mine))
        rollout_id = f"bootstrap-{self.seed}-{round_index}" if round_index > 0 else None

        async def run(program: Module, group: list[int]) -> None:
            summary = await self.executor.evaluate(
                program, [order[p] for p in group], self.metric, rollout_id=rollout_id
            )
            for output in summary.outputs:
                self.outputs[group[output.index]] = output

        # The groups of a round at once (one LM round trip, not one per
        # teacher) while together they stay within the executor's bound; each
        # group is bounded on its own, so beyond it they take turns.
        bound = self.executor.max_in_flight
        with context(**self.settings) if self.settings else nullcontext():
            if bound is None or len(pending) <= bound:
                tasks = [asyncio.create_task(run(program, group)) for program, group in groups]
                try:
                    await asyncio.gather(*tasks)  # the first failure as it is, not a group
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            else:
                for program, group in groups:
                    await run(program, group)

    def raise_if_nothing_worked(self) -> None:
        outputs = [self.outputs[p] for p in sorted(self.outputs)]
        if not outputs or any(output.ok for output in outputs):
            return
        counts: dict[str, int] = {}
        for output in outputs:
            if output.error is not None:
                counts[output.error.type] = counts.get(output.error.type, 0) + 1
        first = next(o.error.message for o in outputs if o.error is not None)
        if set(counts) == {METRIC_ERROR}:
            raise OptimizationError(
                f"the metric raised on every one of {len(outputs)} trainset examples "
                f"({METRIC_ERROR}; first: {first}); does the trainset carry the labels "
                "the metric needs? Keep the label fields next to the inputs marked "
                "with with_inputs(...)"
            )
        summary = ", ".join(f"{kind}: {count}" for kind, count in sorted(counts.items()))
        raise OptimizationError(
            f"every one of {len(outputs)} trainset examples failed while bootstrapping "
            f"({summary}); first: {first}"
        )


def _for_round(teacher: Module, round_index: int) -> Module:
    """The teacher itself in round 0; a copy sampling at a temperature later."""
    if round_index == 0:
        return teacher
    copy = teacher.deepcopy()
    for predictor in copy.predictors():
        predictor.lm_kwargs["temperature"] = 0.7 + 0.001 * round_index
    return copy


def check_counts(
    max_bootstrapped_demos: int, max_labeled_demos: int, max_rounds: int, batch_size: int
) -> None:
    """Reject demo and round counts out of range.

    Raises:
        ConfigurationError: Naming the first count out of range.
    """
    for name, value, least in (
        ("max_bootstrapped_demos", max_bootstrapped_demos, 0),
        ("max_labeled_demos", max_labeled_demos, 0),
        ("max_rounds", max_rounds, 1),
        ("batch_size", batch_size, 1),
    ):
        if value < least:
            raise ConfigurationError(f"{name} must be >= {least}, got {value}")


async def bootstrap_demo_sets(
    program: Module,
    trainset: Sequence[Example],
    metric: Metric | str,
    executor: Executor,
    *,
    num_sets: int,
    seed: int = 0,
    max_bootstrapped_demos: int = 4,
    max_labeled_demos: int = 16,
    min_bootstrapped_demos: int = 1,
    max_rounds: int = 1,
    metric_threshold: float | None = None,
    teacher: Module | None = None,
    teacher_settings: Mapping[str, Any] | None = None,
    batch_size: int = 16,
) -> list[DemoSet]:
    """``num_sets`` differently made demo sets, the candidates of random search and MIPROv2.

    The layout, set by set (each a dict of predictor path to demos, every
    path present):

    * set 0: zero-shot, no demos at all;
    * set 1: labelled only, ``max_labeled_demos`` sampled with ``seed + 1``;
    * set 2: bootstrapped from the trainset in its given (unshuffled) order,
      ``max_bootstrapped_demos``, topped up with labelled demos, seed ``seed + 2``;
    * set ``i >= 3``: bootstrapped from the trainset shuffled with seed
      ``seed + i``, with a bootstrapped count drawn from
      ``[min_bootstrapped_demos, max_bootstrapped_demos]`` by ``Random(seed + i)``.

    Sets are made one after another; the same seed gives the same sets.

    Args:
        program: The student; its predictor paths key every set.
        trainset: Labelled examples with inputs marked.
        metric: Decides which runs are good enough to copy.
        executor: Runs the teacher.
        num_sets: How many sets (at least 1).
        seed: Base seed; set ``i`` uses ``seed + i``.
        max_bootstrapped_demos: Bootstrapped demos of set 2, and the most of later sets.
        max_labeled_demos: Most demos per predictor in every set.
        min_bootstrapped_demos: Fewest bootstrapped demos of sets 3 and later.
        max_rounds: As in :func:`bootstrap_demos`.
        metric_threshold: As in :func:`bootstrap_demos`.
        teacher: As in :func:`bootstrap_demos`.
        teacher_settings: As in :func:`bootstrap_demos`.
        batch_size: As in :func:`bootstrap_demos`.

    Returns:
        The sets, in the order above.

    Raises:
        ConfigurationError: Bad arguments.
        OptimizationError: Every run of a bootstrapped set failed.
    """
    if num_sets < 1:
        raise ConfigurationError(f"num_sets must be >= 1, got {num_sets}")
    if not 0 <= min_bootstrapped_demos <= max_bootstrapped_demos:
        raise ConfigurationError(
            f"need 0 <= min_bootstrapped_demos ({min_bootstrapped_demos}) <= "
            f"max_bootstrapped_demos ({max_bootstrapped_demos})"
        )
    check_counts(max_bootstrapped_demos, max_labeled_demos, max_rounds, batch_size)
    check_trainset(trainset)
    names = [name for name, _ in program.named_predictors()]
    sets: list[DemoSet] = [{name: [] for name in names}]
    if num_sets >= 2:
        rng = random.Random(seed + 1)
        sets.append({name: sample_labeled(trainset, max_labeled_demos, rng) for name in names})
    for index in range(2, num_sets):
        set_seed = seed + index
        size = max_bootstrapped_demos
        if index >= 3:
            size = random.Random(set_seed).randint(min_bootstrapped_demos, max_bootstrapped_demos)
        sets.append(
            await bootstrap_demos(
                program,
                trainset,
                metric,
                executor,
                max_bootstrapped_demos=size,
                max_labeled_demos=max_labeled_demos,
                max_rounds=max_rounds,
                metric_threshold=metric_threshold,
                seed=set_seed,
                teacher=teacher,
                teacher_settings=teacher_settings,
                shuffle=index >= 3,
                batch_size=batch_size,
            )
        )
    return sets
