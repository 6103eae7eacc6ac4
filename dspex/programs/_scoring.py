"""Scoring one example, and the standard error of many: shared by every evaluation path.

:func:`score_one` is what ``Evaluate``, ``LocalExecutor`` and the workers'
evaluation handler each run per example, so a program scores the same in a
notebook, in an optimizer and on the cluster. Its rules:

- the caller checks the whole batch first with :func:`check_inputs_marked`
  (a bad example is a problem of the batch, raised before anything runs);
- a :class:`~dspex.errors.DSPExError` from the program becomes an output with
  ``error`` set and the failure score; any other exception is a bug and
  propagates;
- the metric may be sync or async and must return a number or a bool
  (:func:`run_metric`); when it raises, the output gets ``metric_error`` and
  the failure score, unless the caller asks for the exception instead.

The standard error of the mean is computed here too, from the scores
(:func:`standard_error`) or from running moments
(:func:`standard_error_from_moments`) when the scores are not kept.

Example:
    >>> standard_error([1.0, 0.0, 1.0, 1.0])
    0.25
    >>> standard_error_from_moments(4, 0.75)
    0.25
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dspex.errors import ConfigurationError, DSPExError, error_type
from dspex.programs.example import Example, Prediction, TraceStep
from dspex.programs.lm.types import TokenUsage
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = [
    "METRIC_ERROR",
    "ScoreError",
    "ScoredOutput",
    "check_inputs_marked",
    "failed_output",
    "run_metric",
    "score_one",
    "standard_error",
    "standard_error_from_moments",
]

#: Error type of an example whose program ran but whose metric raised.
METRIC_ERROR = "metric_error"


@dataclass(frozen=True)
class ScoreError:
    """Why an example has no real score.

    Attributes:
        type: A stable code: an inference error type (``parse_error``,
            ``lm_unavailable``, ... see :func:`dspex.errors.error_type`) or
            ``metric_error`` when the program ran and the metric raised.
        message: One line, no secrets.
    """

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> ScoreError:
        """The error of an example whose program raised ``exc``."""
        return cls(error_type(exc), _one_line(exc))


@dataclass(frozen=True)
class ScoredOutput:
    """One example run through a program and scored.

    Attributes:
        index: The example's position in the batch given to the executor.
        example: The example itself.
        outputs: The program's output fields, or None when it failed.
        score: The metric's value as a float (True is 1.0), or the failure
            score when ``error`` is set.
        trace: Every predictor call of the run (for bootstrapping demos).
        usage: Tokens and cost of the run.
        latency_s: Wall-clock seconds of the program call.
        error: Why there is no real score, or None.
        prediction: The program's whole prediction (completions included),
            when it ran in this process; None when it failed or was scored
            elsewhere. Not compared: outputs scored locally and on the
            cluster are equal.
        exception: The program's exception behind ``error``, when it ran in
            this process. Not compared.
    """

    index: int
    example: Example
    outputs: dict[str, Any] | None
    score: float
    trace: tuple[TraceStep, ...] = ()
    usage: TokenUsage = field(default_factory=TokenUsage)
    latency_s: float = 0.0
    error: ScoreError | None = None
    prediction: Prediction | None = field(default=None, repr=False, compare=False)
    exception: DSPExError | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def check_inputs_marked(example: Any, index: int, *, what: str = "example") -> None:
    """Reject an item that is not an :class:`Example` with its inputs marked.

    Args:
        example: The item to check.
        index: Its position, named in the message.
        what: How the message names the collection's items (``"trainset example"``).

    Raises:
        ConfigurationError: Naming the item and how to fix it.
    """
    if not isinstance(example, Example):
        raise ConfigurationError(f"{what} {index} is a {type(example).__name__}, not an Example")
    if not example.input_keys:
        raise ConfigurationError(
            f"{what} {index} has no inputs marked: use Example(...).with_inputs(...)"
        )


async def run_metric(
    metric: Metric, example: Example, prediction: Prediction, trace: Any = None
) -> float:
    """Apply a sync or async metric and return its value as a float.

    Raises:
        ConfigurationError: The metric returned something that is not a number.
    """
    value = metric(example, prediction, trace)
    if inspect.isawaitable(value):
        value = await value
    if not isinstance(value, int | float):
        raise ConfigurationError(
            f"metric {getattr(metric, '__name__', type(metric).__name__)} returned "
            f"{type(value).__name__}, not a number or bool"
        )
    return float(value)


async def score_one(
    program: Module,
    example: Example,
    metric: Metric,
    *,
    index: int = 0,
    failure_score: float = 0.0,
    raise_metric_errors: bool = False,
) -> ScoredOutput:
    """Run and score one example; a program failure becomes an output with ``error`` set.

    Args:
        program: The program to run (not modified).
        example: The example; its inputs are the program's arguments.
        metric: A sync or async metric function.
        index: The example's position in its batch.
        failure_score: Score of an example whose program (or metric) raised.
        raise_metric_errors: Let an exception from the metric (or a value
            that is not a number) propagate instead of recording it as
            ``metric_error``: ``Evaluate`` stops on a broken metric, a batch
            executor must not.

    Raises:
        ConfigurationError: With ``raise_metric_errors``, the metric returned
            anything but a number or a bool.
    """
    started = time.monotonic()
    try:
        prediction = await program.acall(**dict(example.inputs().items()))
    except DSPExError as exc:
        return failed_output(
            index, example, exc, failure_score, latency_s=time.monotonic() - started
        )
    latency_s = time.monotonic() - started
    error = None
    if raise_metric_errors:
        score = await run_metric(metric, example, prediction, None)
    else:
        try:
            score = await run_metric(metric, example, prediction, None)
        except Exception as exc:  # a user's metric may raise anything; record it, never crash
            score = failure_score
            error = ScoreError(METRIC_ERROR, f"{type(exc).__name__}: {_one_line(exc)}")
    return ScoredOutput(
        index=index,
        example=example,
        outputs=dict(prediction.items()),
        score=score,
        trace=prediction.trace,
        usage=prediction.usage,
        latency_s=latency_s,
        error=error,
        prediction=prediction,
    )


def failed_output(
    index: int,
    example: Example,
    exc: DSPExError,
    failure_score: float,
    *,
    latency_s: float = 0.0,
) -> ScoredOutput:
    """The output of an example that could not run: ``exc`` recorded, the failure score."""
    return ScoredOutput(
        index=index,
        example=example,
        outputs=None,
        score=failure_score,
        latency_s=latency_s,
        error=ScoreError.of(exc),
        exception=exc,
    )


def standard_error(scores: Sequence[float]) -> float:
    """The standard error of the mean of ``scores`` (0.0 for fewer than two)."""
    if len(scores) < 2:
        return 0.0
    return statistics.stdev(scores) / math.sqrt(len(scores))


def standard_error_from_moments(count: int, squared_deviations: float) -> float:
    """The standard error of the mean from running moments, for when scores are not kept.

    Args:
        count: How many scores.
        squared_deviations: The sum of the squared deviations from their mean
            (Welford's ``M2``, or ``sum of squares - count * mean**2``; a
            rounding error below zero counts as zero).
    """
    if count < 2:
        return 0.0
    return math.sqrt(max(squared_deviations, 0.0) / (count - 1) / count)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
