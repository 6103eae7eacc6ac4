"""How a dspex process runs a Faust app: its event loop and its scratch directory.

**Event loop.** The worker and the optimizer service run on uvloop where it is
installed (``event_loop: uvloop`` in the topology, the default): a worker's
time per request is mostly event-loop bookkeeping (tasks, futures, socket
callbacks for Kafka and the LM), which uvloop does in C. ``asyncio`` keeps
the standard loop.

**No spinner.** Faust's worker draws a progress spinner on stdout that turns
at every log record, and to see every record it sets the root logger to
DEBUG: each debug call of Faust, mode and aiokafka then builds a log record.
That cost a bare Faust agent ~0.1 ms of CPU per event (0.37 → 0.28 ms,
``python -m bench._cpu faust``), and wrote terminal escapes into log files.
:class:`QuietWorker` runs without it; the log level stays the one asked for.

**Garbage collection.** A worker allocates many short-lived objects per
request (records, pydantic models, futures) and frees nearly all of them by
reference counting; with dozens of requests in flight, the collector's default
first-generation threshold (700 net allocations) still ran a collection every
few requests, each walking the young objects, and now and then a full one over
everything Faust, aiokafka and pydantic keep. Measured on the request handler
alone: 0.11 ms of CPU per request in the collector. :func:`tune_gc` moves what
start-up built out of the collector's sight (``gc.freeze``) and raises the
first threshold; cycles are still collected, in fewer, larger passes.

**Scratch directory.** Faust creates ``<app id>-data`` in the current directory even when every
table lives in memory, as every DSPEx app's does. A worker started from a
checkout or a service's working directory would leave one behind per app id;
each process gets a private temporary directory instead, removed at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from dspex.topologies.settings import KafkaSettings

log = logging.getLogger(__name__)

__all__ = [
    "QuietWorker",
    "ReadCommittedApp",
    "broker_settings",
    "install_event_loop",
    "scratch_datadir",
    "tune_gc",
]

#: Net allocations of container objects between two young-generation collections.
_GC_YOUNG_THRESHOLD = 10_000


class QuietWorker(faust.Worker):
    """Faust's worker without the terminal spinner (and the DEBUG root logger it needs)."""

    def __init__(self, app: faust.App, **options: Any) -> None:
        super().__init__(app, **options)
        self.spinner = None


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with consumers that read committed records only."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        # Faust reads committed records only inside its own transactions
        # (processing_guarantee exactly_once, which the services do not use):
        # the flag it derives the isolation level from, set for the moment.
        consumer = self.consumer
        kept = consumer.in_transaction
        consumer.in_transaction = True
        try:
            return super()._create_worker_consumer(transport)
        finally:
            consumer.in_transaction = kept


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class _ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class ReadCommittedApp(faust.App):
    """A Faust app whose agents see only committed records.

    Workers with ``processing_guarantee: exactly_once`` write results in
    transactions; an aborted one must never reach the optimizer service's
    traces. The app itself processes at least once, as before.
    """

    def _new_transport(self) -> Any:
        return _ReadCommittedTransport(self.conf.broker_consumer, self)


def broker_settings(kafka: KafkaSettings) -> dict[str, Any]:
    """A Faust app's ``broker`` and ``broker_credentials`` for ``kafka``."""
    settings: dict[str, Any] = {"broker": f"kafka://{kafka.bootstrap_servers}"}
    options = kafka.client_options()
    protocol = kafka.security_protocol
    if protocol.startswith("SASL_"):
        settings["broker_credentials"] = faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            ssl_context=options.get("ssl_context"),
            mechanism=kafka.sasl_mechanism,
        )
    elif protocol == "SSL":
        settings["broker_credentials"] = faust.SSLCredentials(options["ssl_context"])
    return settings


def scratch_datadir(app_id: str) -> Path:
    """A fresh directory for ``app_id``'s Faust data, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=f"dspex-{app_id}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def install_event_loop(kind: Literal["uvloop", "asyncio"]) -> str:
    """Make new event loops of this process ``kind`` ones; the kind actually used.

    Call before the Faust worker starts: Faust and its Kafka consumer thread
    create their loops through the policy set here. Without uvloop installed,
    the standard loop is used and a warning says so.
    """
    if kind == "asyncio":
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        log.warning("event_loop uvloop: uvloop is not installed; using asyncio's loop")
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def tune_gc() -> None:
    """Set the collector up for serving: freeze what exists now, collect the young less often.

    Call once start-up is done (imports, the app built), before records flow.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)
