"""BootstrapFewShot: demos taken from the program's own successful runs.

The optimizer runs :func:`~dspex.optimizers.demos.bootstrap_demos` once
(see :mod:`dspex.optimizers.demos` for how the teacher runs and which runs
become demos) and returns a copy of the student carrying the demos.

Example:
    >>> optimizer = BootstrapFewShot("exact_match", max_bootstrapped_demos=4)  # doctest: +SKIP
    >>> with dspex.context(lm=lm):                                             # doctest: +SKIP
    ...     compiled = await optimizer.acompile(program, trainset=trainset)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from dspex.optimizers.base import Optimizer, TrialCallback
from dspex.optimizers.demos import bootstrap_demo_sets, bootstrap_demos, check_counts
from dspex.optimizers.executor import Executor
from dspex.optimizers.labeled import DemoCheck, DemoSet, check_demos, with_demos
from dspex.programs.example import Example
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = [
    "BootstrapFewShot",
    "DemoSet",
    "bootstrap_demo_sets",
    "bootstrap_demos",
    "with_demos",
]

_M = TypeVar("_M", bound=Module)


class BootstrapFewShot(Optimizer):
    """Compile a program with demos bootstrapped from its successful runs.

    Args:
        metric: ``metric(example, prediction, trace=None)`` or a built-in name.
        executor: Where the teacher runs; default a LocalExecutor.
        seed: Seeds the trainset shuffle and the labelled samples.
        max_bootstrapped_demos: Most demos per predictor taken from runs.
        max_labeled_demos: Most demos per predictor in all; the rest are
            labelled trainset examples.
        max_rounds: Attempts per example; later rounds sample at a temperature.
        metric_threshold: A run passes when its score is at least this;
            None means when the score is truthy (non-zero).
        teacher_settings: ``dspex.context`` settings (``lm=``, ``lm_kwargs=``,
            ...) in force while the teacher runs; they reach in-process
            executors only.
        batch_size: Examples in the first batch run at once; later batches
            are sized from the pass rate so far to fill every predictor in one
            more round trip (within the executor's ``max_in_flight``).
        on_trial: Unused (BootstrapFewShot runs no trials).
        keep_worse: Return the compiled program even when its demos lowered the
            valset score (see :mod:`dspex.optimizers.labeled`; a warning is
            logged either way).

    Raises:
        ConfigurationError: A count is out of range.
    """

    def __init__(
        self,
        metric: Metric | str,
        *,
        executor: Executor | None = None,
        seed: int = 0,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        metric_threshold: float | None = None,
        teacher_settings: Mapping[str, Any] | None = None,
        batch_size: int = 16,
        on_trial: TrialCallback | None = None,
        keep_worse: bool = False,
    ) -> None:
        check_counts(max_bootstrapped_demos, max_labeled_demos, max_rounds, batch_size)
        super().__init__(metric=metric, executor=executor, seed=seed, on_trial=on_trial)
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.metric_threshold = metric_threshold
        self.teacher_settings = dict(teacher_settings or {})
        self.batch_size = batch_size
        self.keep_worse = keep_worse
        #: The demos of the last compile, per predictor path.
        self.demos: DemoSet = {}
        #: The valset check of the last compile (None without a valset).
        self.check: DemoCheck | None = None

    async def acompile(
        self,
        student: _M,
        *,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
        teacher: Module | None = None,
    ) -> _M:
        """Return a copy of ``student`` with bootstrapped and labelled demos.

        Args:
            student: The program (not modified).
            trainset: Labelled examples with inputs marked.
            valset: Examples to check the demos on: when they lower its score,
                the student is returned (``keep_worse``), with a warning.
            teacher: The program whose runs give the demos; same predictors as
                the student. Default: a copy of the student primed with
                labelled demos.

        Returns:
            The compiled copy.

        Raises:
            ConfigurationError: Empty trainset, examples without inputs
                marked, or a teacher whose predictors differ from the student's.
            OptimizationError: Every teacher run failed, e.g. the metric raised
                on every example because the trainset lacks its labels.
        """
        self.demos = await bootstrap_demos(
            student,
            trainset,
            self.metric,
            self.executor,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            metric_threshold=self.metric_threshold,
            seed=self.seed,
            teacher=teacher,
            teacher_settings=self.teacher_settings,
            batch_size=self.batch_size,
        )
        compiled, self.check = await check_demos(
            self,
            student,
            with_demos(student, self.demos),
            valset,
            keep_worse=self.keep_worse,
        )
        return compiled
