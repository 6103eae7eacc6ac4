"""docker-compose.yml parses with `docker compose config` and references only real things.

No Docker engine runs here; `docker compose config` needs only the client and
its compose plugin (Makefile builds the plugin into .venv where it is missing).
What the services are configured with is read from the file itself, so those
checks need no Docker at all; every ``DSPEX_*`` variable the compose file,
the Dockerfile or the docs name must be one dspex reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from dspex._local.broker import BrokerSettings
from dspex._local.lm import LMServerSettings
from dspex.topologies import Topology
from dspex.topologies.settings import KafkaSettings, TopicSettings

ROOT = Path(__file__).resolve().parents[2]
LOCAL_PLUGIN_CONFIG = ROOT / ".venv" / "docker"
#: The settings models whose fields read ``<env_prefix><FIELD>``.
SETTINGS_MODELS: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    TopicSettings,
    BrokerSettings,
    LMServerSettings,
)
#: Where a user reads which ``DSPEX_*`` variables to set.
DOCUMENTS = ("docker-compose.yml", "Dockerfile", "README.md", "docs/**/*.md")


def _compose_env() -> dict[str, str]:
    env = dict(os.environ)
    if (LOCAL_PLUGIN_CONFIG / "cli-plugins" / "docker-compose").is_file():
        env["DOCKER_CONFIG"] = str(LOCAL_PLUGIN_CONFIG)
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert shutil.which("docker"), "the docker client is needed to validate docker-compose.yml"
    result = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=_compose_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_the_services_of_the_design_are_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka",
        "lm",
        "worker",
        "optimizer",
        "prometheus",
        "grafana",
    }


def test_kafka_is_the_official_image_in_kraft_single_node_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_every_dependency_names_a_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_every_build_and_bind_mount_exists(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = Path(build["context"])
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            target = build.get("target")
            if target:
                assert f" AS {target}\n" in dockerfile, f"{name}: no stage {target!r}"
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: missing {volume['source']}"


def test_dockerfile_copies_only_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


@pytest.fixture(scope="module")
def compose_file() -> dict[str, Any]:
    """docker-compose.yml as written (anchors and merge keys resolved), without Docker."""
    parsed: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return parsed


#: The dspex command of each compose service, before its topology file.
COMMANDS = {"worker": ["worker"], "optimizer": ["optimizer", "serve"]}


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_the_services_run_a_topology_that_points_at_the_compose_services(
    compose_file: dict[str, Any], service: str
) -> None:
    spec = compose_file["services"][service]
    assert spec["command"][:-1] == COMMANDS[service]
    topology = Topology.from_file(ROOT / spec["command"][-1].removeprefix("/app/"))
    assert topology.kafka.bootstrap_servers.startswith("kafka:")
    assert topology.lms
    assert all(lm.base_url and "//lm:" in lm.base_url for lm in topology.lms.values())
    # Prometheus scrapes from its own container: loopback /metrics would be unreachable.
    assert topology.metrics_host == "0.0.0.0"
    port = topology.metrics_port if service == "worker" else topology.optimizer.metrics_port
    assert port is not None
    assert f"127.0.0.1:{port}:{port}" in spec["ports"]
    scrape = (ROOT / "infra" / "prometheus" / "prometheus.yml").read_text()
    assert f"{service}:{port}" in scrape


def _read_by_dspex(variable: str, source: str) -> bool:
    """Whether a settings model field or a literal lookup in dspex reads ``variable``."""
    for model in SETTINGS_MODELS:
        prefix = str(model.model_config.get("env_prefix", "")).upper()
        if any(variable == prefix + field.upper() for field in model.model_fields):
            return True
    return f'"{variable}"' in source


def test_every_dspex_variable_the_deployment_files_name_is_read() -> None:
    source = "\n".join(path.read_text() for path in (ROOT / "dspex").rglob("*.py"))
    named: dict[str, set[str]] = {}
    for pattern in DOCUMENTS:
        for path in ROOT.glob(pattern):
            # A trailing underscore is a family (`DSPEX_BROKER_*`), not one variable.
            for variable in re.findall(r"DSPEX_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
                named.setdefault(variable, set()).add(str(path.relative_to(ROOT)))
    assert "DSPEX_BOOTSTRAP_SERVERS" in named  # the scan finds what is there
    unread = {v: sorted(files) for v, files in named.items() if not _read_by_dspex(v, source)}
    assert not unread, f"set or documented but read by nothing: {unread}"
