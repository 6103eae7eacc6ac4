"""With Docker, the test broker is the Apache Kafka image with the local broker's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.container import IMAGE, TEMPLATE, container_environment

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_of_the_local_broker_reaches_the_container() -> None:
    env = container_environment(40123)
    keys = [
        line.split("=", 1)[0].strip()
        for line in TEMPLATE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(env) == len(keys)
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"  # transactions on one node
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:40123"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9093"
    assert not any("@LOG_DIRS@" in value or "@PORT@" in value for value in env.values())
    assert IMAGE.startswith("apache/kafka:")


def test_the_container_path_imports_without_warnings() -> None:
    # The suite turns warnings into errors; testcontainers' old kafka module warns on import.
    code = (
        "import tests.support.container\nfrom testcontainers.core.container import DockerContainer"
    )
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
