"""Executors: where an optimizer's evaluations run.

An optimizer hands an executor a program, a batch of examples and a metric and
reads scored outputs back. :class:`LocalExecutor` runs them in this process
with bounded concurrency; ``dspex.streams.KafkaExecutor`` fans them out over
the evaluation channel to the workers. Optimizers are written once against
:class:`Executor`, and sort what they read by ``index``, so both give the
same result for the same seed and cache.

Example:
    >>> async with LocalExecutor(max_concurrency=8) as executor:   # doctest: +SKIP
    ...     summary = await executor.evaluate(program, devset, "exact_match")
    ...     print(summary.score, summary.errors)
"""

from __future__ import annotations

import asyncio
import statistics
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from dspex.errors import ConfigurationError
from dspex.programs._scoring import (
    ScoredOutput,
    ScoreError,
    check_inputs_marked,
    run_metric,
    score_one,
    standard_error,
)
from dspex.programs.context import context
from dspex.programs.example import Example
from dspex.programs.lm.types import TokenUsage
from dspex.programs.metrics import BUILTIN_METRICS, Metric, resolve_metric
from dspex.programs.module import Module

__all__ = [
    "EvalSummary",
    "Executor",
    "LocalExecutor",
    "ScoreError",
    "ScoredOutput",
    "run_metric",
]

# ScoredOutput, ScoreError and run_metric are defined with the one scorer every
# evaluation path shares (dspex.programs._scoring); executors re-export them
# because optimizers and executor implementations use them as this interface's types.


@dataclass(frozen=True)
class EvalSummary:
    """Every scored output of one batch, in batch order."""

    outputs: list[ScoredOutput]

    @property
    def score(self) -> float:
        """Mean score over all examples (failed ones count with the failure score)."""
        return statistics.fmean(o.score for o in self.outputs) if self.outputs else 0.0

    @property
    def standard_error(self) -> float:
        """Standard error of :attr:`score`."""
        return standard_error([o.score for o in self.outputs])

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outputs if o.error is not None)

    @property
    def usage(self) -> TokenUsage:
        return sum((o.usage for o in self.outputs), TokenUsage())

    def error_counts(self) -> dict[str, int]:
        """How many examples failed, per error type."""
        counts: dict[str, int] = {}
        for output in self.outputs:
            if output.error is not None:
                counts[output.error.type] = counts.get(output.error.type, 0) + 1
        return counts


class Executor(ABC):
    """Runs (program, example, metric) batches and yields scored outputs.

    Implementations yield one :class:`ScoredOutput` per example, in any
    order, and never raise for one example's failure (it becomes an output
    with ``error`` set). They raise for problems with the whole batch: an
    unknown metric name, a program that cannot be described, a broker that
    cannot be reached.
    """

    @abstractmethod
    def score(
        self,
        program: Module,
        examples: Sequence[Example],
        metric: Metric | str,
        *,
        rollout_id: str | None = None,
        failure_score: float = 0.0,
    ) -> AsyncIterator[ScoredOutput]:
        """Run ``program`` on each example and score it, yielding as results arrive.

        Args:
            program: The program to run (not modified).
            examples: Examples with their inputs marked.
            metric: A metric function or the name of a known one (``exact_match``).
            rollout_id: Passed to the LM so sampled calls are cached per rollout.
            failure_score: Score of an example whose program or metric raised.
        """

    async def evaluate(
        self,
        program: Module,
        examples: Sequence[Example],
        metric: Metric | str,
        *,
        rollout_id: str | None = None,
        failure_score: float = 0.0,
        on_output: Callable[[ScoredOutput], None] | None = None,
    ) -> EvalSummary:
        """Score the whole batch; outputs come back in batch order.

        Args:
            on_output: Called with each output as it arrives (progress displays).
        """
        outputs: list[ScoredOutput] = []
        async for output in self.score(
            program, examples, metric, rollout_id=rollout_id, failure_score=failure_score
        ):
            outputs.append(output)
            if on_output is not None:
                on_output(output)
        outputs.sort(key=lambda o: o.index)
        return EvalSummary(outputs)

    @property
    def max_in_flight(self) -> int | None:
        """Most examples this executor runs at once; None when it has no bound of its own."""
        return None

    async def start(self) -> None:
        """Acquire resources (connections); the default has none."""
        return None

    async def stop(self) -> None:
        """Release what :meth:`start` acquired."""
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class LocalExecutor(Executor):
    """Runs evaluations in this process, at most ``max_concurrency`` at once.

    LM, adapter and cache come from the caller's ``dspex.context``.

    Args:
        max_concurrency: Most examples in flight at once.
        metrics: Metrics known by name (default: the built-in ones).
    """

    def __init__(
        self, *, max_concurrency: int = 16, metrics: Mapping[str, Metric] = BUILTIN_METRICS
    ) -> None:
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.metrics = metrics

    @property
    def max_in_flight(self) -> int:
        return self.max_concurrency

    async def score(
        self,
        program: Module,
        examples: Sequence[Example],
        metric: Metric | str,
        *,
        rollout_id: str | None = None,
        failure_score: float = 0.0,
    ) -> AsyncIterator[ScoredOutput]:
        metric_fn = resolve_metric(metric, known=self.metrics)
        for index, example in enumerate(examples):
            check_inputs_marked(example, index)
        # A program's own bug (an exception that is not a DSPExError) is not a
        # score: it travels through the queue and is raised to the caller, who
        # would otherwise wait forever for the output of a task that died.
        queue: asyncio.Queue[ScoredOutput | Exception] = asyncio.Queue()
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def run(index: int, example: Example) -> None:
            try:
                async with semaphore:
                    output = await score_one(
                        program, example, metric_fn, index=index, failure_score=failure_score
                    )
            except Exception as exc:
                queue.put_nowait(exc)
                return
            queue.put_nowait(output)

        with context(rollout_id=rollout_id) if rollout_id is not None else nullcontext():
            tasks = [
                asyncio.create_task(run(index, example)) for index, example in enumerate(examples)
            ]
        try:
            for _ in range(len(tasks)):
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
