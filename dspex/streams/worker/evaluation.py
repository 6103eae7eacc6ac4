"""Scoring one example of an evaluation run: the logic of the evaluation channel.

:class:`EvaluationHandler` turns one ``dspex.eval.requests`` record into an
:class:`~dspex.streams.records.EvalScore` (or a dead letter when the bytes
are not a request). It runs the scorer ``Evaluate`` and ``LocalExecutor`` run
in-process — :func:`dspex.programs._scoring.score_one` — so a run scores the
same here and there. Like the inference handler it never raises for a bad record.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from pydantic_core import to_jsonable_python

from dspex.errors import (
    DeadlineExceededError,
    DSPExError,
    ProgramNotFoundError,
    WireFormatError,
)
from dspex.programs._scoring import ScoredOutput, failed_output, score_one
from dspex.programs.context import context
from dspex.programs.lm.base import LM
from dspex.programs.metrics import BUILTIN_METRICS, Metric, resolve_metric
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry
from dspex.streams.catalog import ProgramCatalog
from dspex.streams.metrics import WorkerMetrics
from dspex.streams.records import EvalRequest, EvalScore, Usage, decode, encode
from dspex.streams.topics import TopicNames
from dspex.streams.worker.inference import Origin, Outgoing, dead_letter

__all__ = ["EvaluationHandler"]

#: Candidate programs kept built, by spec: an optimizer's run sends one spec many times.
_BUILT_SPECS = 64


class EvaluationHandler:
    """Run and score evaluation requests.

    Args:
        catalog: Registered programs (for requests naming a version).
        names: Topic names of the deployment.
        worker_id: Written into every score.
        lm_for: The LM client for a program id (None: not served here).
        request_timeout_s: Longest one example may run.
        metrics: Where to count scored examples.
        metric_functions: Metrics known by name.
        registry: Custom module classes and tools candidate specs may name.
    """

    def __init__(
        self,
        *,
        catalog: ProgramCatalog,
        names: TopicNames,
        worker_id: str,
        lm_for: Callable[[str], LM | None],
        request_timeout_s: float,
        metrics: WorkerMetrics | None = None,
        metric_functions: Mapping[str, Metric] = BUILTIN_METRICS,
        registry: ProgramRegistry | None = None,
    ) -> None:
        self.catalog = catalog
        self.names = names
        self.worker_id = worker_id
        self.lm_for = lm_for
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics
        self.metric_functions = metric_functions
        self.registry = registry
        self._built: OrderedDict[str, Module] = OrderedDict()

    async def handle(
        self, key: bytes | None, value: bytes | None, origin: Origin
    ) -> list[Outgoing]:
        """The records to produce for one consumed record (never raises for bad input)."""
        try:
            request = decode(value or b"", expect=EvalRequest)
        except WireFormatError as exc:
            return [
                dead_letter(
                    exc,
                    key,
                    value,
                    origin,
                    self.names,
                    worker_id=self.worker_id,
                    metrics=self.metrics,
                )
            ]
        score = await self.run(request)
        if self.metrics is not None:
            self.metrics.observe_score(score)
        topic = request.reply_to or self.names.eval_scores
        return [Outgoing(topic, score.kafka_key(), encode(score))]

    async def run(self, request: EvalRequest) -> EvalScore:
        """Run and score one example; every failure becomes a score with ``error``."""
        started = time.monotonic()
        version: int | None = None
        try:
            version, program = self._program(request)
            metric = resolve_metric(request.metric, known=self.metric_functions)
            lm = self.lm_for(request.program_id)
            if lm is None:
                raise ProgramNotFoundError(
                    f"program {request.program_id!r} is not served by this worker",
                    program_id=request.program_id,
                )
            with context(lm=lm, rollout_id=request.rollout_id):
                try:
                    async with asyncio.timeout(self.request_timeout_s):
                        output = await score_one(
                            program,
                            request.to_example(),
                            metric,
                            index=request.index,
                            failure_score=request.failure_score,
                        )
                except TimeoutError:
                    raise DeadlineExceededError(
                        f"example {request.index} of run {request.run_id} did not finish "
                        f"within {self.request_timeout_s:.3g}s",
                        timeout_s=self.request_timeout_s,
                    ) from None
        except DSPExError as exc:
            output = failed_output(
                request.index,
                request.to_example(),
                exc,
                request.failure_score,
                latency_s=time.monotonic() - started,
            )
        return self._score(request, version, output)

    def _program(self, request: EvalRequest) -> tuple[int | None, Module]:
        if request.spec is None:
            return self.catalog.resolve(request.program_id, request.program_version)
        key = hashlib.sha256(request.spec.model_dump_json(by_alias=True).encode()).hexdigest()
        program = self._built.get(key)
        if program is None:
            program = request.spec.build(registry=self.registry)
            self._built[key] = program
            if len(self._built) > _BUILT_SPECS:
                self._built.popitem(last=False)
        else:
            self._built.move_to_end(key)
        return None, program

    def _score(self, request: EvalRequest, version: int | None, output: ScoredOutput) -> EvalScore:
        return EvalScore(
            run_id=request.run_id,
            run_size=request.run_size,
            index=request.index,
            program_id=request.program_id,
            program_version=version,
            score=output.score,
            outputs=(
                to_jsonable_python(output.outputs, fallback=str)
                if output.outputs is not None
                else None
            ),
            error=(
                EvalScore.error_of(output.error.type, output.error.message)
                if output.error is not None
                else None
            ),
            trace=[step.to_json() for step in output.trace],
            usage=Usage.from_token_usage(output.usage),
            latency_ms=output.latency_s * 1000,
            worker_id=self.worker_id,
        )
