"""The evaluation channel: examples to score, scored outputs, and running reports."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, model_validator

from dspex.programs._scoring import standard_error_from_moments
from dspex.programs.example import Example, TraceStep
from dspex.programs.lm.types import TokenUsage
from dspex.programs.state import ProgramSpec
from dspex.streams.records._base import (
    MAX_ERROR_MESSAGE_CHARS,
    EpochMillis,
    Identifier,
    TopicName,
    Usage,
    WireModel,
    WireRecord,
    now_ms,
    shorten,
)

__all__ = ["EvalReport", "EvalRequest", "EvalScore", "ScoreErrorInfo"]


class EvalRequest(WireRecord):
    """One example of an evaluation run: run this program on it and score it.

    Produced by an executor (``KafkaExecutor``, ``dspex eval``) on
    ``dspex.eval.requests`` keyed by program id, spread over every partition so
    all workers share a run. The program is either a registered version
    (``program_version``, or the active one when null) or a candidate given
    whole in ``spec``. The worker that takes it answers with one
    :class:`EvalScore`.

    Example:
        >>> EvalRequest(run_id="r1", run_size=1, index=0, program_id="qa",
        ...     example={"question": "2+2?", "answer": "4"}, input_keys=["question"],
        ...     metric="exact_match").kafka_key()
        b'qa'
    """

    schema_: Literal["dspex.eval.request/v1"] = Field(
        "dspex.eval.request/v1", alias="schema", description="Record kind and version."
    )
    run_id: Identifier = Field(description="The evaluation run this example belongs to.")
    run_size: int = Field(ge=1, description="How many examples the run has in all.")
    index: int = Field(ge=0, description="The example's position in the run, from 0.")
    program_id: Identifier = Field(description="The program evaluated.")
    program_version: int | None = Field(
        None, ge=1, description="A registered version; null: the active one (unless `spec`)."
    )
    spec: ProgramSpec | None = Field(
        None, description="A candidate program given whole; overrides `program_version`."
    )
    example: dict[str, Any] = Field(description="Every field of the example, inputs and labels.")
    input_keys: list[str] = Field(min_length=1, description="Which fields are the inputs.")
    metric: Identifier = Field(description="A metric the workers know, e.g. `exact_match`.")
    rollout_id: Identifier | None = Field(
        None, description="Passed to the LM so sampled calls are cached per rollout."
    )
    failure_score: float = Field(0.0, description="Score of an example that fails.")
    reply_to: TopicName | None = Field(
        None, description="Topic for the score; null: `dspex.eval.scores`."
    )
    created_at_ms: EpochMillis = Field(default_factory=now_ms, description="When produced.")

    @model_validator(mode="after")
    def _inputs_present(self) -> Self:
        missing = [key for key in self.input_keys if key not in self.example]
        if missing:
            raise ValueError(f"`input_keys` names fields the example lacks: {missing}")
        if self.index >= self.run_size:
            raise ValueError("`index` must be below `run_size`")
        return self

    def to_example(self) -> Example:
        return Example(self.example).with_inputs(*self.input_keys)

    def kafka_key(self) -> bytes:
        return self.program_id.encode("utf-8")


class ScoreErrorInfo(WireModel):
    """Why an example has no real score."""

    type: str = Field(
        max_length=64,
        description=(
            "An inference error type (`parse_error`, `lm_unavailable`, ...) or `metric_error` "
            "when the program ran and the metric raised."
        ),
    )
    message: str = Field(max_length=MAX_ERROR_MESSAGE_CHARS, description="One line, no secrets.")


class EvalScore(WireRecord):
    """One scored example of an evaluation run.

    Produced by the worker that ran it on ``dspex.eval.scores`` (or the
    request's ``reply_to``), keyed by run id, so one aggregator sees a whole
    run. After a worker restart an example may be scored twice; readers keep
    the first score of each ``index``.

    Example:
        >>> EvalScore(run_id="r1", run_size=1, index=0, program_id="qa", score=1.0,
        ...     latency_ms=5.0, worker_id="w1").kafka_key()
        b'r1'
    """

    schema_: Literal["dspex.eval.score/v1"] = Field(
        "dspex.eval.score/v1", alias="schema", description="Record kind and version."
    )
    run_id: Identifier = Field(description="The evaluation run.")
    run_size: int = Field(ge=1, description="How many examples the run has in all.")
    index: int = Field(ge=0, description="The example's position in the run.")
    program_id: Identifier = Field(description="The program evaluated.")
    program_version: int | None = Field(
        None, ge=1, description="The registered version that ran; null for a candidate spec."
    )
    score: float = Field(description="The metric's value (true is 1), or the failure score.")
    outputs: dict[str, Any] | None = Field(None, description="The program's outputs, if it ran.")
    error: ScoreErrorInfo | None = Field(None, description="Why there is no real score.")
    trace: list[dict[str, Any]] = Field(
        default_factory=list, description="Every predictor call of the run (inputs, outputs)."
    )
    usage: Usage = Field(default_factory=Usage, description="Tokens and cost of the example.")
    latency_ms: float = Field(ge=0.0, description="Milliseconds the program call took.")
    worker_id: Identifier = Field(description="The worker that scored it.")
    at_ms: EpochMillis = Field(default_factory=now_ms, description="When it was scored.")

    def trace_steps(self) -> tuple[TraceStep, ...]:
        return tuple(TraceStep.from_json(step) for step in self.trace)

    def token_usage(self) -> TokenUsage:
        return TokenUsage.model_validate(self.usage.model_dump())

    @staticmethod
    def error_of(error_type: str, message: str) -> ScoreErrorInfo:
        return ScoreErrorInfo(
            type=error_type[:64], message=shorten(message, MAX_ERROR_MESSAGE_CHARS)
        )

    def kafka_key(self) -> bytes:
        return self.run_id.encode("utf-8")


class EvalReport(WireRecord):
    """The running aggregate of one evaluation run.

    Kept by the workers' aggregator in a table whose changelog is the compacted
    ``dspex.eval.reports`` topic, keyed by run id: the latest record of a run
    is its current report. Duplicate scores (a re-run after a worker restart)
    are counted once, by index.

    Example:
        >>> EvalReport.empty("r1", "qa", 10).add(0, 1.0, error=False, cost_usd=0.0).mean
        1.0
    """

    schema_: Literal["dspex.eval.report/v1"] = Field(
        "dspex.eval.report/v1", alias="schema", description="Record kind and version."
    )
    run_id: Identifier = Field(description="The evaluation run.")
    program_id: Identifier = Field(description="The program evaluated.")
    run_size: int = Field(ge=1, description="How many examples the run has in all.")
    count: int = Field(0, ge=0, description="Examples scored so far (each index once).")
    errors: int = Field(0, ge=0, description="Examples whose program or metric failed.")
    score_sum: float = Field(0.0, description="Sum of the scores.")
    score_sum_sq: float = Field(0.0, ge=0.0, description="Sum of the squared scores.")
    mean: float = Field(0.0, description="Mean score so far.")
    standard_error: float = Field(0.0, ge=0.0, description="Standard error of the mean.")
    cost_usd: float = Field(0.0, ge=0.0, description="LM cost of the scored examples.")
    seen: list[tuple[int, int]] = Field(
        default_factory=list,
        description="Indexes scored, as sorted inclusive ranges (how duplicates are dropped).",
    )
    updated_at_ms: EpochMillis = Field(default_factory=now_ms, description="Last update.")

    @classmethod
    def empty(cls, run_id: str, program_id: str, run_size: int) -> EvalReport:
        return cls(run_id=run_id, program_id=program_id, run_size=run_size)

    @property
    def complete(self) -> bool:
        return self.count >= self.run_size

    def has(self, index: int) -> bool:
        return any(start <= index <= end for start, end in self.seen)

    def add(self, index: int, score: float, *, error: bool, cost_usd: float) -> EvalReport:
        """This report with one more scored example (unchanged if ``index`` was seen)."""
        if self.has(index):
            return self
        count = self.count + 1
        total = self.score_sum + score
        total_sq = self.score_sum_sq + score * score
        mean = total / count
        return self.model_copy(
            update={
                "count": count,
                "errors": self.errors + int(error),
                "score_sum": total,
                "score_sum_sq": total_sq,
                "mean": mean,
                "standard_error": standard_error_from_moments(
                    count, total_sq - count * mean * mean
                ),
                "cost_usd": self.cost_usd + cost_usd,
                "seen": _add_index(self.seen, index),
                "updated_at_ms": now_ms(),
            }
        )

    def kafka_key(self) -> bytes:
        return self.run_id.encode("utf-8")


def _add_index(ranges: list[tuple[int, int]], index: int) -> list[tuple[int, int]]:
    """``ranges`` with ``index`` added, adjacent ranges merged (scores arrive nearly in order)."""
    merged: list[tuple[int, int]] = []
    placed = False
    for start, end in ranges:
        if not placed and index < start - 1:
            merged.append((index, index))
            placed = True
        if not placed and start - 1 <= index <= end + 1:
            start, end = min(start, index), max(end, index)
            placed = True
        if merged and merged[-1][1] + 1 >= start:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    if not placed:
        if merged and merged[-1][1] + 1 >= index:
            merged[-1] = (merged[-1][0], max(merged[-1][1], index))
        else:
            merged.append((index, index))
    return merged
