"""The broker as a container, where a Docker engine answers: the Apache Kafka image.

Same release and same settings as the broker ``dspex broker`` runs: the image
takes ``infra/kafka/server.properties`` as ``KAFKA_*`` variables (dots become
``_``, underscores ``__``, dashes ``___``), with the listeners rewritten for a
container whose port 9092 is published on a free loopback port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dspex._local._process import free_port
from dspex._local.broker import DEFAULT_KAFKA_VERSION, broker_answers_metadata

__all__ = ["IMAGE", "container_environment", "kafka_container"]

IMAGE = f"apache/kafka:{DEFAULT_KAFKA_VERSION}"
TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "kafka" / "server.properties"
#: Seconds the container may take to answer metadata requests.
START_TIMEOUT_S = 120


def container_environment(host_port: int) -> dict[str, str]:
    """The image's environment for the local broker's settings, reachable on ``host_port``."""
    properties: dict[str, str] = {}
    for line in TEMPLATE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    properties.update(
        {
            "listeners": "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{host_port}",
            "controller.quorum.voters": "1@localhost:9093",
            "log.dirs": "/var/lib/kafka/data",
        }
    )
    return {_variable(key): value for key, value in properties.items()}


def _variable(key: str) -> str:
    return "KAFKA_" + key.replace("_", "__").replace("-", "___").replace(".", "_").upper()


@contextmanager
def kafka_container() -> Iterator[str]:
    """Run the container; yields its bootstrap servers once it answers (stops it after)."""
    from testcontainers.core.container import DockerContainer

    port = free_port()
    container = DockerContainer(IMAGE).with_bind_ports(9092, port)
    for name, value in container_environment(port).items():
        container = container.with_env(name, value)
    with container:
        bootstrap = f"127.0.0.1:{port}"
        asyncio.run(_until_it_answers(bootstrap))
        yield bootstrap


async def _until_it_answers(bootstrap: str) -> None:
    async with asyncio.timeout(START_TIMEOUT_S):
        while not await broker_answers_metadata(bootstrap):  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.5)
