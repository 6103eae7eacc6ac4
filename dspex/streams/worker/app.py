"""The dspex worker: a Faust application built from a :class:`Topology`.

Each request channel is consumed by a
:class:`~dspex.streams.worker.consumer.BoundedConsumer` (aiokafka directly):
``<prefix>.inference.requests`` in consumer group ``<name>-inference``,
``<prefix>.eval.requests`` in ``<name>-evaluation``, each with its own
producer and its own bound, so a backlog on one never holds the other up. At
most ``inflight_limit`` records of a channel run at once, its partitions are
paused while that set stays full (a slow LM slows consumption instead of
growing memory), and an offset is committed only once its results are
delivered: at least once. Faust's agents carried the channels before; their
stream and acknowledgement machinery cost more CPU per request than all of
dspex's own work (see that module).

The Faust app (id ``<name>-worker``) runs the worker's life: its tasks,
signals and graceful stop (which drains the channels first). A
:class:`ReportAggregator` (a consumer group of its own, not a Faust table)
folds the scores of each eval run into its report on the compacted reports
topic. The program registry is followed by a plain Kafka consumer on the
programs topic (every worker reads all of it), so a new version applies while
the inference channel has any backlog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import start_http_server

from dspex.programs.lm.base import LM
from dspex.programs.state import ProgramRegistry
from dspex.streams._faust import (
    QuietWorker,
    broker_settings,
    install_event_loop,
    scratch_datadir,
    tune_gc,
)
from dspex.streams._shutdown import StopDeadline
from dspex.streams.catalog import ProgramCatalog, ProgramFollower
from dspex.streams.metrics import WorkerMetrics
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.streams.worker.aggregator import ReportAggregator
from dspex.streams.worker.consumer import BoundedConsumer, Handler
from dspex.streams.worker.evaluation import EvaluationHandler
from dspex.streams.worker.inference import InferenceHandler
from dspex.topologies.settings import client_options
from dspex.topologies.topology import LMPool, Topology

__all__ = [
    "WorkerRuntime",
    "build_app",
    "default_worker_id",
    "evaluation_group",
    "inference_group",
    "new_faust_app",
    "run_worker",
]

log = logging.getLogger(__name__)

#: Records fetched and buffered per partition, as a multiple of the in-flight limit.
_FETCH_FACTOR = 16
#: Share of the stop deadline that requests in flight get to finish.
_DRAIN_SHARE = 0.8
#: Seconds between updates of lag, paused-partition and breaker gauges.
_SAMPLE_INTERVAL_S = 2.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def inference_group(topology: Topology) -> str:
    """The consumer group of the workers' inference channel."""
    return f"{topology.name}-inference"


def evaluation_group(topology: Topology) -> str:
    """The consumer group of the workers' evaluation channel."""
    return f"{topology.name}-evaluation"


