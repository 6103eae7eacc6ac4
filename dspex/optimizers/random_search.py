"""BootstrapFewShotWithRandomSearch: try several demo sets (and knobs), keep the best.

The candidates are the demo sets of
:func:`~dspex.optimizers.bootstrap.bootstrap_demo_sets`: zero-shot, labelled
only, bootstrapped in trainset order, then ``num_candidate_programs``
bootstrapped from seeded shuffles with random sizes. Given a
:class:`~dspex.optimizers.variables.SearchSpace`, each candidate also gets a
random choice of its variables (temperature, module kind, model, ...), so the
search covers demos and knobs jointly. Every candidate is evaluated on the
valset (or trainset) as trial ``i``, whose params name the demo set (index
and fingerprint) and the variables chosen; the best trial's program is
rebuilt from its params and state.

Example:
    >>> space = SearchSpace([Variable.temperature("classify", [0.0, 0.7]),   # doctest: +SKIP
    ...                      Variable.module_kind("classify")])
    >>> optimizer = BootstrapFewShotWithRandomSearch(                          # doctest: +SKIP
    ...     "exact_match", num_candidate_programs=6, space=space, seed=1)
    >>> with dspex.context(lm=lm):                                             # doctest: +SKIP
    ...     compiled = await optimizer.acompile(program, trainset=train, valset=val)
    >>> [(t.number, t.params, t.score) for t in optimizer.trials]              # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from dspex.errors import ConfigurationError
from dspex.optimizers.base import Optimizer, Trial, TrialCallback
from dspex.optimizers.demos import bootstrap_demo_sets
from dspex.optimizers.executor import Executor
from dspex.optimizers.labeled import DemoSet, check_trainset, with_demos
from dspex.optimizers.variables import SearchSpace, digest, rebuild
from dspex.programs.example import Example
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = ["BootstrapFewShotWithRandomSearch", "demo_set_digest"]

#: Keys of a trial's params that the optimizer itself uses.
_RESERVED = frozenset({"demo_set", "demos"})


class BootstrapFewShotWithRandomSearch(Optimizer):
    """Evaluate bootstrapped demo sets, jointly with sampled variables, and keep the best.

    Args:
        metric: ``metric(example, prediction, trace=None)`` or a built-in name.
        num_candidate_programs: Shuffled bootstrapped sets, on top of the three
            fixed ones (zero-shot, labelled only, unshuffled bootstrap), as in DSPy.
        max_bootstrapped_demos: Most bootstrapped demos per predictor.
        max_labeled_demos: Most demos per predictor in all.
        max_rounds: Bootstrap attempts per example.
        metric_threshold: A bootstrap run passes at this score (None: truthy).
        space: Variables to sample for every candidate, or None for demos only.
        teacher_settings: ``dspex.context`` settings while the teacher runs.
        executor: Where runs and evaluations happen; default a LocalExecutor.
        seed: Seeds demo sets and variable samples.
        on_trial: Called with each finished trial.
        resume: Trials of an interrupted run; matching ones are not re-evaluated.

    Raises:
        ConfigurationError: A count is out of range, or a variable is named
            like a reserved param (``demo_set``, ``demos``).
    """

    def __init__(
        self,
        metric: Metric | str,
        *,
        num_candidate_programs: int = 8,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        metric_threshold: float | None = None,
        space: SearchSpace | None = None,
        teacher_settings: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
        seed: int = 0,
        on_trial: TrialCallback | None = None,
        resume: Sequence[Trial] = (),
    ) -> None:
        if num_candidate_programs < 0:
            raise ConfigurationError(
                f"num_candidate_programs must be >= 0, got {num_candidate_programs}"
            )
        clash = sorted(_RESERVED & set(space.names)) if space is not None else []
        if clash:
            raise ConfigurationError(f"variable names {clash} are reserved by random search")
        super().__init__(
            metric=metric, executor=executor, seed=seed, on_trial=on_trial, resume=resume
        )
        self.num_candidate_programs = num_candidate_programs
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.metric_threshold = metric_threshold
        self.space = space
        self.teacher_settings = dict(teacher_settings or {})

    async def acompile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
        teacher: Module | None = None,
    ) -> Module:
        """Return the best candidate, rebuilt from its trial.

        Args:
            student: The program (not modified).
            trainset: Labelled examples to bootstrap demos from.
            valset: Examples the candidates are scored on; default the trainset.
            teacher: Program whose runs give the demos (see ``bootstrap_demos``).

        Raises:
            ConfigurationError: Empty sets, examples without inputs, or space
                variables whose targets the program lacks.
            OptimizationError: Every bootstrap run or every candidate failed.
        """
        check_trainset(trainset)
        examples = list(valset) if valset else list(trainset)
        check_trainset(examples, name="valset" if valset else "trainset")
        if self.space is not None:
            self.space.validate(student)
        self.trials = []
        demo_sets = await bootstrap_demo_sets(
            student,
            trainset,
            self.metric,
            self.executor,
            num_sets=self.num_candidate_programs + 3,
            seed=self.seed,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            min_bootstrapped_demos=min(1, self.max_bootstrapped_demos),
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            metric_threshold=self.metric_threshold,
            teacher=teacher,
            teacher_settings=self.teacher_settings,
        )
        rng = random.Random(self.seed)
        for number, demo_set in enumerate(demo_sets):
            choice = self.space.sample(rng) if self.space is not None else {}
            candidate = with_demos(student, demo_set)
            if self.space is not None:
                candidate = self.space.apply(candidate, choice)
            params = {"demo_set": number, "demos": demo_set_digest(demo_set), **choice}
            await self.evaluate_trial(number, candidate, examples, params)
        best = self.best_trial()
        return rebuild(student, best.state, space=self.space, params=best.params)


def demo_set_digest(demo_set: DemoSet) -> str:
    """A fingerprint of a demo set: a resumed trial is reused only for the same demos."""
    return digest({name: [demo.to_json() for demo in demos] for name, demos in demo_set.items()})
