"""LabeledFewShot: put labelled training examples on every predictor as demos.

The simplest optimizer: no LM call (unless a valset is given), no metric. Each
predictor of a copy of the student gets ``k`` examples of the trainset (inputs
and labels) as demos, sampled with the optimizer's seed, so the same seed gives
the same demos.

Demos can hurt: on a small model, examples in the prompt may pull answers
towards their labels, or crowd out the instructions. Given a valset, every
demo optimizer (this one, BootstrapFewShot, KNNFewShot) scores the student
and the compiled program on it, warns with both scores when the demos lowered
it, and then returns the student (``keep_worse=True``: the compiled one);
:attr:`check` says what happened.

Example:
    >>> optimizer = LabeledFewShot(k=4, seed=1)                     # doctest: +SKIP
    >>> compiled = optimizer.compile(program, trainset=trainset)    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from dspex.errors import ConfigurationError
from dspex.optimizers.base import Optimizer, TrialCallback
from dspex.optimizers.executor import Executor
from dspex.programs._scoring import check_inputs_marked
from dspex.programs.example import Example
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = [
    "DemoCheck",
    "DemoSet",
    "LabeledFewShot",
    "check_demos",
    "check_trainset",
    "sample_labeled",
    "with_demos",
]

logger = logging.getLogger("dspex.optimizers")

_M = TypeVar("_M", bound=Module)

#: Demos per predictor path (``Module.named_predictors()`` names).
DemoSet = dict[str, list[Example]]


class LabeledFewShot(Optimizer):
    """Attach ``k`` labelled trainset examples as demos to every predictor.

    The metric is used only to check the demos on a valset (see the module);
    it defaults to ``"exact_match"``.

    Args:
        k: Most demos per predictor (fewer when the trainset is smaller).
        seed: Seeds the sampling; each predictor gets its own sample.
        sample: Sample ``k`` examples at random; False takes the first ``k``.
        metric: Scores the valset check; see above.
        executor: Where the valset check runs.
        on_trial: Unused (LabeledFewShot runs no trials).
        keep_worse: Return the compiled program even when its demos lowered the
            valset score (a warning is logged either way).

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
        keep_worse: bool = False,
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
        self.keep_worse = keep_worse
        #: The valset check of the last compile (None without a valset).
        self.check: DemoCheck | None = None

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
            valset: Examples to check the demos on (see the module).

        Returns:
            The copy; existing demos are replaced. The student when the demos
            lowered the valset score and ``keep_worse`` is False.

        Raises:
            ConfigurationError: The trainset is empty or an example has no
                inputs marked.
        """
        check_trainset(trainset)
        compiled = student.deepcopy()
        rng = random.Random(self.seed) if self.sample else None
        for predictor in compiled.predictors():
            predictor.demos = sample_labeled(trainset, self.k, rng)
        returned, self.check = await check_demos(
            self, student, compiled, valset, keep_worse=self.keep_worse
        )
        return returned


@dataclass(frozen=True)
class DemoCheck:
    """A compiled program's demos judged on the valset against the student without them."""

    student_score: float
    compiled_score: float
    examples: int
    #: Which program the optimizer returned: ``"compiled"`` or ``"student"``.
    returned: str

    @property
    def hurt(self) -> bool:
        """The demos lowered the valset score."""
        return self.compiled_score < self.student_score


async def check_demos(
    optimizer: Optimizer,
    student: _M,
    compiled: _M,
    valset: Sequence[Example] | None,
    *,
    keep_worse: bool,
) -> tuple[_M, DemoCheck | None]:
    """The compiled program unless its demos lowered the valset score (then the student).

    Without a valset nothing is checked. Both programs are scored with the
    optimizer's metric and executor; when the demos hurt, a warning gives both
    scores, and the student is returned (the compiled one with ``keep_worse``).
    """
    if not valset:
        return compiled, None
    check_trainset(valset, name="valset")
    before = await optimizer.executor.evaluate(student, valset, optimizer.metric)
    after = await optimizer.executor.evaluate(compiled, valset, optimizer.metric)
    hurt = after.score < before.score
    returned = "compiled" if keep_worse or not hurt else "student"
    check = DemoCheck(before.score, after.score, len(valset), returned)
    if hurt:
        logger.warning(
            "%s: the demos lowered the valset score from %.3f to %.3f (%d examples); "
            "returning the %s%s",
            type(optimizer).__name__,
            before.score,
            after.score,
            len(valset),
            "compiled program anyway (keep_worse)" if keep_worse else "student without them",
            "" if keep_worse else " (keep_worse=True returns the compiled one)",
        )
    return (compiled if returned == "compiled" else student.deepcopy()), check


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
