"""`dspex up` / `dspex down`: the whole system on one machine, for the demo.

Up starts, each only if not already running: the Kafka broker, the local LM
server, the topics, one worker serving ``examples/topology.yaml``, and
registers the example programs (``examples/programs.py``) whose spec differs
from the active version, and writes the worker's Prometheus file-discovery
target (``infra/prometheus/targets/worker-<name>.json``, or under
``$DSPEX_PROMETHEUS_TARGETS_DIR``). Down stops the worker, the LM server and
the broker, and removes the target.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from dspex._local._paths import default_state_dir, infra_dir
from dspex._local._process import ManagedService, ProgressCallback, ServiceStatus
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex._local.lm import LMServerSettings, LocalLMServer
from dspex.errors import ConfigurationError
from dspex.programs.module import Module
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import load_catalog, register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.topology import Topology

__all__ = ["WorkerService", "down", "up"]


def examples_dir() -> Path:
    return infra_dir().parent / "examples"


class WorkerService(ManagedService):
    """A ``dspex worker`` process in the background; ready when ``/metrics`` answers."""

    service = "dspex worker"

    def __init__(self, topology_path: Path, *, state_dir: Path | None = None) -> None:
        self.topology_path = topology_path.resolve()
        self.topology = Topology.from_file(self.topology_path)
        if self.topology.metrics_port is None:
            raise ConfigurationError(
                f"{topology_path}: `dspex up` needs metrics_port to know the worker is ready"
            )
        state = (state_dir or default_state_dir()) / "worker"
        super().__init__(
            state_path=state / f"{self.topology.name}.json",
            log_path=state / f"{self.topology.name}.log",
            host=self.topology.metrics_host,
            port=self.topology.metrics_port,
            start_timeout_s=120.0,
            stop_timeout_s=60.0,
        )

    @property
    def marker(self) -> str:
        return f"worker {self.topology_path}"

    def ports(self) -> list[int]:
        return [self.port]

    async def prepare(self, progress: ProgressCallback) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dspex", "worker", str(self.topology_path)]

    async def is_ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"http://{self.host}:{self.port}/metrics")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and "dspex_registry_programs" in response.text


def example_programs() -> dict[str, Callable[[], Module]]:
    """The builders in ``examples/programs.py``, by program id."""
    path = examples_dir() / "programs.py"
    spec = importlib.util.spec_from_file_location("dspex_example_programs", path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot load the example programs from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    programs: dict[str, Callable[[], Module]] = module.EXAMPLE_PROGRAMS
    return programs


def default_topology() -> Path:
    return examples_dir() / "topology.yaml"


def local_services(topology_path: Path) -> tuple[Topology, KafkaBroker, LocalLMServer]:
    """The topology and the local broker and LM server it points at.

    Raises:
        ConfigurationError: The topology's broker or default LM is not on loopback.
    """
    topology = Topology.from_file(topology_path)
    host, _, port = topology.kafka.bootstrap_servers.partition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit() or "," in port:
        raise ConfigurationError(
            f"{topology_path}: `dspex up` runs a local broker, but the topology names Kafka "
            f"at {topology.kafka.bootstrap_servers}"
        )
    lm_name = topology.default_lm or next(iter(topology.lms), None)
    base_url = topology.lms[lm_name].base_url if lm_name else None
    url = httpx.URL(base_url or "")
    if url.host not in ("127.0.0.1", "localhost") or url.port is None:
        raise ConfigurationError(
            f"{topology_path}: `dspex up` runs the local LM, but the default LM is at {base_url}"
        )
    broker = KafkaBroker(BrokerSettings(port=int(port)))
    lm = LocalLMServer(LMServerSettings(port=url.port))
    return topology, broker, lm


async def up(progress: ProgressCallback, topology_path: Path | None = None) -> list[str]:
    """Start everything; return one line per step for the user."""
    lines: list[str] = []
    topology_path = topology_path or default_topology()
    topology, broker, lm = local_services(topology_path)
    servers = topology.kafka.bootstrap_servers
    lines.append(_started(await broker.start(progress)))
    lines.append(_started(await lm.start(progress)))
    progress("creating topics")
    topics = topology.topics
    report = await ensure_topics(servers, topics)
    lines.append(f"topics: {len(report.created)} created, {len(report.existing)} existed")
    names = TopicNames(topology.topics.prefix)
    progress("registering the example programs")
    catalog = await load_catalog(servers, names)
    for program_id, build in example_programs().items():
        spec = ProgramSpec.from_program(build())
        active = catalog.programs().get(program_id)
        if active is not None and catalog.record(program_id).spec == spec:
            lines.append(f"program {program_id}: version {active} is current")
            continue
        record = await register_program(servers, names, program_id, spec)
        lines.append(f"program {program_id}: registered version {record.version}")
    lines.append(_started(await WorkerService(topology_path).start(progress)))
    target = prometheus_target(topology)
    target.parent.mkdir(parents=True, exist_ok=True)
    address = f"{topology.metrics_host}:{topology.metrics_port}".replace("0.0.0.0", "127.0.0.1")
    entry = [{"targets": [address], "labels": {"deployment": topology.name}}]
    # Written under another name, then renamed: Prometheus never reads half a file.
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    partial.replace(target)
    lines.append(f"prometheus target: {target}")
    return lines


def prometheus_target(topology: Topology) -> Path:
    """Where ``dspex up`` writes the worker's file-discovery target for Prometheus."""
    folder = os.environ.get("DSPEX_PROMETHEUS_TARGETS_DIR")
    base = Path(folder) if folder else infra_dir() / "prometheus" / "targets"
    return base / f"worker-{topology.name}.json"


def down(topology_path: Path | None = None) -> list[str]:
    """Stop the worker, the LM server and the broker; one line per service."""
    topology_path = topology_path or default_topology()
    topology, broker, lm = local_services(topology_path)
    prometheus_target(topology).unlink(missing_ok=True)
    services: list[ManagedService] = [WorkerService(topology_path), lm, broker]
    lines = []
    for service in services:
        before = service.stop()
        lines.append(f"{service.service}: {'stopped' if before.running else 'was not running'}")
    return lines


def _started(status: ServiceStatus) -> str:
    record = status.record
    where = f" on {record.address} (pid {record.pid})" if record is not None else ""
    state = "already running" if status.already_running else "started"
    return f"{status.service}: {state}{where}"
