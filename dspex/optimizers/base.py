"""The optimizer base: compile a program against a metric, trial by trial.

Every optimizer takes ``(program, trainset, valset)`` and a metric and returns
a new program; the student passed in is never modified. Search-based
optimizers evaluate candidates as numbered *trials* through an
:class:`~dspex.optimizers.executor.Executor`. Each finished trial is passed to
``on_trial`` (the optimizer service publishes it, ``dspex optimize`` prints
it), and trials recorded by an earlier, interrupted run can be handed back as
``resume``: a trial whose number and parameters match is not evaluated again.

Example:
    >>> optimizer = BootstrapFewShot(metric=exact_match, seed=7)   # doctest: +SKIP
    >>> compiled = optimizer.compile(program, trainset=trainset)    # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from dspex.errors import OptimizationError
from dspex.optimizers.executor import EvalSummary, Executor, LocalExecutor
from dspex.programs._sync import run_sync
from dspex.programs.example import Example
from dspex.programs.lm.types import TokenUsage
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = ["Optimizer", "Trial", "TrialCallback"]


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate of a search.

    Attributes:
        number: 0-based position in the search; the same seed gives the same
            candidate for the same number.
        params: JSON data naming the candidate's choices (demo set index,
            instruction index, temperature, ...). Resuming checks it matches.
        score: Mean metric value on the examples evaluated, or None if the
            trial failed.
        examples: How many examples the score is over.
        state: ``Module.dump_state()`` of the candidate, so it can be rebuilt.
        usage: Tokens and cost the evaluation spent.
        error: Why the trial failed (every example errored), or None.
        full_eval: Whether the score is over the whole validation set (rather
            than a minibatch).
    """

    number: int
    params: dict[str, Any]
    score: float | None
    examples: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    usage: TokenUsage = field(default_factory=TokenUsage)
    error: str | None = None
    full_eval: bool = True

    @property
    def failed(self) -> bool:
        return self.score is None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": self.params,
            "score": self.score,
            "examples": self.examples,
            "state": self.state,
            "usage": self.usage.model_dump(),
            "error": self.error,
            "full_eval": self.full_eval,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trial:
        return cls(
            number=int(data["number"]),
            params=dict(data.get("params") or {}),
            score=None if data.get("score") is None else float(data["score"]),
            examples=int(data.get("examples") or 0),
            state=dict(data.get("state") or {}),
            usage=TokenUsage.model_validate(data.get("usage") or {}),
            error=data.get("error"),
            full_eval=bool(data.get("full_eval", True)),
        )


#: Called with every finished trial, in the order they finish.
TrialCallback = Callable[[Trial], None]

_P = ParamSpec("_P")
_R = TypeVar("_R", covariant=True)
_T = TypeVar("_T")


class _Compiles(Protocol[_P, _R]):
    def acompile(self, *args: _P.args, **kwargs: _P.kwargs) -> Coroutine[Any, Any, _R]: ...


class _SyncCompile:
    """``Optimizer.compile``: the synchronous wrapper of ``acompile``, written once.

    One descriptor serves every optimizer: ``optimizer.compile`` takes exactly
    the arguments of that optimizer's own ``acompile`` (a ``teacher=``, an
    optional trainset) and returns its result type, for type checkers (the
    protocol match reads them off ``acompile``) and for ``inspect.signature``.
    """

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> _SyncCompile: ...

    @overload
    def __get__(self, instance: _Compiles[_P, _T], owner: type[Any]) -> Callable[_P, _T]: ...

    def __get__(self, instance: Any, owner: type[Any]) -> Any:
        if instance is None:
            return self
        acompile = instance.acompile

        @functools.wraps(acompile)
        def compile(*args: Any, **kwargs: Any) -> Any:
            return run_sync(acompile(*args, **kwargs))

        compile.__name__ = "compile"
        compile.__qualname__ = f"{type(instance).__qualname__}.compile"
        compile.__doc__ = "Synchronous wrapper of :meth:`acompile`."
        return compile


