"""`dspex broker start|status|stop` on a second real broker, and its failures.

Each test runs the command in a subprocess, as a user would, with private
ports and a private data directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dspex._local._process import free_port, pid_alive
from dspex.cli._common import EXIT_FAILURE, EXIT_NOT_RUNNING


def dspex(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dspex", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a failed command (progress lines may precede it)."""
    assert result.returncode == EXIT_FAILURE, result
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr
    return errors[0]


def _ports(tmp_path: Path) -> tuple[list[str], list[str], int]:
    port, controller = free_port(), free_port()
    data = ["--port", str(port), "--data-dir", str(tmp_path / "kafka")]
    return [*data, "--controller-port", str(controller)], data, port


async def _broker_config(bootstrap: str, key: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
    finally:
        await admin.close()
    entries = {entry[0]: entry[1] for entry in response.resources[0][4]}
    return str(entries[key])


async def test_start_status_second_start_stop(tmp_path: Path) -> None:
    start_args, args, port = _ports(tmp_path)
    started = dspex("broker", "start", *start_args)
    assert started.returncode == 0, started.stderr
    assert "kafka broker started" in started.stdout
    try:
        status = dspex("broker", "status", *args)
        assert status.returncode == 0
        assert f"127.0.0.1:{port}" in status.stdout
        pid = int(status.stdout.split("pid")[1].split()[0])
        assert pid_alive(pid)
        assert (tmp_path / "kafka" / "logs" / "server.log").is_file()
        assert (tmp_path / "kafka" / "kraft-logs" / "meta.properties").is_file()

        again = dspex("broker", "start", *start_args)
        assert again.returncode == 0
        assert f"already running (pid {pid})" in again.stdout

        bootstrap = f"127.0.0.1:{port}"
        assert await _broker_config(bootstrap, "auto.create.topics.enable") == "false"
        assert await _broker_config(bootstrap, "group.initial.rebalance.delay.ms") == "0"
    finally:
        stopped = dspex("broker", "stop", *args)
    assert stopped.returncode == 0
    assert "kafka broker stopped" in stopped.stdout
    assert not pid_alive(pid)
    after = dspex("broker", "status", *args)
    assert after.returncode == EXIT_NOT_RUNNING


def test_port_in_use_is_one_line_and_nonzero(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = dspex("broker", "start", "--port", str(port), "--data-dir", str(tmp_path / "k"))
    assert f"port 127.0.0.1:{port} is already in use" in error_line(result)


def _env_without(tmp_path: Path, *keep: str) -> dict[str, str]:
    """An environment whose PATH holds only the named tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in keep:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(Path(found).resolve())
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(bin_dir)
    return env


def test_java_missing_is_one_line_and_nonzero(tmp_path: Path) -> None:
    start_args, _, _ = _ports(tmp_path)
    result = dspex("broker", "start", *start_args, env=_env_without(tmp_path))
    assert error_line(result).startswith("error: Java not found")


def test_maven_missing_is_one_line_and_nonzero(tmp_path: Path) -> None:
    start_args, _, _ = _ports(tmp_path)
    result = dspex(
        "broker",
        "start",
        *start_args,
        "--kafka-version",
        "4.0.0-not-fetched",
        env=_env_without(tmp_path, "java"),
    )
    assert error_line(result).startswith("error: Maven (mvn) not found")


def test_maven_fetch_failure_is_one_line_and_nonzero(tmp_path: Path) -> None:
    start_args, _, _ = _ports(tmp_path)
    result = dspex("broker", "start", *start_args, "--kafka-version", "0.0.0-no-such-release")
    line = error_line(result)
    assert line.startswith("error: Maven could not fetch Apache Kafka 0.0.0-no-such-release:")
    assert "kafka_2.13" in line


def test_startup_timeout_is_reported_and_kills_the_broker(tmp_path: Path) -> None:
    start_args, args, _ = _ports(tmp_path)
    result = dspex("broker", "start", *start_args, "--timeout", "0.5")
    assert "did not become ready within 0.5s" in error_line(result)
    assert dspex("broker", "status", *args).returncode == EXIT_NOT_RUNNING
    leftover = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "kafka" / "server.properties")],
        capture_output=True,
        check=False,
    )
    assert leftover.returncode == 1, "a broker process was left running"
