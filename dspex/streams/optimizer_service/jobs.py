"""What the optimizer service knows about its jobs, and how it builds their optimizers.

The service's memory is its journal on ``dspex.candidates``: a restarted
service reads it back into a :class:`Journal` and resumes every job that was
running, handing the optimizer the trials it had already recorded. The
optimizer a command names is built from :mod:`dspex.optimizers.registry`, the
one list of the names and settings a command may give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dspex.errors import ConfigurationError
from dspex.optimizers.base import Optimizer, Trial, TrialCallback
from dspex.optimizers.executor import Executor
from dspex.optimizers.registry import check_settings, registered
from dspex.programs.example import Example
from dspex.programs.lm.base import LM
from dspex.programs.lm.types import TokenUsage
from dspex.programs.module import Module
from dspex.programs.state import ProgramSpec
from dspex.streams.records._base import Usage
from dspex.streams.records._optimizer import CandidateRecord, ControlCommand, OptimizerEvent

__all__ = [
    "ONLINE_SETTINGS",
    "JobState",
    "Journal",
    "build_optimizer",
    "candidate_record",
    "command_examples",
    "gate",
    "online_settings",
]

JobStatus = Literal["running", "paused", "finished", "failed"]

#: Settings of an ``online`` job, with defaults.
ONLINE_SETTINGS: Mapping[str, tuple[type, float]] = {
    "min_traces": (int, 8),  # traces with feedback needed before a candidate
    "max_demos": (int, 4),  # demos of an online candidate
    "min_score": (float, 1.0),  # traces scored below this are never demos
    "interval_s": (float, 60.0),  # at most one candidate per interval
}


@dataclass
class JobState:
    """One job as the journal tells it."""

    command: ControlCommand
    status: JobStatus = "running"
    base_version: int | None = None
    baseline: float | None = None
    #: Recorded candidates by (kind, number).
    candidates: dict[tuple[str, int], CandidateRecord] = field(default_factory=dict)
    decided: bool = False

    @property
    def job_id(self) -> str:
        return self.command.job

    @property
    def program_id(self) -> str:
        return self.command.program_id

    def trials(self) -> list[Trial]:
        """The search trials recorded so far, for ``resume``."""
        return [
            Trial(
                number=record.number,
                params=record.params,
                score=record.score,
                examples=record.examples,
                state=record.spec.state,
                usage=TokenUsage.model_validate(record.usage.model_dump()),
                error=record.error,
                full_eval=record.full_eval,
            )
            for (kind, _), record in sorted(self.candidates.items())
            if kind == "trial"
        ]

    def next_number(self, kind: str) -> int:
        return 1 + max((n for k, n in self.candidates if k == kind), default=-1)


class Journal:
    """Jobs and candidates, rebuilt from the records of ``dspex.candidates``."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobState] = {}
        self.candidates: dict[str, CandidateRecord] = {}
        #: Commands with a recorded outcome: a redelivered one is not carried out twice.
        self.handled: set[str] = set()

    def apply(self, record: CandidateRecord | OptimizerEvent) -> None:
        if isinstance(record, CandidateRecord):
            self.candidates[record.candidate_id] = record
            job = self.jobs.get(record.job_id)
            if job is not None:
                job.candidates[(record.kind, record.number)] = record
            return
        if record.command_id is not None:
            self.handled.add(record.command_id)
        if record.event == "job_started" and record.command is not None:
            self.jobs[record.command.job] = JobState(record.command, base_version=record.version)
            return
        job = self.jobs.get(record.job_id or "")
        if job is None:
            return
        if record.event == "baseline":
            job.baseline = record.baseline
            job.base_version = record.version or job.base_version
        elif record.event in ("promoted", "rejected"):
            job.decided = job.command.command == "optimize"
        elif record.event == "job_paused":
            job.status = "paused"
        elif record.event == "job_resumed":
            job.status = "running"
        elif record.event == "job_finished":
            job.status = "finished"
        elif record.event == "job_failed":
            job.status = "failed"


def command_examples(rows: Sequence[Mapping[str, Any]], input_keys: Sequence[str]) -> list[Example]:
    """Examples from a command's rows, every input present.

    Raises:
        ConfigurationError: A row lacks an input (its position is named).
    """
    examples = []
    for position, row in enumerate(rows):
        missing = [key for key in input_keys if key not in row]
        if missing:
            raise ConfigurationError(f"example {position} lacks input field(s) {missing}")
        examples.append(Example(dict(row)).with_inputs(*input_keys))
    return examples


def online_settings(command: ControlCommand) -> dict[str, Any]:
    """An online command's settings with the defaults filled in."""
    allowed = {name: kind for name, (kind, _) in ONLINE_SETTINGS.items()}
    typed = check_settings(command.settings, allowed, "online jobs")
    defaults = {name: kind(default) for name, (kind, default) in ONLINE_SETTINGS.items()}
    return defaults | typed


def build_optimizer(
    command: ControlCommand,
    *,
    executor: Executor,
    on_trial: TrialCallback | None = None,
    resume: Sequence[Trial] = (),
    prompt_model: LM | None = None,
) -> Optimizer:
    """The optimizer an ``optimize`` command names, with its settings.

    Raises:
        ConfigurationError: An unknown optimizer, unknown or mistyped
            settings, or values the optimizer rejects.
    """
    return registered(command.optimizer).build(
        command.metric,
        settings=command.settings,
        executor=executor,
        seed=command.seed,
        on_trial=on_trial,
        resume=resume,
        prompt_model=prompt_model,
    )


def candidate_record(
    job: JobState,
    kind: Literal["trial", "final", "online"],
    trial: Trial,
    student: Module | ProgramSpec,
) -> CandidateRecord:
    """The journal record of a trial: the student's spec with the trial's state."""
    base = student if isinstance(student, ProgramSpec) else ProgramSpec.from_program(student)
    suffix = {"trial": "t", "final": "final", "online": "o"}[kind]
    return CandidateRecord(
        job_id=job.job_id,
        program_id=job.program_id,
        candidate_id=f"{job.job_id}-{suffix}{trial.number if kind != 'final' else ''}",
        kind=kind,
        number=trial.number,
        params=trial.params,
        spec=base.model_copy(update={"state": trial.state}),
        score=trial.score,
        examples=trial.examples,
        full_eval=trial.full_eval,
        error=trial.error[:2000] if trial.error else None,
        usage=Usage.model_validate(trial.usage.model_dump()),
    )


def gate(score: float | None, baseline: float | None, margin: float) -> tuple[bool, str]:
    """Whether a candidate scoring ``score`` replaces an active version at ``baseline``."""
    if score is None:
        return False, "the candidate failed on the valset"
    if baseline is None:
        return True, f"no active score to beat; candidate {score:.4f}"
    gain = score - baseline
    verdict = f"candidate {score:.4f} vs active {baseline:.4f} ({gain:+.4f}, margin {margin:g})"
    return gain > 0 and gain >= margin, verdict
