"""LabeledFewShot: put labelled training examples on every predictor as demos.

The simplest optimizer: no LM call, no metric. Each predictor of a copy of the
student gets ``k`` examples of the trainset (inputs and labels) as demos,
sampled with the optimizer's seed, so the same seed gives the same demos.

Example:
    >>> optimizer = LabeledFewShot(k=4, seed=1)                     # doctest: +SKIP
    >>> compiled = optimizer.compile(program, trainset=trainset)    # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TypeVar

from dspex.errors import ConfigurationError
from dspex.optimizers.base import Optimizer, TrialCallback
from dspex.optimizers.executor import Executor
from dspex.programs._scoring import check_inputs_marked
from dspex.programs.example import Example
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = ["DemoSet", "LabeledFewShot", "check_trainset", "sample_labeled", "with_demos"]

_M = TypeVar("_M", bound=Module)

#: Demos per predictor path (``Module.named_predictors()`` names).
DemoSet = dict[str, list[Example]]


class LabeledFewShot(Optimizer):
    """Attach ``k`` labelled trainset examples as demos to every predictor.

    The metric is never used (nothing is evaluated); it is accepted so every
    optimizer can be built the same way, and defaults to ``"exact_match"``
    for the base class.

    Args:
        k: Most demos per predictor (fewer when the trainset is smaller).
        seed: Seeds the sampling; each predictor gets its own sample.
        sample: Sample ``k`` examples at random; False takes the first ``k``.
        metric: Unused; see above.
        executor: Unused; accepted for uniformity with other optimizers.
        on_trial: Unused (LabeledFewShot runs no trials).

    Raises:
        ConfigurationError: ``k`` is negative.

    Example:
        >>> from dspex.programs.predict import Predict
        >>> trainset = [Example(q=str(i), a=str(i * 2)).with_inputs("q") for i in range(5)]
        >>> compiled = LabeledFewShot(k=2).compile(Predict("q -> a"), trainset=trainset)
        >>> len(compiled.demos)
        2
    """

    def __init__(
        self,
        k: int = 16,
        *,
        seed: int = 0,
        sample: bool = True,
        metric: Metric | str | None = None,
        executor: Executor | None = None,
        on_trial: TrialCallback | None = None,
    ) -> None:
        if k < 0:
            raise ConfigurationError(f"k must be >= 0, got {k}")
        super().__init__(
            metric=metric if metric is not None else "exact_match",
            executor=executor,
            seed=seed,
            on_trial=on_trial,
        )
        self.k = k
        self.sample = sample

    async def acompile(
        self,
        student: _M,
        *,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
    ) -> _M:
        """Return a copy of ``student`` whose predictors carry labelled demos.

        Args:
            student: The program (not modified).
            trainset: Labelled examples with their inputs marked.
            valset: Unused.

        Returns:
            The copy; existing demos are replaced.

        Raises:
            ConfigurationError: The trainset is empty or an example has no
                inputs marked.
        """
        check_trainset(trainset)
        compiled = student.deepcopy()
        rng = random.Random(self.seed) if self.sample else None
        for predictor in compiled.predictors():
            predictor.demos = sample_labeled(trainset, self.k, rng)
        return compiled


def with_demos(program: _M, demos: Mapping[str, Sequence[Example]]) -> _M:
    """A copy of ``program`` whose predictors carry ``demos`` (others keep theirs).

    Raises:
        ConfigurationError: ``demos`` names a predictor the program does not have.
    """
    copy = program.deepcopy()
    predictors = dict(copy.named_predictors())
    unknown = sorted(set(demos) - set(predictors))
    if unknown:
        raise ConfigurationError(
            f"demos for predictors {unknown} that {type(program).__name__} does not have "
            f"(it has {sorted(predictors)})"
        )
    for name, demo_list in demos.items():
        predictors[name].demos = list(demo_list)
    return copy


def sample_labeled(trainset: Sequence[Example], k: int, rng: random.Random | None) -> list[Example]:
    """Up to ``k`` examples of ``trainset``: a sample drawn with ``rng``, or the first ``k``.

    Example:
        >>> data = [Example(x=i).with_inputs("x") for i in range(4)]
        >>> [e.x for e in sample_labeled(data, 2, None)]
        [0, 1]
    """
    count = min(k, len(trainset))
    if rng is None:
        return list(trainset[:count])
    return rng.sample(list(trainset), count)


def check_trainset(trainset: Sequence[Example], *, name: str = "trainset") -> None:
    """Reject an empty trainset and examples without inputs marked.

    Raises:
        ConfigurationError: Naming the first offending example.
    """
    if not trainset:
        raise ConfigurationError(f"the {name} is empty: an optimizer needs examples")
    for index, example in enumerate(trainset):
        check_inputs_marked(example, index, what=f"{name} example")