class WorkerRuntime:
    """What a worker holds while it runs: catalog, LM clients, the handler."""

    def __init__(
        self, topology: Topology, *, worker_id: str, registry: ProgramRegistry | None = None
    ) -> None:
        self.topology = topology
        self.names = TopicNames(topology.topics.prefix)
        self.catalog = ProgramCatalog(registry=registry)
        self.ready = asyncio.Event()
        self.lms = LMPool(topology)
        self.metrics = WorkerMetrics.create()
        self.catalog.listeners.append(
            lambda _pid, _version: self.metrics.programs.set(len(self.catalog.programs()))
        )
        self.handler = InferenceHandler(
            metrics=self.metrics,
            catalog=self.catalog,
            names=self.names,
            worker_id=worker_id,
            lm_for=self.lm_for,
            request_timeout_s=topology.request_timeout_s,
        )
        self.evaluator = EvaluationHandler(
            metrics=self.metrics,
            catalog=self.catalog,
            names=self.names,
            worker_id=worker_id,
            lm_for=self.lm_for,
            request_timeout_s=topology.request_timeout_s,
            registry=registry,
        )

    def lm_for(self, program_id: str) -> LM | None:
        """The LM client of a served program, created on first use and shared."""
        return self.lms.for_program(program_id)

    async def sample(self, channels: list[BoundedConsumer], admin: AIOKafkaAdminClient) -> None:
        """Update the gauges that are states rather than events.

        Breaker states, and each channel's consumer lag on the partitions this
        worker owns: end offset minus the group's committed offset, as
        ``kafka-consumer-groups`` shows it. (Paused partitions are counted by
        the channels themselves, as they pause.)
        """
        for lm in self.lms.clients():
            self.metrics.set_circuit_state(lm.provider, lm.model, lm.breaker_state)
        for channel in channels:
            if not channel.started:
                continue
            lag = 0
            owned = list(channel.consumer.assignment())
            if owned:
                ends = await channel.consumer.end_offsets(owned)
                committed = await admin.list_consumer_group_offsets(
                    channel.group_id, partitions=owned
                )
                for tp in owned:
                    done = committed.get(tp)
                    lag += max(0, ends.get(tp, 0) - (done.offset if done is not None else 0))
            self.metrics.consumer_lag.labels(channel.channel, channel.topic).set(lag)

    async def run(self) -> None:
        """Follow the registry until cancelled, then close the LM clients."""
        follower = ProgramFollower(
            self.catalog,
            bootstrap_servers=self.topology.kafka,
            topic=self.names.programs,
        )
        try:
            async with follower:
                log.info("registry loaded: %s", self.catalog.programs())
                self.ready.set()
                await asyncio.Event().wait()  # until the worker stops
        finally:
            await self.lms.aclose()


def new_faust_app(topology: Topology, *, app_class: type[faust.App] = faust.App) -> faust.App:
    """The worker's Faust app for ``topology``, configured, with no agents yet.

    The worker runs no Faust agent; the consumer settings here are the ones its
    agents had, kept for the bare Faust agent that ``bench.pipeline_overhead``
    measures beside the worker (what the channels would cost on Faust's agents).
    """
    inflight = topology.inflight_limit
    app_id = f"{topology.name}-worker"
    return app_class(
        app_id,
        **broker_settings(topology.kafka),
        store="memory://",
        datadir=scratch_datadir(app_id),
        web_enabled=False,
        # Bounded fetching: one poll returns at most a few times the in-flight
        # limit, and a full per-partition buffer pauses the partition. A poll
        # of exactly the limit starves the actors between fetch cycles.
        broker_max_poll_records=_FETCH_FACTOR * inflight,
        stream_buffer_maxsize=_FETCH_FACTOR * inflight,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=topology.session_timeout_s,
        broker_heartbeat_interval=max(1.0, topology.session_timeout_s / 5),
        topic_allow_declare=False,
        topic_disable_leader=True,
        # Faust's default (2.8 s) makes a crashed worker's successor re-run
        # seconds of answered requests, each a paid LM call.
        broker_commit_interval=topology.commit_interval_s,
    )


class _WorkerApp(faust.App):
    """The worker's Faust app: its stop drains the channels' consumers first.

    Every channel finishes what it has in flight, side by side, before the
    app's tasks (the LM clients among them) are cancelled.
    """

    channels: tuple[BoundedConsumer, ...] = ()

    async def on_stop(self) -> None:
        await asyncio.gather(*(channel.stop() for channel in self.channels))
        await super().on_stop()


