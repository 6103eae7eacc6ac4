"""Evaluate: score a program on a dataset with bounded concurrency.

Example:
    >>> evaluate = Evaluate(devset=devset, metric=exact_match)  # doctest: +SKIP
    >>> result = evaluate(program)                               # doctest: +SKIP
    >>> print(result.score, result.errors)                       # doctest: +SKIP
    >>> print(result.table(10))                                  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from dspex.errors import ConfigurationError, DSPExError
from dspex.programs._progress import StatusLine
from dspex.programs._scoring import check_inputs_marked, score_one, standard_error
from dspex.programs._sync import run_sync
from dspex.programs.example import Example, Prediction
from dspex.programs.lm.types import TokenUsage
from dspex.programs.metrics import Metric
from dspex.programs.module import Module

__all__ = ["Evaluate", "EvaluationResult", "ExampleResult"]


@dataclass(frozen=True)
class ExampleResult:
    """One example's outcome: its prediction and score, or the error it raised."""

    example: Example
    prediction: Prediction | None
    score: float
    error: DSPExError | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of a whole evaluation."""

    results: list[ExampleResult]
    usage: TokenUsage = field(default_factory=TokenUsage)

    @property
    def score(self) -> float:
        """Mean metric value over all examples (errors count as the failure score)."""
        return statistics.fmean(r.score for r in self.results) if self.results else 0.0

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.error is not None)

    @property
    def standard_error(self) -> float:
        """Standard error of :attr:`score`."""
        return standard_error([r.score for r in self.results])

    def table(self, limit: int | None = None, *, width: int = 40) -> str:
        """A plain-text table of examples, outputs and scores."""
        rows = self.results if limit is None else self.results[:limit]
        header = ["#", "inputs", "labels", "outputs", "score"]
        body = []
        for index, result in enumerate(rows, start=1):
            example = result.example
            inputs = example.inputs() if example.input_keys else example
            outputs = (
                f"error: {type(result.error).__name__}"
                if result.error is not None
                else _short(dict(result.prediction.items()) if result.prediction else {}, width)
            )
            labels = example.labels() if example.input_keys else {}
            body.append(
                [
                    str(index),
                    _short(dict(inputs.items()), width),
                    _short(dict(labels.items()), width),
                    outputs,
                    f"{result.score:.3g}",
                ]
            )
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = [
            " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            for row in [header, *body]
        ]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        lines.append(
            f"score {self.score:.4f} ± {self.standard_error:.4f} over {len(self.results)} "
            f"examples, {self.errors} errors"
        )
        return "\n".join(lines)


def _short(values: dict[str, Any], width: int) -> str:
    text = ", ".join(f"{k}={v!s}" for k, v in values.items()).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


class Evaluate:
    """Run a program over a dataset and score it with a metric.

    Args:
        devset: Examples with inputs marked (``Example(...).with_inputs(...)``).
        metric: ``metric(example, prediction, trace=None) -> float | bool``, sync or
            async. A metric that raises, or returns anything but a number or
            a bool, stops the evaluation with its error.
        max_concurrency: Most examples in flight at once.
        display_progress: Show a progress line on stderr.
        max_errors: Stop with the error after this many examples raised; None: never.
        failure_score: Score of an example whose program call raised.

    Raises:
        ConfigurationError: ``max_concurrency`` is below 1, or a devset item is
            not an Example with its inputs marked.
    """

    def __init__(
        self,
        *,
        devset: Sequence[Example],
        metric: Metric,
        max_concurrency: int = 16,
        display_progress: bool = True,
        max_errors: int | None = None,
        failure_score: float = 0.0,
        progress_stream: TextIO | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        for index, example in enumerate(devset):
            check_inputs_marked(example, index, what="devset example")
        self.devset = list(devset)
        self.metric = metric
        self.max_concurrency = max_concurrency
        self.display_progress = display_progress
        self.max_errors = max_errors
        self.failure_score = failure_score
        self.progress_stream = progress_stream or sys.stderr

    async def acall(self, program: Module) -> EvaluationResult:
        """Evaluate ``program`` on the devset."""
        semaphore = asyncio.Semaphore(self.max_concurrency)
        results: list[ExampleResult | None] = [None] * len(self.devset)
        done = errors = 0
        total_score = 0.0
        usage = TokenUsage()
        status = StatusLine(self.progress_stream) if self.display_progress else None

        async def run(index: int, example: Example) -> None:
            nonlocal done, errors, total_score, usage
            async with semaphore:
                result = await self._one(program, example)
            results[index] = result
            done += 1
            total_score += result.score
            if result.prediction is not None:
                usage = usage + result.prediction.usage
            if result.error is not None:
                errors += 1
                if self.max_errors is not None and errors > self.max_errors:
                    raise result.error
            if status is not None:
                status(
                    f"Evaluate {done}/{len(self.devset)}  mean {total_score / done:.3f}  "
                    f"errors {errors}"
                )

        try:
            async with asyncio.TaskGroup() as group:
                for index, example in enumerate(self.devset):
                    group.create_task(run(index, example))
        except* DSPExError as group_error:
            raise group_error.exceptions[0] from None
        finally:
            if status is not None:
                status.__exit__(None, None, None)
        return EvaluationResult(results=[r for r in results if r is not None], usage=usage)

    def __call__(self, program: Module) -> EvaluationResult:
        """Synchronous wrapper of :meth:`acall`."""
        return run_sync(self.acall(program))

    async def _one(self, program: Module, example: Example) -> ExampleResult:
        output = await score_one(
            program,
            example,
            self.metric,
            failure_score=self.failure_score,
            raise_metric_errors=True,
        )
        return ExampleResult(example, output.prediction, output.score, output.exception)
