"""Answering one inference request: the logic of the inference channel.

:class:`InferenceHandler` turns one consumed record into the records to
produce: a result (outputs or a typed error) and a telemetry event, or a dead
letter when the bytes are not a request at all. It never raises for a bad
record, so a worker never stops on one. It knows nothing of Kafka: the consumer
in :mod:`dspex.streams.worker.consumer` feeds it and produces what it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pydantic_core import to_jsonable_python

from dspex.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    DSPExError,
    ProgramNotFoundError,
    WireFormatError,
)
from dspex.programs.context import context
from dspex.programs.lm import LMCallEvent, observe_lm_calls
from dspex.programs.lm.base import LM
from dspex.programs.lm.types import TokenUsage
from dspex.streams.catalog import ProgramCatalog
from dspex.streams.metrics import WorkerMetrics
from dspex.streams.records import (
    DeadLetter,
    ErrorInfo,
    ErrorType,
    InferenceRequest,
    InferenceResult,
    TelemetryEvent,
    Usage,
    decode,
    encode,
)
from dspex.streams.topics import TopicNames
from dspex.topologies.settings import is_legal_topic_name

__all__ = ["InferenceHandler", "Origin", "Outgoing", "dead_letter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """Where a consumed record came from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Outgoing:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes


class InferenceHandler:
    """Run requests against the catalog's programs.

    Args:
        catalog: Registered programs.
        names: Topic names of the deployment.
        worker_id: Written into every result, event and dead letter.
        lm_for: The LM client for a program id (None: not served here).
        request_timeout_s: Longest a request may run, whatever its deadline.
        metrics: Where to count requests, latency, usage and dead letters.
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
    ) -> None:
        self.metrics = metrics
        self.catalog = catalog
        self.names = names
        self.worker_id = worker_id
        self.lm_for = lm_for
        self.request_timeout_s = request_timeout_s

    async def handle(
        self, key: bytes | None, value: bytes | None, origin: Origin
    ) -> list[Outgoing]:
        """The records to produce for one consumed record (never raises for bad input)."""
        try:
            request = decode(value or b"", expect=InferenceRequest)
        except WireFormatError as exc:
            dead = dead_letter(
                exc, key, value, origin, self.names, worker_id=self.worker_id, metrics=self.metrics
            )
            answer = self._answer_invalid(value, exc) if exc.reason == "invalid_record" else None
            return [dead] if answer is None else [dead, answer]
        calls: list[LMCallEvent] = []
        if self.metrics is not None:
            self.metrics.inflight.inc()
        try:
            with observe_lm_calls(calls.append):
                result = await self.run(request)
        finally:
            if self.metrics is not None:
                self.metrics.inflight.dec()
        if self.metrics is not None:
            self.metrics.observe_result(result)
            for call in calls:
                self.metrics.observe_lm_call(result.program_id, call)
        events = [self._request_event(result), *(self._call_event(result, c) for c in calls)]
        return [
            Outgoing(
                request.reply_to or self.names.inference_results, result.kafka_key(), encode(result)
            ),
            *(Outgoing(self.names.telemetry, e.kafka_key(), encode(e)) for e in events),
        ]

    def _request_event(self, result: InferenceResult) -> TelemetryEvent:
        return TelemetryEvent(
            kind="request",
            program_id=result.program_id,
            program_version=result.program_version,
            request_id=result.request_id,
            worker_id=self.worker_id,
            status=result.status,
            error_type=result.error.type if result.error else None,
            latency_ms=result.latency_ms,
            usage=result.usage,
        )

    def _call_event(self, result: InferenceResult, call: LMCallEvent) -> TelemetryEvent:
        return TelemetryEvent(
            kind="lm_call",
            program_id=result.program_id,
            program_version=result.program_version,
            request_id=result.request_id,
            worker_id=self.worker_id,
            status=call.status,
            error_type=cast(ErrorType | None, call.error_type),
            latency_ms=call.latency_s * 1000,
            usage=Usage.from_token_usage(call.usage),
            provider=call.provider,
            model=call.model,
            cached=call.cached,
        )

    def _answer_invalid(self, value: bytes | None, exc: WireFormatError) -> Outgoing | None:
        """An ``invalid_request`` result for a record that breaks the request schema.

        Its client waits for a result by request id; when the record still
        names a usable request id and program id, it gets one instead of
        waiting for its timeout. Otherwise only the dead letter remains.
        """
        try:
            raw = json.loads(value or b"")
            result = InferenceResult(
                request_id=raw["request_id"],
                program_id=raw["program_id"],
                program_version=None,
                status="error",
                error=ErrorInfo.from_exception(exc),
                latency_ms=0.0,
                worker_id=self.worker_id,
            )
        except (ValueError, TypeError, KeyError):  # pydantic's ValidationError is a ValueError
            return None
        reply_to = raw.get("reply_to")
        topic = (
            reply_to
            if isinstance(reply_to, str) and is_legal_topic_name(reply_to)
            else self.names.inference_results
        )
        if self.metrics is not None:
            self.metrics.observe_result(result)
        return Outgoing(topic, result.kafka_key(), encode(result))

    async def run(self, request: InferenceRequest) -> InferenceResult:
        """Run one request; every failure becomes an error result."""
        started = time.monotonic()
        version: int | None = None
        usage = TokenUsage()
        try:
            remaining = self._time_left(request)
            version, program = self.catalog.resolve(request.program_id, request.program_version)
            lm = self.lm_for(request.program_id)
            if lm is None:
                raise ProgramNotFoundError(
                    f"program {request.program_id!r} is not served by this worker",
                    program_id=request.program_id,
                )
            with context(lm=lm, request_id=request.request_id, rollout_id=request.rollout_id):
                try:
                    async with asyncio.timeout(remaining):
                        prediction = await program.acall(**request.inputs)
                except TimeoutError:
                    raise self._deadline_error(request, remaining, lm) from None
            usage = prediction.usage
            outputs = to_jsonable_python(dict(prediction.items()), fallback=str)
            return self._result(request, version, started, usage, outputs=outputs)
        except Exception as exc:  # every failure becomes a result; the worker goes on
            error = ErrorInfo.from_exception(exc)
            if error.type == "internal":  # a bug, not bad input: keep the traceback
                log.exception("request %s for %s failed", request.request_id, request.program_id)
            return self._result(request, version, started, usage, error=error)

    @staticmethod
    def _deadline_error(request: InferenceRequest, remaining: float, lm: LM) -> DSPExError:
        """Why a request ran out of time: its LM was down throughout, or it was slow."""
        if lm.breaker_state in ("open", "half_open"):
            # It waited for the LM to come back (the breaker holds calls while
            # the provider is down) and its deadline came first.
            return CircuitOpenError(
                f"request {request.request_id}: {lm.provider} {lm.model} stayed unavailable "
                f"(circuit {lm.breaker_state}) until its deadline, {remaining:.3g}s",
                provider=lm.provider,
                model=lm.model,
            )
        return DeadlineExceededError(
            f"request {request.request_id} did not finish within {remaining:.3g}s",
            timeout_s=remaining,
        )

    def _time_left(self, request: InferenceRequest) -> float:
        if request.deadline_ms is None:
            return self.request_timeout_s
        remaining = request.deadline_ms / 1000 - time.time()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"request {request.request_id} arrived {-remaining:.3g}s after its deadline",
                timeout_s=0.0,
            )
        return min(remaining, self.request_timeout_s)

    def _result(
        self,
        request: InferenceRequest,
        version: int | None,
        started: float,
        usage: TokenUsage,
        *,
        outputs: dict[str, object] | None = None,
        error: ErrorInfo | None = None,
    ) -> InferenceResult:
        return InferenceResult(
            request_id=request.request_id,
            program_id=request.program_id,
            program_version=version,
            status="ok" if error is None else "error",
            outputs=outputs,
            error=error,
            usage=Usage.from_token_usage(usage),
            latency_ms=(time.monotonic() - started) * 1000,
            worker_id=self.worker_id,
        )


def dead_letter(
    exc: WireFormatError,
    key: bytes | None,
    value: bytes | None,
    origin: Origin,
    names: TopicNames,
    *,
    worker_id: str,
    metrics: WorkerMetrics | None,
) -> Outgoing:
    """The dead letter for a consumed record that is not a record of its topic, logged
    and counted. Every channel sends its dead letters to the one dead-letter topic."""
    letter = DeadLetter.from_error(
        exc,
        topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        key=key,
        value=value,
        worker_id=worker_id,
    )
    log.warning(
        "dead letter from %s[%d]@%d: %s", origin.topic, origin.partition, origin.offset, exc
    )
    if metrics is not None:
        metrics.dead_letters.labels(letter.reason).inc()
    return Outgoing(names.inference_dlq, key, encode(letter))