def build_app(
    topology: Topology,
    *,
    worker_id: str | None = None,
    registry: ProgramRegistry | None = None,
) -> tuple[faust.App, WorkerRuntime]:
    """The Faust app of a worker serving ``topology``, and its runtime state."""
    runtime = WorkerRuntime(topology, worker_id=worker_id or default_worker_id(), registry=registry)
    names = runtime.names
    app = new_faust_app(topology, app_class=_WorkerApp)
    assert isinstance(app, _WorkerApp)
    app.producer_only = True  # Faust consumes nothing here: the channels have their own clients

    def channel(
        name: str, topic: str, group: str, handler: Handler, results: str, seed: str | None = None
    ) -> BoundedConsumer:
        return BoundedConsumer(
            topic=topic,
            group_id=group,
            bootstrap_servers=topology.kafka,
            handle=handler,
            fallback_topic=results,
            inflight_limit=topology.inflight_limit,
            commit_interval_s=topology.commit_interval_s,
            session_timeout_s=topology.session_timeout_s,
            # What is in flight finishes within this; committing and leaving the
            # group come after it, inside the stop deadline.
            drain_timeout_s=_DRAIN_SHARE * topology.stop_timeout_s,
            metrics=runtime.metrics,
            channel=name,
            seed_group=seed,
            exactly_once=topology.processing_guarantee == "exactly_once",
        )

    app.channels = (
        channel(
            "inference",
            names.inference_requests,
            inference_group(topology),
            runtime.handler.handle,
            names.inference_results,
        ),
        channel(
            "evaluation",
            names.eval_requests,
            evaluation_group(topology),
            runtime.evaluator.handle,
            names.eval_scores,
            # Faust's agents read this channel, under the inference group, before.
            seed=inference_group(topology),
        ),
    )

    async def follow_registry() -> None:
        await runtime.run()

    async def serve() -> None:
        await runtime.ready.wait()
        for consumer in app.channels:
            await consumer.start()

    async def sample_gauges() -> None:
        admin = AIOKafkaAdminClient(**client_options(topology.kafka))
        await admin.start()
        try:
            while True:
                try:
                    await runtime.sample(list(app.channels), admin)
                except (KafkaError, OSError, RuntimeError) as exc:  # a gauge may lag; never stop
                    log.debug("sampling gauges failed: %s", exc)
                await asyncio.sleep(_SAMPLE_INTERVAL_S)
        finally:
            await admin.close()

    async def aggregate() -> None:
        while True:  # a broker outage must not end the worker's reports for good
            try:
                await ReportAggregator(
                    bootstrap_servers=topology.kafka,
                    names=names,
                    group_id=f"{topology.name}-eval-reports",
                ).run()
            except (KafkaError, OSError) as exc:
                log.warning("eval-report aggregator stopped (%s); restarting", exc)
                await asyncio.sleep(2.0)

    app.task(follow_registry)
    app.task(serve)
    app.task(aggregate)
    app.task(sample_gauges)
    return app, runtime


def run_worker(
    topology: Topology,
    *,
    worker_id: str | None = None,
    registry: ProgramRegistry | None = None,
    loglevel: str = "warning",
) -> None:
    """Create the topics, then run the worker until SIGTERM or Ctrl-C."""
    install_event_loop(topology.event_loop)
    topics = topology.topics
    report = asyncio.run(ensure_topics(topology.kafka, topics))
    for name, problem in report.mismatched:
        log.warning("topic %s differs from the plan: %s", name, problem)
    app, runtime = build_app(topology, worker_id=worker_id, registry=registry)
    if topology.metrics_port is not None:
        # A daemon thread; it ends with the process. The interface is the
        # topology's: loopback by default, all of them where Prometheus scrapes
        # from another host or container (docker-compose.yml).
        start_http_server(
            topology.metrics_port, addr=topology.metrics_host, registry=runtime.metrics.registry
        )
    worker = _Worker(app, stop_timeout_s=topology.stop_timeout_s, loglevel=loglevel, quiet=True)
    tune_gc()
    worker.execute_from_commandline()


class _Worker(QuietWorker):
    """Faust's worker, quiet, with a deadline on the graceful stop a signal starts."""

    def __init__(self, app: faust.App, *, stop_timeout_s: float, **options: Any) -> None:
        super().__init__(app, **options)
        # Every Kafka client of the worker runs on its one event loop.
        self._deadline = StopDeadline(stop_timeout_s, lambda: [("main", app.loop)])

    def _on_sigterm(self) -> None:
        self._deadline.arm()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._deadline.arm()
        super()._on_sigint()
