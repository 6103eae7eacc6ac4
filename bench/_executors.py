"""The DSPEx side the optimizer and DSPy-comparison benchmarks share.

A *deployment* is what one measured run needs: a topology file serving one
program id with its LM at the run's server and an explicit in-flight limit;
for a cluster run also topics under a fresh prefix, the program registered,
and ``dspex worker`` processes (their output in log files next to the
topology). :func:`warm_up` brings a deployment to steady state before
anything is timed: the workers' group stable with every worker, then
throw-away rounds until every worker has scored part of one round (a worker
still joining would rebalance the group during the measurement).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

import dspex
from bench._deployment import read_json_records, write_topology
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from dspex.topologies.topology import Topology

__all__ = [
    "Deployment",
    "WarmUpFailed",
    "cpu_s",
    "deployment",
    "lm_stats",
    "topology_lm",
    "wait_for_group",
    "warm_up",
]

WARMUP_TIMEOUT_S = 180.0
#: The LM's name in every topology written here.
LM_NAME = "lm"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def lm_stats(lm_url: str) -> dict[str, int]:
    """The LM server's ``/stats``: requests served before this one, most at once."""
    async with httpx.AsyncClient() as http:
        response = await http.get(lm_url.removesuffix("/v1") + "/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats


@dataclass
class Deployment:
    prefix: str
    topology: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    created_topics: list[str] = field(default_factory=list)

    @property
    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]


def topology_lm(found: Deployment) -> dspex.LM:
    """The LM client exactly as a worker builds it from the deployment's topology."""
    return Topology.from_file(found.topology).lms[LM_NAME].build()


def _start_worker(topology: Path, worker_id: str) -> subprocess.Popen[bytes]:
    log = topology.with_name(f"{worker_id}.log").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", worker_id],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()  # the child holds its own descriptor


def _stop_workers(workers: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """SIGTERM all at once, then SIGKILL any still running after 60 s; logs shown on failure."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker, log in zip(workers, logs, strict=True):
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
        if code != 0:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            print(f"worker {log.stem} exited with {code}:\n{tail}", file=sys.stderr)


@contextlib.asynccontextmanager
async def deployment(
    *,
    workers: int,
    bootstrap: str,
    lm_url: str,
    program: dspex.Module,
    program_id: str,
    workdir: Path,
    partitions: int,
    inflight_limit: int,
    stem: str = "bench",
) -> AsyncIterator[Deployment]:
    """A topology for one run; with ``workers``, also topics, registration and workers.

    The topics are deleted and the workers stopped (SIGTERM) on the way out.
    """
    prefix = f"{stem}{uuid.uuid4().hex[:8]}"
    topology = write_topology(
        workdir / f"{prefix}.yaml",
        prefix=prefix,
        bootstrap=bootstrap,
        lm_url=lm_url,
        partitions=partitions,
        programs=[program_id],
        default_lm=LM_NAME,
        inflight_limit=inflight_limit,
    )
    found = Deployment(prefix, topology)
    if workers == 0:
        yield found
        return
    report = await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=partitions))
    found.created_topics = report.created
    try:
        await register_program(
            bootstrap, TopicNames(prefix), program_id, ProgramSpec.from_program(program)
        )
        for index in range(workers):
            found.workers.append(_start_worker(topology, f"{prefix}-w{index}"))
        yield found
    finally:
        logs = [topology.with_name(f"{prefix}-w{i}.log") for i in range(len(found.workers))]
        _stop_workers(found.workers, logs)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(found.created_topics)
        finally:
            await admin.close()


class WarmUpFailed(Exception):
    """The deployment did not come up whole; a fresh one is tried."""


async def wait_for_group(
    bootstrap: str, group: str, members: int, timeout_s: float = WARMUP_TIMEOUT_S
) -> None:
    """Wait until the workers' consumer group is stable with ``members`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaError):
                [response] = await admin.describe_consumer_groups([group])
                [described] = response.to_object()["groups"]
                if described["state"] == "Stable" and len(described["members"]) == members:
                    return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    raise WarmUpFailed(f"group {group} did not become stable with {members} members")


async def warm_up(
    found: Deployment,
    bootstrap: str,
    run_round: Callable[[int], Awaitable[Any]],
    timeout_s: float = WARMUP_TIMEOUT_S,
) -> int:
    """Run throw-away rounds (``run_round(n)``) until every worker scored some of one.

    Without workers (a local run) one round is run. Returns the rounds run.

    Raises:
        WarmUpFailed: The group did not form, or the rounds went on past ``timeout_s``.
    """
    if found.workers:
        await wait_for_group(bootstrap, f"{found.prefix}-evaluation", len(found.workers))
    deadline = time.monotonic() + timeout_s
    rounds = 0
    seen_runs: set[str] = set()
    while True:
        await run_round(rounds)
        rounds += 1
        if not found.workers:
            return rounds
        scores = await read_json_records(bootstrap, TopicNames(found.prefix).eval_scores)
        runs: dict[str, set[str]] = {}
        for score in scores:
            runs.setdefault(score["run_id"], set()).add(score["worker_id"])
        latest = set(runs) - seen_runs
        seen_runs |= set(runs)
        if any(len(runs[run]) == len(found.workers) for run in latest):
            return rounds
        if time.monotonic() > deadline:
            raise WarmUpFailed(f"not every worker of {found.prefix} scored within the warm-up")
