"""What several benchmarks set up the same way: a private broker, the ``echo`` program."""

from __future__ import annotations

from pathlib import Path

import yaml

import dspex
from dspex._local._process import free_port
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings

__all__ = ["echo_deployment", "start_private_broker"]


async def start_private_broker(workdir: Path) -> KafkaBroker:
    """A broker of the benchmark's own on free ports, data under ``workdir`` (caller stops it)."""
    broker = KafkaBroker(
        BrokerSettings(port=free_port(), controller_port=free_port(), data_dir=workdir / "kafka")
    )
    await broker.start()
    return broker


async def echo_deployment(
    bootstrap: str, lm_url: str, prefix: str, workdir: Path, *, partitions: int, inflight: int
) -> Path:
    """Topics, the registered ``echo`` program and a topology file for its workers."""
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=partitions))
    program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    await register_program(bootstrap, TopicNames(prefix), "echo", ProgramSpec.from_program(program))
    topology = workdir / f"{prefix}.yaml"
    topology.write_text(
        yaml.safe_dump(
            {
                "name": prefix,
                "kafka": {"bootstrap_servers": bootstrap},
                "topics": {"prefix": prefix, "partitions": partitions},
                "lms": {"instant": {"model": "instant", "base_url": lm_url}},
                "inflight_limit": inflight,
            }
        )
    )
    return topology
