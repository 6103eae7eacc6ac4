"""The optimizer service: jobs that evaluate candidates on the cluster and promote the best.

``dspex optimizer serve TOPOLOGY`` runs a Faust app whose ``control`` agent
takes commands from ``dspex.control``:

- ``optimize`` starts a job: the active version's valset score is measured
  (the *baseline*), the named optimizer runs with a
  :class:`~dspex.streams.executor.KafkaExecutor` (every evaluation fans out to
  the workers), each trial is published to ``dspex.candidates``, the result is
  scored on the whole valset, and it is registered as the new active version
  only if it beats the baseline by the margin.
- ``online`` starts a job that, whenever the best production traces scored on
  ``dspex.feedback`` change, puts them on the active program as demos and
  sends that candidate through the same gate.
- ``promote`` registers a recorded candidate, ``rollback`` re-registers an
  earlier version, ``pause`` / ``resume`` stop and restart a job.

``dspex.candidates`` is also the service's journal: every job step is an
:class:`~dspex.streams.records.OptimizerEvent` there. A restarted service reads
it back and resumes each running job, reusing recorded trials, so finished
trials are never evaluated twice. Run one optimizer service per deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import start_http_server

from dspex.errors import ConfigurationError, DSPExError, WireFormatError
from dspex.optimizers.base import Trial, trial_from_summary
from dspex.optimizers.labeled import LabeledFewShot
from dspex.programs.metrics import BUILTIN_METRICS
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry, ProgramSpec
from dspex.streams._faust_dir import scratch_datadir
from dspex.streams.catalog import ProgramCatalog, ProgramFollower
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
from dspex.streams.records import (
    CandidateRecord,
    ControlCommand,
    FeedbackRecord,
    InferenceRequest,
    InferenceResult,
    OptimizerEvent,
    ProgramRecord,
    decode,
    encode,
)
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics, partitions_of
from dspex.streams.worker.inference import Origin, dead_letter
from dspex.topologies.topology import LMPool, Topology

__all__ = ["OptimizerService", "build_optimizer_app", "run_optimizer"]

log = logging.getLogger(__name__)

#: Seconds an online job waits between looks at its traces.
_ONLINE_POLL_S = 0.5


class OptimizerService:
    """The optimizer service's state: journal, catalog, traces and running jobs."""

    def __init__(
        self,
        topology: Topology,
        *,
        service_id: str = "optimizer",
        registry: ProgramRegistry | None = None,
        metrics: OptimizerMetrics | None = None,
    ) -> None:
        self.topology = topology
        self.config = topology.optimizer
        self.names = TopicNames(topology.topics.prefix)
        self.service_id = service_id
        self.registry = registry
        self.catalog = ProgramCatalog(registry=registry)
        self.journal = Journal()
        self.traces = TraceBook(self.config.trace_capacity)
        self.metrics = metrics or OptimizerMetrics.create()
        self.lms = LMPool(topology)
        self.ready = asyncio.Event()
        self._bootstrap = topology.kafka.bootstrap_servers
        self._producer: Any = None
        self._slots = asyncio.Semaphore(self.config.max_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> None:
        """Load catalog and journal, resume running jobs, then serve until cancelled."""
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all")
        await producer.start()
        self._producer = producer
        follower = ProgramFollower(
            self.catalog, bootstrap_servers=self._bootstrap, topic=self.names.programs
        )
        try:
            async with follower:
                await self._replay()
                for job in self.journal.jobs.values():
                    if job.status == "running":
                        log.info("resuming job %s of %s", job.job_id, job.program_id)
                        self._start(job)
                self._count_jobs()
                self.ready.set()
                await asyncio.Event().wait()
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await producer.stop()
            await self.lms.aclose()

    async def _replay(self) -> None:
        """Apply every journal record on the candidates topic, oldest first."""
        topic = self.names.candidates
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p) for p in await partitions_of(self._bootstrap, topic)
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            pending = {tp for tp in partitions if ends[tp] > 0}
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=500)
                for records in batches.values():
                    for message in records:
                        self._apply_journal(message.value)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
        log.info(
            "journal: %d jobs, %d candidates", len(self.journal.jobs), len(self.journal.candidates)
        )

    def _apply_journal(self, value: bytes | None) -> None:
        try:
            record = decode(value or b"")
        except WireFormatError as exc:
            log.warning("skipping unreadable journal record: %s", exc)
            return
        if isinstance(record, CandidateRecord | OptimizerEvent):
            self.journal.apply(record)

    async def publish(self, record: CandidateRecord | OptimizerEvent) -> None:
        """Write ``record`` to the journal (and apply it here)."""
        await self._producer.send_and_wait(
            self.names.candidates, encode(record), key=record.kafka_key()
        )
        self.journal.apply(record)

    async def _event(self, event: str, command: ControlCommand, **fields: Any) -> None:
        await self.publish(
            OptimizerEvent(
                event=event,  # type: ignore[arg-type]
                program_id=command.program_id,
                job_id=fields.pop("job_id", command.job_id),
                command_id=command.command_id,
                service_id=self.service_id,
                **fields,
            )
        )

    # -- commands ----------------------------------------------------------

    async def handle(self, key: bytes | None, value: bytes | None, origin: Origin) -> None:
        """Carry out one record of the control topic; a bad one is dead-lettered."""
        await self.ready.wait()
        try:
            command = decode(value or b"", expect=ControlCommand)
        except WireFormatError as exc:
            letter = dead_letter(
                exc, key, value, origin, self.names, worker_id=self.service_id, metrics=None
            )
            await self._producer.send_and_wait(letter.topic, letter.value, key=letter.key)
            return
        try:
            await self._dispatch(command)
        except DSPExError as exc:
            log.warning("command %s (%s) failed: %s", command.command_id, command.command, exc)
            await self._event("command_failed", command, message=str(exc)[:2000])

    async def _dispatch(self, command: ControlCommand) -> None:
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

    async def _begin(self, command: ControlCommand) -> None:
        if command.job in self.journal.jobs:
            raise ConfigurationError(f"job id {command.job!r} is taken; choose another")
        version = self._check(command)
        await self.publish(
            OptimizerEvent(
                event="job_started",
                program_id=command.program_id,
                job_id=command.job,
                command_id=command.command_id,
                command=command.model_copy(update={"job_id": command.job}),
                version=version,
                service_id=self.service_id,
                message=f"{command.optimizer or 'online'} job on version {version}",
            )
        )
        self._start(self.journal.jobs[command.job])
        self._count_jobs()

    def _check(self, command: ControlCommand) -> int:
        """Everything a job needs, before it starts; returns the active version."""
        version, student = self.catalog.resolve(command.program_id)
        if command.metric not in BUILTIN_METRICS:
            raise ConfigurationError(
                f"unknown metric {command.metric!r}; known: {sorted(BUILTIN_METRICS)}"
            )
        keys = self._input_keys(command, student)
        command_examples(command.valset, keys)
        if command.command == "optimize":
            command_examples(command.trainset, keys)
            build_optimizer(command, executor=self._executor(command.program_id))
        else:
            online_settings(command)
        return version

    @staticmethod
    def _input_keys(command: ControlCommand, student: Module) -> list[str]:
        if command.input_keys:
            return list(command.input_keys)
        predictors = student.named_predictors()
        if not predictors:
            raise ConfigurationError("the program has no predictor; give input_keys")
        return list(predictors[0][1].signature.input_fields)

    async def _pause(self, command: ControlCommand) -> None:
        job = self._job(command)
        if job.status != "running":
            raise ConfigurationError(f"job {job.job_id} is {job.status}, not running")
        task = self._tasks.pop(job.job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._event("job_paused", command, message="paused; resume continues from its trials")
        self._count_jobs()

    async def _resume(self, command: ControlCommand) -> None:
        job = self._job(command)
        if job.status != "paused":
            raise ConfigurationError(f"job {job.job_id} is {job.status}, not paused")
        await self._event("job_resumed", command, message=f"{len(job.trials())} trials recorded")
        self._start(job)
        self._count_jobs()

    def _job(self, command: ControlCommand) -> JobState:
        job = self.journal.jobs.get(command.job_id or "")
        if job is None or job.program_id != command.program_id:
            raise ConfigurationError(
                f"no job {command.job_id!r} for program {command.program_id!r}"
            )
        return job

    async def _promote_candidate(self, command: ControlCommand) -> None:
        candidate = self.journal.candidates.get(command.candidate_id or "")
        if candidate is None or candidate.program_id != command.program_id:
            raise ConfigurationError(
                f"no candidate {command.candidate_id!r} of program {command.program_id!r} "
                "on the candidates topic"
            )
        record = await self._register(
            command.program_id, candidate.spec, f"promoted candidate {candidate.candidate_id}"
        )
        self.metrics.decisions.labels(command.program_id, "manual").inc()
        await self._event(
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
        record = await self._register(
            command.program_id, old.spec, f"rollback to version {target} (from {active.version})"
        )
        self.metrics.rollbacks.labels(command.program_id).inc()
        await self._event(
            "rolled_back",
            command,
            version=record.version,
            message=f"version {record.version} restores version {target}",
        )

    async def _register(
        self, program_id: str, spec: ProgramSpec, description: str
    ) -> ProgramRecord:
        record = await register_program(
            self._bootstrap, self.names, program_id, spec, description=description
        )
        self.catalog.apply(record)
        return record

    # -- jobs --------------------------------------------------------------

    def _start(self, job: JobState) -> None:
        # The series exists from the start, so increase() sees the first promotion.
        self.metrics.decisions.labels(job.program_id, "promoted")
        runner = self._run_online if job.command.command == "online" else self._run_search
        self._tasks[job.job_id] = asyncio.create_task(
            self._guarded(job, runner(job)), name=f"job {job.job_id}"
        )

    def _count_jobs(self) -> None:
        for state in ("running", "paused"):
            count = sum(1 for job in self.journal.jobs.values() if job.status == state)
            self.metrics.jobs.labels(state).set(count)

    async def _guarded(self, job: JobState, work: Coroutine[Any, Any, None]) -> None:
        """Run a job; any failure ends the job with a record, never the service."""
        command = job.command
        try:
            async with self._slots:
                await work
            await self._event("job_finished", command, job_id=job.job_id, message="done")
            self.metrics.job_outcomes.labels(job.program_id, "finished").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, DSPExError):
                log.exception("job %s failed", job.job_id)
            message = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(KafkaError):
                await self._event("job_failed", command, job_id=job.job_id, message=message[:2000])
            self.metrics.job_outcomes.labels(job.program_id, "failed").inc()
        finally:
            if self._tasks.get(job.job_id) is asyncio.current_task():
                del self._tasks[job.job_id]
            self._count_jobs()

    def _executor(self, program_id: str) -> KafkaExecutor:
        return KafkaExecutor(
            program_id=program_id,
            bootstrap_servers=self._bootstrap,
            prefix=self.topology.topics.prefix,
            max_outstanding=self.config.eval_max_outstanding,
            idle_timeout_s=self.config.eval_idle_timeout_s,
            registry=self.registry,
        )

    async def _score(
        self,
        executor: KafkaExecutor,
        job: JobState,
        number: int,
        candidate: Module,
        params: dict[str, Any],
    ) -> Trial:
        keys = self._input_keys(job.command, candidate)
        valset = command_examples(job.command.valset, keys)
        summary = await executor.evaluate(candidate, valset, job.command.metric)
        return trial_from_summary(number, params, summary, candidate.dump_state())

    async def _baseline(
        self, executor: KafkaExecutor, job: JobState, version: int, active: Module
    ) -> float | None:
        trial = await self._score(executor, job, 0, active, {"version": version})
        await self._event(
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
            record = await self._register(
                job.program_id, candidate.spec, f"job {job.job_id}: {verdict}"
            )
            await self._event(
                "promoted", job.command, version=record.version, message=verdict, **fields
            )
        else:
            await self._event("rejected", job.command, message=verdict, **fields)
        self.metrics.decisions.labels(job.program_id, "promoted" if promote else "rejected").inc()
        return promote

    def _record_trial(
        self, job: JobState, student: Module, pending: list[asyncio.Task[None]]
    ) -> Any:
        optimizer = job.command.optimizer or "online"

        def on_trial(trial: Trial) -> None:
            if ("trial", trial.number) in job.candidates:
                return  # resumed from the journal: already published
            record = candidate_record(job, "trial", trial, student)
            job.candidates[("trial", trial.number)] = record
            pending.append(asyncio.create_task(self.publish(record)))
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
        keys = self._input_keys(command, student)
        trainset = command_examples(command.trainset, keys)
        valset = command_examples(command.valset, keys)
        pending: list[asyncio.Task[None]] = []
        async with self._executor(job.program_id) as executor:
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
                await self.publish(final)
            if not job.decided:
                await self._decide(job, final, baseline)

    def _student(self, job: JobState) -> tuple[int, Module]:
        """The version the job started from (the active one if it is gone)."""
        versions = self.catalog.versions(job.program_id)
        if job.base_version is not None and job.base_version in versions:
            return self.catalog.resolve(job.program_id, job.base_version)
        return self.catalog.resolve(job.program_id)

    async def _run_online(self, job: JobState) -> None:
        """Propose a candidate whenever the best traces change; runs until paused."""
        settings = online_settings(job.command)
        loop = asyncio.get_running_loop()
        last_ids: tuple[str, ...] = ()
        baseline: tuple[int, float | None] | None = None
        async with self._executor(job.program_id) as executor:
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
                await self.publish(record)
                self.metrics.trials.labels(
                    job.program_id, "online", "failed" if trial.failed else "ok"
                ).inc()
                if await self._decide(job, record, baseline[1]):
                    baseline = None  # the new active version is measured next time
                await asyncio.sleep(max(0.0, settings["interval_s"] - (loop.time() - started)))

    # -- online traces -------------------------------------------------------

    def observe(self, value: bytes | None, kind: type[Any]) -> None:
        """Feed a request, result or feedback record to the trace book."""
        try:
            record = decode(value or b"", expect=kind)
        except WireFormatError:
            return  # the workers dead-letter bad requests; others are not ours to judge
        if isinstance(record, InferenceRequest):
            trace = self.traces.add_request(record)
        elif isinstance(record, InferenceResult):
            trace = self.traces.add_result(record)
        else:
            trace = self.traces.add_feedback(record)
            matched = "yes" if trace is not None else "pending"
            self.metrics.feedback.labels(matched).inc()
        if trace is not None:
            self.metrics.traces.labels(trace.program_id).set(self.traces.held(trace.program_id))


def build_optimizer_app(
    topology: Topology,
    *,
    service_id: str = "optimizer",
    registry: ProgramRegistry | None = None,
) -> tuple[faust.App, OptimizerService]:
    """The Faust app of the optimizer service, and the service it runs."""
    service = OptimizerService(topology, service_id=service_id, registry=registry)
    names = service.names
    app = faust.App(
        f"{topology.name}-optimizer",
        broker=f"kafka://{topology.kafka.bootstrap_servers}",
        store="memory://",
        datadir=scratch_datadir(f"{topology.name}-optimizer"),
        web_enabled=False,
        broker_max_poll_records=500,
        stream_buffer_maxsize=1000,
        # A new service reads commands and feedback sent before it first ran;
        # commands already carried out are recognised by their id in the journal.
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
    )

    def raw(topic: str) -> Any:
        return app.topic(topic, key_serializer="raw", value_serializer="raw")

    async def control(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            await service.handle(
                event.key, event.value, Origin(message.topic, message.partition, message.offset)
            )
            yield None

    def follower(kind: type[Any]) -> Any:
        async def follow(stream: Any) -> AsyncIterator[None]:
            async for value in stream:
                service.observe(value, kind)
                yield None

        return follow

    async def serve() -> None:
        await service.run()

    app.agent(raw(names.control), concurrency=1, name="control")(control)
    app.agent(raw(names.inference_requests), name="requests")(follower(InferenceRequest))
    app.agent(raw(names.inference_results), name="results")(follower(InferenceResult))
    app.agent(raw(names.feedback), name="feedback")(follower(FeedbackRecord))
    app.task(serve)
    return app, service


def run_optimizer(
    topology: Topology,
    *,
    service_id: str = "optimizer",
    registry: ProgramRegistry | None = None,
    loglevel: str = "warning",
) -> None:
    """Create the topics, then run the optimizer service until SIGTERM or Ctrl-C."""
    topics = topology.topics
    asyncio.run(ensure_topics(topology.kafka.bootstrap_servers, topics))
    app, service = build_optimizer_app(topology, service_id=service_id, registry=registry)
    port = topology.optimizer.metrics_port
    if port is not None:
        start_http_server(port, addr=topology.metrics_host, registry=service.metrics.registry)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
