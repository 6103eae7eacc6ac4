"""Running the optimizer service's jobs: each in a task, its trials journaled, its result gated.

A search job (``optimize``) measures the version it started from (the
*baseline*), runs its optimizer with a
:class:`~dspex.streams.executor.KafkaExecutor` (every evaluation fans out to
the workers), journals each trial, scores the result on the whole valset and
sends it through the promotion gate. An online job, whenever the best
production traces change, puts them on the active program as demos and sends
that candidate through the same gate. A job that fails ends with a
``job_failed`` record, never the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from aiokafka.errors import KafkaError

from dspex.errors import ConfigurationError, DSPExError
from dspex.optimizers.base import Trial, TrialCallback, trial_from_summary
from dspex.optimizers.labeled import LabeledFewShot
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry
from dspex.streams.catalog import ProgramCatalog
from dspex.streams.executor import KafkaExecutor
from dspex.streams.metrics import OptimizerMetrics
from dspex.streams.optimizer_service.jobs import (
    JobState,
    Journal,
    build_optimizer,
    candidate_record,
    command_examples,
    gate,
    online_settings,
)
from dspex.streams.optimizer_service.online import TraceBook
from dspex.streams.optimizer_service.publisher import Publisher
from dspex.streams.records import CandidateRecord, ControlCommand
from dspex.topologies.topology import LMPool, Topology

__all__ = ["JobRunner", "input_keys"]

log = logging.getLogger(__name__)

#: Seconds an online job waits between looks at its traces.
_ONLINE_POLL_S = 0.5


def input_keys(command: ControlCommand, student: Module) -> list[str]:
    """The command's input keys, or else those of the program's first predictor."""
    if command.input_keys:
        return list(command.input_keys)
    predictors = student.named_predictors()
    if not predictors:
        raise ConfigurationError("the program has no predictor; give input_keys")
    return list(predictors[0][1].signature.input_fields)


class JobRunner:
    """Runs each job in a task of its own, at most ``optimizer.max_jobs`` at a time.

    Args:
        topology: The deployment: Kafka, topic prefix and the optimizer's settings.
        publisher: Where trials, candidates, decisions and new versions are written.
        catalog: The programs' versions, as the workers see them.
        journal: Every job and candidate so far.
        traces: Scored production traces, for online jobs.
        metrics: The service's metrics.
        lms: The LMs optimizers propose instructions with.
        registry: Where custom module classes are registered by name.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        publisher: Publisher,
        catalog: ProgramCatalog,
        journal: Journal,
        traces: TraceBook,
        metrics: OptimizerMetrics,
        lms: LMPool,
        registry: ProgramRegistry | None,
    ) -> None:
        self.topology = topology
        self.config = topology.optimizer
        self.catalog = catalog
        self.journal = journal
        self.traces = traces
        self.metrics = metrics
        self.lms = lms
        self.registry = registry
        self._publisher = publisher
        self._slots = asyncio.Semaphore(self.config.max_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- tasks -------------------------------------------------------------

    def start(self, job: JobState) -> None:
        """Run ``job`` (from its recorded trials on, if it has any) in a new task."""
        # The series exists from the start, so increase() sees the first promotion.
        self.metrics.decisions.labels(job.program_id, "promoted")
        runner = self._run_online if job.command.command == "online" else self._run_search
        self._tasks[job.job_id] = asyncio.create_task(
            self._guarded(job, runner(job)), name=f"job {job.job_id}"
        )

    async def stop(self, job: JobState) -> None:
        """Cancel ``job``'s task and wait until it has stopped."""
        task = self._tasks.pop(job.job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop_all(self) -> None:
        """Cancel every job's task and wait until they have all stopped."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def count_jobs(self) -> None:
        """Set the jobs gauge from the journal."""
        for state in ("running", "paused"):
            count = sum(1 for job in self.journal.jobs.values() if job.status == state)
            self.metrics.jobs.labels(state).set(count)

    def executor(self, program_id: str) -> KafkaExecutor:
        """A new executor that evaluates ``program_id``'s candidates on the workers."""
        return KafkaExecutor(
            program_id=program_id,
            bootstrap_servers=self.topology.kafka,
            prefix=self.topology.topics.prefix,
            max_outstanding=self.config.eval_max_outstanding,
            idle_timeout_s=self.config.eval_idle_timeout_s,
            registry=self.registry,
        )

    async def _guarded(self, job: JobState, work: Coroutine[Any, Any, None]) -> None:
        """Run a job; any failure ends the job with a record, never the service."""
        command = job.command
        try:
            async with self._slots:
                await work
            await self._publisher.event("job_finished", command, job_id=job.job_id, message="done")
            self.metrics.job_outcomes.labels(job.program_id, "finished").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, DSPExError):
                log.exception("job %s failed", job.job_id)
            message = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(KafkaError):
                await self._publisher.event(
                    "job_failed", command, job_id=job.job_id, message=message[:2000]
                )
            self.metrics.job_outcomes.labels(job.program_id, "failed").inc()
        finally:
            if self._tasks.get(job.job_id) is asyncio.current_task():
                del self._tasks[job.job_id]
            self.count_jobs()

    # -- scoring and the gate ------------------------------------------------

    async def _score(
        self,
        executor: KafkaExecutor,
        job: JobState,
        number: int,
        candidate: Module,
        params: dict[str, Any],
    ) -> Trial:
        keys = input_keys(job.command, candidate)
        valset = command_examples(job.command.valset, keys)
        summary = await executor.evaluate(candidate, valset, job.command.metric)
        return trial_from_summary(number, params, summary, candidate.dump_state())

    async def _baseline(
        self, executor: KafkaExecutor, job: JobState, version: int, active: Module
    ) -> float | None:
        trial = await self._score(executor, job, 0, active, {"version": version})
        await self._publisher.event(
            "baseline",
            job.command,
            job_id=job.job_id,
            version=version,
            baseline=trial.score,
            message=f"version {version} scores {trial.score} on {trial.examples} examples",
        )
        if trial.score is not None:
            self.metrics.active_score.labels(job.program_id).set(trial.score)
        return trial.score

    async def _decide(
        self, job: JobState, candidate: CandidateRecord, baseline: float | None
    ) -> bool:
        margin = job.command.margin if job.command.margin is not None else self.config.margin
        promote, verdict = gate(candidate.score, baseline, margin)
        fields: dict[str, Any] = {
            "job_id": job.job_id,
            "candidate_id": candidate.candidate_id,
            "score": candidate.score,
            "baseline": baseline,
        }
        if promote:
            record = await self._publisher.register(
                job.program_id, candidate.spec, f"job {job.job_id}: {verdict}"
            )
            await self._publisher.event(
                "promoted", job.command, version=record.version, message=verdict, **fields
            )
        else:
            await self._publisher.event("rejected", job.command, message=verdict, **fields)
        self.metrics.decisions.labels(job.program_id, "promoted" if promote else "rejected").inc()
        return promote

    # -- search jobs -----------------------------------------------------------

    def _record_trial(
        self, job: JobState, student: Module, pending: list[asyncio.Task[None]]
    ) -> TrialCallback:
        optimizer = job.command.optimizer or "online"

        def on_trial(trial: Trial) -> None:
            if ("trial", trial.number) in job.candidates:
                return  # resumed from the journal: already published
            record = candidate_record(job, "trial", trial, student)
            job.candidates[("trial", trial.number)] = record
            pending.append(asyncio.create_task(self._publisher.publish(record)))
            status = "failed" if trial.failed else "ok"
            self.metrics.trials.labels(job.program_id, optimizer, status).inc()
            if trial.score is not None:
                self.metrics.trial_score.labels(job.program_id, optimizer).observe(trial.score)
                scores = [t.score for t in job.trials() if t.score is not None]
                self.metrics.best_score.labels(job.program_id).set(max(scores))

        return on_trial

    async def _run_search(self, job: JobState) -> None:
        command = job.command
        version, student = self._student(job)
        keys = input_keys(command, student)
        trainset = command_examples(command.trainset, keys)
        valset = command_examples(command.valset, keys)
        pending: list[asyncio.Task[None]] = []
        async with self.executor(job.program_id) as executor:
            baseline = job.baseline
            if baseline is None:
                baseline = await self._baseline(executor, job, version, student)
            optimizer = build_optimizer(
                command,
                executor=executor,
                on_trial=self._record_trial(job, student, pending),
                resume=job.trials(),
                prompt_model=self.lms.for_program(job.program_id),
            )
            try:
                compiled = await optimizer.acompile(student, trainset=trainset, valset=valset)
            finally:
                await asyncio.gather(*pending)
            final = job.candidates.get(("final", 0))
            if final is None:
                trial = await self._score(
                    executor, job, 0, compiled, {"optimizer": command.optimizer}
                )
                final = candidate_record(job, "final", trial, compiled)
                await self._publisher.publish(final)
            if not job.decided:
                await self._decide(job, final, baseline)

    def _student(self, job: JobState) -> tuple[int, Module]:
        """The version the job started from (the active one if it is gone)."""
        versions = self.catalog.versions(job.program_id)
        if job.base_version is not None and job.base_version in versions:
            return self.catalog.resolve(job.program_id, job.base_version)
        return self.catalog.resolve(job.program_id)

    # -- online jobs -----------------------------------------------------------

    async def _run_online(self, job: JobState) -> None:
        """Propose a candidate whenever the best traces change; runs until paused."""
        settings = online_settings(job.command)
        loop = asyncio.get_running_loop()
        last_ids: tuple[str, ...] = ()
        baseline: tuple[int, float | None] | None = None
        async with self.executor(job.program_id) as executor:
            while True:
                best = self.traces.best(
                    job.program_id, count=settings["max_demos"], min_score=settings["min_score"]
                )
                ids = tuple(sorted(t.request_id for t in best))
                eligible = len(self.traces.best(job.program_id, min_score=settings["min_score"]))
                if eligible < settings["min_traces"] or ids == last_ids:
                    await asyncio.sleep(_ONLINE_POLL_S)
                    continue
                started = loop.time()
                last_ids = ids
                version, active = self.catalog.resolve(job.program_id)
                if baseline is None or baseline[0] != version:
                    baseline = (version, await self._baseline(executor, job, version, active))
                demos = LabeledFewShot(k=len(best), sample=False)
                candidate = await demos.acompile(active, trainset=[t.example() for t in best])
                number = job.next_number("online")
                params = {"traces": list(ids), "base_version": version}
                trial = await self._score(executor, job, number, candidate, params)
                record = candidate_record(job, "online", trial, candidate)
                await self._publisher.publish(record)
                self.metrics.trials.labels(
                    job.program_id, "online", "failed" if trial.failed else "ok"
                ).inc()
                if await self._decide(job, record, baseline[1]):
                    baseline = None  # the new active version is measured next time
                await asyncio.sleep(max(0.0, settings["interval_s"] - (loop.time() - started)))
