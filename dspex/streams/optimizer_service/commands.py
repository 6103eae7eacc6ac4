"""Carrying out control commands: start, pause and resume jobs; promote and roll back versions.

A command is checked before anything is written: one the service cannot
carry out raises :class:`~dspex.errors.ConfigurationError`, which the service
journals as ``command_failed``. A command whose id the journal already holds
was carried out before the service restarted, and is skipped.
"""

from __future__ import annotations

import logging

from dspex.errors import ConfigurationError
from dspex.programs.metrics import BUILTIN_METRICS
from dspex.streams.catalog import ProgramCatalog
from dspex.streams.metrics import OptimizerMetrics
from dspex.streams.optimizer_service.jobs import (
    JobState,
    Journal,
    build_optimizer,
    command_examples,
    online_settings,
)
from dspex.streams.optimizer_service.publisher import Publisher
from dspex.streams.optimizer_service.runner import JobRunner, input_keys
from dspex.streams.records import ControlCommand, OptimizerEvent

__all__ = ["CommandHandler"]

log = logging.getLogger(__name__)


class CommandHandler:
    """Carries out decoded control commands on the journal, the catalog and the jobs.

    Args:
        publisher: Where events and new versions are written.
        runner: Starts and stops the jobs' tasks.
        catalog: The programs' versions, as the workers see them.
        journal: Every job, candidate and command carried out so far.
        metrics: The service's metrics.
    """

    def __init__(
        self,
        *,
        publisher: Publisher,
        runner: JobRunner,
        catalog: ProgramCatalog,
        journal: Journal,
        metrics: OptimizerMetrics,
    ) -> None:
        self.catalog = catalog
        self.journal = journal
        self.metrics = metrics
        self._publisher = publisher
        self._runner = runner

    async def dispatch(self, command: ControlCommand) -> None:
        """Carry out ``command``, unless it was carried out before.

        Raises:
            ConfigurationError: The command names something that does not
                exist, or asks for what cannot be done now.
        """
        if command.command_id in self.journal.handled:
            log.info("command %s was carried out before; skipped", command.command_id)
            return
        kind = command.command
        if kind in ("optimize", "online"):
            await self._begin(command)
        elif kind == "promote":
            await self._promote_candidate(command)
        elif kind == "rollback":
            await self._rollback(command)
        elif kind == "pause":
            await self._pause(command)
        else:
            await self._resume(command)

    # -- jobs --------------------------------------------------------------

    async def _begin(self, command: ControlCommand) -> None:
        if command.job in self.journal.jobs:
            raise ConfigurationError(f"job id {command.job!r} is taken; choose another")
        version = self._check(command)
        await self._publisher.publish(
            OptimizerEvent(
                event="job_started",
                program_id=command.program_id,
                job_id=command.job,
                command_id=command.command_id,
                command=command.model_copy(update={"job_id": command.job}),
                version=version,
                service_id=self._publisher.service_id,
                message=f"{command.optimizer or 'online'} job on version {version}",
            )
        )
        self._runner.start(self.journal.jobs[command.job])
        self._runner.count_jobs()

    def _check(self, command: ControlCommand) -> int:
        """Everything a job needs, before it starts; returns the active version."""
        version, student = self.catalog.resolve(command.program_id)
        if command.metric not in BUILTIN_METRICS:
            raise ConfigurationError(
                f"unknown metric {command.metric!r}; known: {sorted(BUILTIN_METRICS)}"
            )
        keys = input_keys(command, student)
        command_examples(command.valset, keys)
        if command.command == "optimize":
            command_examples(command.trainset, keys)
            build_optimizer(command, executor=self._runner.executor(command.program_id))
        else:
            online_settings(command)
        return version

    async def _pause(self, command: ControlCommand) -> None:
        job = self._job(command)
        if job.status != "running":
            raise ConfigurationError(f"job {job.job_id} is {job.status}, not running")
        await self._runner.stop(job)
        await self._publisher.event(
            "job_paused", command, message="paused; resume continues from its trials"
        )
        self._runner.count_jobs()

    async def _resume(self, command: ControlCommand) -> None:
        job = self._job(command)
        if job.status != "paused":
            raise ConfigurationError(f"job {job.job_id} is {job.status}, not paused")
        await self._publisher.event(
            "job_resumed", command, message=f"{len(job.trials())} trials recorded"
        )
        self._runner.start(job)
        self._runner.count_jobs()

    def _job(self, command: ControlCommand) -> JobState:
        job = self.journal.jobs.get(command.job_id or "")
        if job is None or job.program_id != command.program_id:
            raise ConfigurationError(
                f"no job {command.job_id!r} for program {command.program_id!r}"
            )
        return job

    # -- versions ------------------------------------------------------------

    async def _promote_candidate(self, command: ControlCommand) -> None:
        candidate = self.journal.candidates.get(command.candidate_id or "")
        if candidate is None or candidate.program_id != command.program_id:
            raise ConfigurationError(
                f"no candidate {command.candidate_id!r} of program {command.program_id!r} "
                "on the candidates topic"
            )
        record = await self._publisher.register(
            command.program_id, candidate.spec, f"promoted candidate {candidate.candidate_id}"
        )
        self.metrics.decisions.labels(command.program_id, "manual").inc()
        await self._publisher.event(
            "promoted",
            command,
            job_id=candidate.job_id,
            candidate_id=candidate.candidate_id,
            version=record.version,
            score=candidate.score,
            message=f"version {record.version} is candidate {candidate.candidate_id} (by command)",
        )

    async def _rollback(self, command: ControlCommand) -> None:
        versions = self.catalog.versions(command.program_id)
        active = self.catalog.record(command.program_id)
        if command.version is not None:
            target = command.version
        else:
            earlier = [v for v in versions if v < active.version]
            if not earlier:
                raise ConfigurationError(
                    f"program {command.program_id!r} has no version before {active.version}"
                )
            target = earlier[-1]
        if target == active.version:
            raise ConfigurationError(f"version {target} is already active")
        old = self.catalog.record(command.program_id, target)
        record = await self._publisher.register(
            command.program_id, old.spec, f"rollback to version {target} (from {active.version})"
        )
        self.metrics.rollbacks.labels(command.program_id).inc()
        await self._publisher.event(
            "rolled_back",
            command,
            version=record.version,
            message=f"version {record.version} restores version {target}",
        )
