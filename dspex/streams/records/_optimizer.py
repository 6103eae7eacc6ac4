"""The optimizer's records: commands, candidates, its journal of events, and feedback.

``dspex.control`` carries :class:`ControlCommand` (what users ask the optimizer
service to do); ``dspex.candidates`` is the service's journal: one
:class:`CandidateRecord` per evaluated candidate and one :class:`OptimizerEvent`
per step of a job or outcome of a command, from which a restarted service
rebuilds its jobs; ``dspex.feedback`` carries :class:`FeedbackRecord` (scores
or gold labels users attach to production results).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from dspex.optimizers.registry import OptimizerName
from dspex.programs.state import ProgramSpec
from dspex.streams.records._base import (
    MAX_ERROR_MESSAGE_CHARS,
    EpochMillis,
    Identifier,
    Usage,
    WireRecord,
    now_ms,
)

__all__ = [
    "CONTROL_COMMANDS",
    "CandidateRecord",
    "ControlCommand",
    "FeedbackRecord",
    "OptimizerEvent",
]

ControlKind = Literal["optimize", "online", "promote", "rollback", "pause", "resume"]
CONTROL_COMMANDS: tuple[str, ...] = ("optimize", "online", "promote", "rollback", "pause", "resume")

#: A setting of an optimizer: JSON scalars only.
SettingValue = str | int | float | bool | None


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


class ControlCommand(WireRecord):
    """A command to the optimizer service.

    Produced by ``dspex optimize`` / ``dspex optimizer promote|rollback|pause|resume``
    (or any Kafka client) on ``dspex.control``, keyed by program id. What each
    ``command`` needs:

    - ``optimize``: ``optimizer``, ``trainset``, ``valset`` (examples as flat
      objects, inputs named by ``input_keys``), ``metric``; optional ``settings``,
      ``seed``, ``margin``. Starts job ``job_id`` (default: the command id).
    - ``online``: ``valset``; optional ``settings`` (``min_traces``,
      ``interval_s``, ``max_demos``, ``min_score``), ``margin``. Starts a job that
      builds candidates from production traces scored on ``dspex.feedback``.
    - ``promote``: ``candidate_id``, a candidate on ``dspex.candidates``; made
      the active version without a gate.
    - ``rollback``: makes the version before the active one (or ``version``)
      active again, as a new version.
    - ``pause`` / ``resume``: ``job_id``.

    Example:
        >>> ControlCommand(command="pause", program_id="qa", job_id="j1").kafka_key()
        b'qa'
    """

    schema_: Literal["dspex.control/v1"] = Field(
        "dspex.control/v1", alias="schema", description="Record kind and version."
    )
    command_id: Identifier = Field(
        default_factory=_new_id, description="Unique id; outcomes on the journal name it."
    )
    command: ControlKind = Field(description="What to do.")
    program_id: Identifier = Field(description="The program the command is about.")
    job_id: Identifier | None = Field(
        None, description="The job: started (optimize, online; default the command id) or named."
    )
    optimizer: OptimizerName | None = Field(None, description="`optimize`: which optimizer.")
    settings: dict[str, SettingValue] = Field(
        default_factory=dict,
        description='Optimizer options, e.g. `{"num_trials": 12}`; unknown ones are an error.',
    )
    trainset: list[dict[str, Any]] = Field(
        default_factory=list, description="`optimize`: training examples (inputs and labels)."
    )
    valset: list[dict[str, Any]] = Field(
        default_factory=list, description="Validation examples: the promotion gate scores on them."
    )
    input_keys: list[str] = Field(
        default_factory=list,
        description="Which example fields are inputs (default: the signature's).",
    )
    metric: Identifier = Field("exact_match", description="A metric the workers know by name.")
    seed: int = Field(0, description="Seeds every random choice of the job.")
    margin: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Promote only if the candidate beats the active version by this much on "
        "the valset; null: the service's default.",
    )
    candidate_id: Identifier | None = Field(None, description="`promote`: the candidate.")
    version: int | None = Field(None, ge=1, description="`rollback`: the version to restore.")
    created_at_ms: EpochMillis = Field(default_factory=now_ms, description="When produced.")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        needs: dict[str, tuple[str, ...]] = {
            "optimize": ("optimizer", "trainset", "valset"),
            "online": ("valset",),
            "promote": ("candidate_id",),
            "pause": ("job_id",),
            "resume": ("job_id",),
            "rollback": (),
        }
        missing = [name for name in needs[self.command] if not getattr(self, name)]
        if missing:
            raise ValueError(f"command {self.command!r} needs {', '.join(missing)}")
        return self

    @property
    def job(self) -> str:
        """The job this command starts or names."""
        return self.job_id or self.command_id

    def kafka_key(self) -> bytes:
        return self.program_id.encode("utf-8")


CandidateKind = Literal["trial", "final", "online"]


class CandidateRecord(WireRecord):
    """A program version an optimizer proposed, with its evaluation.

    Produced by the optimizer service on ``dspex.candidates``, keyed by program
    id: one per trial of a search (``kind="trial"``, numbered), one for the
    result of a job scored on the whole valset (``final``), one per candidate
    built from production traces (``online``). A restarted service reads them
    back so a job resumes without repeating finished trials; ``dspex optimizer
    promote`` can make any of them the active version.

    Example:
        >>> CandidateRecord(job_id="j1", program_id="qa", candidate_id="j1-t3", kind="trial",
        ...     number=3, spec=ProgramSpec.from_program(Predict("q -> a")), score=0.8,
        ...     examples=50).kafka_key()
        b'qa'
    """

    schema_: Literal["dspex.candidate/v1"] = Field(
        "dspex.candidate/v1", alias="schema", description="Record kind and version."
    )
    job_id: Identifier = Field(description="The job that proposed it.")
    program_id: Identifier = Field(description="The program it is a version of.")
    candidate_id: Identifier = Field(description="Unique id, e.g. `<job>-t3` for trial 3.")
    kind: CandidateKind = Field(description="A search trial, a job's final result, or online.")
    number: int = Field(ge=0, description="Trial number (0-based) within its job and kind.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="The choices that made it (demo set, instruction, ...)."
    )
    spec: ProgramSpec = Field(description="The candidate program, whole.")
    score: float | None = Field(
        description="Mean metric over the examples scored; null when every example failed."
    )
    examples: int = Field(ge=0, description="How many examples the score is over.")
    full_eval: bool = Field(True, description="Scored on the whole valset (not a minibatch).")
    error: str | None = Field(
        None, max_length=MAX_ERROR_MESSAGE_CHARS, description="Why it failed, if it did."
    )
    usage: Usage = Field(default_factory=Usage, description="Tokens and cost of its evaluation.")
    created_at_ms: EpochMillis = Field(default_factory=now_ms, description="When evaluated.")

    def kafka_key(self) -> bytes:
        return self.program_id.encode("utf-8")


EventKind = Literal[
    "job_started",
    "baseline",
    "job_paused",
    "job_resumed",
    "job_finished",
    "job_failed",
    "promoted",
    "rejected",
    "rolled_back",
    "command_failed",
]


class OptimizerEvent(WireRecord):
    """One step of an optimizer job, or the outcome of a command.

    Produced by the optimizer service on ``dspex.candidates`` (keyed by program
    id) next to the candidates. ``job_started`` carries the whole command, so a
    restarted service can resume the job; ``baseline`` is the active version's
    valset score; ``promoted`` / ``rejected`` are the gate's decision
    (``score`` vs ``baseline``); ``job_finished`` / ``job_failed`` end a job;
    ``command_failed`` says why a command could not be carried out.

    Example:
        >>> OptimizerEvent(event="rejected", program_id="qa", job_id="j1", score=0.61,
        ...     baseline=0.6, message="below the margin").kafka_key()
        b'qa'
    """

    schema_: Literal["dspex.optimizer.event/v1"] = Field(
        "dspex.optimizer.event/v1", alias="schema", description="Record kind and version."
    )
    event: EventKind = Field(description="What happened.")
    program_id: Identifier = Field(description="The program.")
    job_id: Identifier | None = Field(None, description="The job, when it is about one.")
    command_id: Identifier | None = Field(None, description="The command that caused it.")
    command: ControlCommand | None = Field(None, description="`job_started`: the command.")
    candidate_id: Identifier | None = Field(None, description="The candidate concerned.")
    version: int | None = Field(None, ge=1, description="The program version made active.")
    score: float | None = Field(None, description="The candidate's valset score.")
    baseline: float | None = Field(None, description="The active version's valset score.")
    message: str = Field(
        "", max_length=MAX_ERROR_MESSAGE_CHARS, description="A human-readable line."
    )
    service_id: Identifier = Field("optimizer", description="The service that wrote it.")
    at_ms: EpochMillis = Field(default_factory=now_ms, description="When it happened.")

    def kafka_key(self) -> bytes:
        return self.program_id.encode("utf-8")


class FeedbackRecord(WireRecord):
    """A score or gold label a user attaches to a production result.

    Produced by users on ``dspex.feedback``, keyed by request id. The optimizer
    service joins it with the request and its result; for programs with an
    ``online`` job, the best-scored traces become demos of new candidates.
    A gold ``label`` (output fields) counts as a perfect example with those
    outputs; a ``score`` alone ranks the outputs the program gave.

    Example:
        >>> FeedbackRecord(request_id="r1", score=1.0).kafka_key()
        b'r1'
    """

    schema_: Literal["dspex.feedback/v1"] = Field(
        "dspex.feedback/v1", alias="schema", description="Record kind and version."
    )
    request_id: Identifier = Field(description="The request whose result is judged.")
    program_id: Identifier | None = Field(None, description="Its program, if known.")
    score: float | None = Field(None, ge=0.0, le=1.0, description="How good the result was, 0..1.")
    label: dict[str, Any] | None = Field(None, description="The correct output fields, when known.")
    created_at_ms: EpochMillis = Field(default_factory=now_ms, description="When produced.")

    @model_validator(mode="after")
    def _says_something(self) -> Self:
        if self.score is None and not self.label:
            raise ValueError("feedback needs a `score` or a `label`")
        return self

    def kafka_key(self) -> bytes:
        return self.request_id.encode("utf-8")
