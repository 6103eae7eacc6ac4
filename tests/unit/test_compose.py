"""docker-compose.yml parses with `docker compose config` and references only real things.

No Docker engine runs here; `docker compose config` needs only the client and
its compose plugin (Makefile builds the plugin into .venv where it is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_PLUGIN_CONFIG = ROOT / ".venv" / "docker"


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


def test_the_worker_runs_a_topology_that_points_at_the_compose_services(
    compose: dict[str, Any],
) -> None:
    from dspex.topologies import Topology

    command = compose["services"]["worker"]["command"]
    assert command[0] == "worker"
    topology = Topology.from_file(ROOT / command[1].removeprefix("/app/"))
    assert topology.kafka.bootstrap_servers.startswith("kafka:")
    assert all(lm.base_url and "//lm:" in lm.base_url for lm in topology.lms.values())
    assert topology.metrics_host == "0.0.0.0"
    scrape = (ROOT / "infra" / "prometheus" / "prometheus.yml").read_text()
    assert f"worker:{topology.metrics_port}" in scrape
