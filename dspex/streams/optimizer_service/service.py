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

:class:`OptimizerService` holds the state and wires its parts together:
``commands`` carries out control commands, ``runner`` runs the jobs, and
``publisher`` writes every record the service produces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import start_http_server

from dspex.errors import DSPExError, WireFormatError
from dspex.programs.state import ProgramRegistry
from dspex.streams._faust import (
    QuietWorker,
    ReadCommittedApp,
    broker_settings,
    install_event_loop,
    scratch_datadir,
)
from dspex.streams.catalog import ProgramCatalog, ProgramFollower
from dspex.streams.metrics import OptimizerMetrics
from dspex.streams.optimizer_service.commands import CommandHandler
from dspex.streams.optimizer_service.jobs import Journal
from dspex.streams.optimizer_service.online import TraceBook
from dspex.streams.optimizer_service.publisher import Publisher
from dspex.streams.optimizer_service.runner import JobRunner
from dspex.streams.records import (
    CandidateRecord,
    ControlCommand,
    FeedbackRecord,
    InferenceRequest,
    InferenceResult,
    OptimizerEvent,
    decode,
)
from dspex.streams.topics import TopicNames, ensure_topics, partitions_of
from dspex.streams.worker.inference import Origin, dead_letter
from dspex.topologies.settings import client_options
from dspex.topologies.topology import LMPool, Topology

__all__ = ["OptimizerService", "build_optimizer_app", "run_optimizer"]

log = logging.getLogger(__name__)


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
        self._bootstrap = topology.kafka
        self._publisher = Publisher(
            bootstrap_servers=self._bootstrap,
            names=self.names,
            service_id=service_id,
            journal=self.journal,
            catalog=self.catalog,
        )
        self._runner = JobRunner(
            topology,
            publisher=self._publisher,
            catalog=self.catalog,
            journal=self.journal,
            traces=self.traces,
            metrics=self.metrics,
            lms=self.lms,
            registry=registry,
        )
        self._commands = CommandHandler(
            publisher=self._publisher,
            runner=self._runner,
            catalog=self.catalog,
            journal=self.journal,
            metrics=self.metrics,
        )

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> None:
        """Load catalog and journal, resume running jobs, then serve until cancelled."""
        await self._publisher.start()
        follower = ProgramFollower(
            self.catalog, bootstrap_servers=self._bootstrap, topic=self.names.programs
        )
        try:
            async with follower:
                await self._replay()
                for job in self.journal.jobs.values():
                    if job.status == "running":
                        log.info("resuming job %s of %s", job.job_id, job.program_id)
                        self._runner.start(job)
                self._runner.count_jobs()
                self.ready.set()
                await asyncio.Event().wait()
        finally:
            await self._runner.stop_all()
            await self._publisher.stop()
            await self.lms.aclose()

    async def _replay(self) -> None:
        """Apply every journal record on the candidates topic, oldest first."""
        topic = self.names.candidates
        consumer = AIOKafkaConsumer(**client_options(self._bootstrap), enable_auto_commit=False)
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

    # -- commands ----------------------------------------------------------

    async def handle(self, key: bytes | None, value: bytes | None, origin: Origin) -> None:
        """Carry out one record of the control topic; a bad one is dead-lettered."""
        await self.ready.wait()
        try:
            command = decode(value or b"", expect=ControlCommand)
        except WireFormatError as exc:
            await self._dead_letter(exc, key, value, origin)
            return
        try:
            await self._commands.dispatch(command)
        except DSPExError as exc:
            log.warning("command %s (%s) failed: %s", command.command_id, command.command, exc)
            await self._publisher.event("command_failed", command, message=str(exc)[:2000])

    async def _dead_letter(
        self, error: WireFormatError, key: bytes | None, value: bytes | None, origin: Origin
    ) -> None:
        letter = dead_letter(
            error, key, value, origin, self.names, worker_id=self.service_id, metrics=None
        )
        await self._publisher.send(letter.topic, letter.value, key=letter.key)

    # -- online traces -------------------------------------------------------

    async def take_feedback(self, key: bytes | None, value: bytes | None, origin: Origin) -> None:
        """Feed one record of the feedback topic to the trace book; a bad one is dead-lettered.

        The feedback topic is the service's own input (users write it), so an
        unreadable record goes where the workers' go; requests and results it
        only follows are the workers' to judge.
        """
        try:
            feedback = decode(value or b"", expect=FeedbackRecord)
        except WireFormatError as exc:
            await self._dead_letter(exc, key, value, origin)
            return
        self._trace(feedback)

    def observe(self, value: bytes | None, kind: type[Any]) -> None:
        """Feed a request, result or feedback record to the trace book."""
        try:
            record = decode(value or b"", expect=kind)
        except WireFormatError:
            return  # the workers dead-letter bad requests; others are not ours to judge
        self._trace(record)

    def _trace(self, record: InferenceRequest | InferenceResult | FeedbackRecord) -> None:
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
    app = ReadCommittedApp(
        f"{topology.name}-optimizer",
        **broker_settings(topology.kafka),
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

    def input_of(handle: Callable[[bytes | None, bytes | None, Origin], Awaitable[None]]) -> Any:
        """An agent for one of the service's own inputs: ``handle`` each record."""

        async def take(stream: Any) -> AsyncIterator[None]:
            async for event in stream.events():
                message = event.message
                origin = Origin(message.topic, message.partition, message.offset)
                await handle(event.key, event.value, origin)
                yield None

        return take

    def follower(kind: type[Any]) -> Any:
        async def follow(stream: Any) -> AsyncIterator[None]:
            async for value in stream:
                service.observe(value, kind)
                yield None

        return follow

    async def serve() -> None:
        await service.run()

    app.agent(raw(names.control), concurrency=1, name="control")(input_of(service.handle))
    app.agent(raw(names.feedback), name="feedback")(input_of(service.take_feedback))
    app.agent(raw(names.inference_requests), name="requests")(follower(InferenceRequest))
    app.agent(raw(names.inference_results), name="results")(follower(InferenceResult))
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
    install_event_loop(topology.event_loop)
    topics = topology.topics
    asyncio.run(ensure_topics(topology.kafka, topics))
    app, service = build_optimizer_app(topology, service_id=service_id, registry=registry)
    port = topology.optimizer.metrics_port
    if port is not None:
        start_http_server(port, addr=topology.metrics_host, registry=service.metrics.registry)
    QuietWorker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