class Optimizer(ABC):
    """Base of the optimizers: metric, executor, seed, trial bookkeeping.

    Args:
        metric: ``metric(example, prediction, trace=None) -> float | bool``, or
            the name of a built-in one (``"exact_match"``); a name is needed
            when the executor runs on the cluster.
        executor: Where evaluations run; default: a :class:`LocalExecutor`
            using the LM of the caller's ``dspex.context``.
        seed: Seeds every random choice; the same seed and cache reproduce a run.
        on_trial: Called with each finished trial.
        resume: Trials of an interrupted run of the same optimizer and seed;
            those whose parameters match are reused instead of evaluated.
    """

    def __init__(
        self,
        *,
        metric: Metric | str,
        executor: Executor | None = None,
        seed: int = 0,
        on_trial: TrialCallback | None = None,
        resume: Sequence[Trial] = (),
    ) -> None:
        self.metric = metric
        self.executor = executor or LocalExecutor()
        self.seed = seed
        self.on_trial = on_trial
        self.resume = {trial.number: trial for trial in resume}
        #: Every trial of the last compile, in trial-number order.
        self.trials: list[Trial] = []

    @abstractmethod
    async def acompile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
    ) -> Module:
        """Return an optimized copy of ``student``.

        Raises:
            OptimizationError: Nothing meaningful can be produced (every
                candidate failed, the metric raised on every example).
            ConfigurationError: Bad arguments (empty trainset, examples without
                inputs marked).
        """

    #: ``compile(...)``: synchronous wrapper of :meth:`acompile`, with its arguments.
    compile = _SyncCompile()

    async def evaluate_trial(
        self,
        number: int,
        candidate: Module,
        examples: Sequence[Example],
        params: Mapping[str, Any],
        *,
        full_eval: bool = True,
    ) -> Trial:
        """Score ``candidate`` as trial ``number``, or reuse the resumed trial.

        A trial where every example failed is recorded as failed (score None)
        rather than scored zero; it is reported and the search goes on.
        """
        params = _json_ready(params)
        previous = self.resume.get(number)
        if previous is not None and previous.params == params:
            trial = previous
        else:
            summary = await self.executor.evaluate(candidate, examples, self.metric)
            trial = trial_from_summary(
                number, params, summary, candidate.dump_state(), full_eval=full_eval
            )
        self.trials.append(trial)
        if self.on_trial is not None:
            self.on_trial(trial)
        return trial

    def best_trial(self, *, full_eval_only: bool = False) -> Trial:
        """The highest-scoring successful trial (the earliest among equals).

        Raises:
            OptimizationError: Every trial failed.
        """
        scored = [
            t for t in self.trials if t.score is not None and (t.full_eval or not full_eval_only)
        ]
        if not scored:
            reasons = sorted({t.error or "no score" for t in self.trials})
            raise OptimizationError(
                f"every one of {len(self.trials)} candidates failed: {'; '.join(reasons)[:500]}"
            )
        return max(scored, key=lambda t: (t.score, -t.number))


def trial_from_summary(
    number: int,
    params: Mapping[str, Any],
    summary: EvalSummary,
    state: Mapping[str, Any],
    *,
    full_eval: bool = True,
) -> Trial:
    """A trial from an evaluation: failed when every example errored."""
    error = None
    score: float | None = summary.score
    if summary.outputs and summary.errors == len(summary.outputs):
        counts = summary.error_counts()
        first = next(o.error.message for o in summary.outputs if o.error is not None)
        error = (
            f"all {len(summary.outputs)} examples failed "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
            f"first: {first}"
        )
        score = None
    return Trial(
        number=number,
        params=dict(params),
        score=score,
        examples=len(summary.outputs),
        state=dict(state),
        usage=summary.usage,
        error=error,
        full_eval=full_eval,
    )


def _json_ready(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as they read back from JSON, so resumed trials compare equal."""
    loaded: dict[str, Any] = json.loads(json.dumps(dict(params), default=str))
    return loaded
