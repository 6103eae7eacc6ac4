"""Shared fixtures: a real Kafka broker, the real local LM, and isolation helpers.

The broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS``; the Apache Kafka
image (same release and settings as ``dspex broker``'s) through testcontainers
when a Docker daemon answers (tests/support/container.py); otherwise the
local Apache Kafka broker that ``dspex broker`` runs, started once for the
session on free ports in a temporary data directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from hypothesis import settings

from dspex._local._process import free_port
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex._local.lm import LMServerSettings, LocalLMServer
from dspex.streams.topics import create_topics
from tests.support.container import kafka_container

TopicFactory = Callable[..., Awaitable[str]]

# No per-example time limit: Hypothesis's default (200 ms) fails a correct test
# when a loaded machine is slow, and a test that fails by chance is a bug.
settings.register_profile("dspex", deadline=None)
settings.load_profile("dspex")


def docker_daemon_answers() -> bool:
    """Whether a Docker engine answers (the client alone is not enough).

    Asks the docker CLI, so DOCKER_HOST and docker contexts are honoured.
    """
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for the whole session."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if from_env:
        yield from_env
        return
    with ExitStack() as stack:
        if docker_daemon_answers():
            yield stack.enter_context(kafka_container())
            return
        broker = KafkaBroker(
            BrokerSettings(
                port=free_port(),
                controller_port=free_port(),
                data_dir=tmp_path_factory.mktemp("kafka"),
            )
        )
        asyncio.run(broker.start())
        stack.callback(broker.stop)
        yield broker.settings.bootstrap_servers


@pytest.fixture
async def new_topic(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Create uniquely named topics for one test; they are deleted afterwards.

    Usage: ``topic = await new_topic(partitions=3, config={"cleanup.policy": "compact"})``.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
    await admin.start()
    created: list[str] = []

    async def create(partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        already = await create_topics(
            admin, [NewTopic(name, partitions, 1, topic_configs=config or {})]
        )
        assert not already, f"topic {name} existed before the test"
        created.append(name)
        return name

    try:
        yield create
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


@pytest.fixture
async def topics(new_topic: TopicFactory) -> tuple[str, str]:
    """A source and a sink topic of one partition each (a channel consumer's in and out)."""
    return await new_topic(partitions=1), await new_topic(partitions=1)


@pytest.fixture
def group_id() -> str:
    """A consumer group id no other test uses."""
    return f"test-group-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def local_lm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of the real local LM server."""
    server = LocalLMServer(
        LMServerSettings(port=free_port(), state_dir=tmp_path_factory.mktemp("lm"))
    )
    asyncio.run(server.start())
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private DSPEX_STATE_DIR, so CLI tests never touch the user's services."""
    path = tmp_path / "state"
    monkeypatch.setenv("DSPEX_STATE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running."""
    before = set(threading.enumerate())
    yield
    leaked = [
        thread
        for thread in threading.enumerate()
        if thread not in before
        and thread.is_alive()
        and not thread.daemon
        # asyncio's default executor threads belong to the session loop.
        and not thread.name.startswith("asyncio_")
    ]
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"
