"""`dspex up`, `dspex submit`, `dspex down`: the demo path, on private ports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dspex._local._process import free_port

ROOT = Path(__file__).resolve().parents[2]


def dspex(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dspex", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_up_serves_the_example_programs_until_down(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = tmp_path / "targets"
    monkeypatch.setenv("DSPEX_PROMETHEUS_TARGETS_DIR", str(targets))
    topology = yaml.safe_load((ROOT / "examples" / "topology.yaml").read_text())
    kafka, lm, metrics = free_port(), free_port(), free_port()
    # The broker's controller port too: port + 1, its default, may be taken.
    monkeypatch.setenv("DSPEX_BROKER_CONTROLLER_PORT", str(free_port()))
    topology["kafka"]["bootstrap_servers"] = f"127.0.0.1:{kafka}"
    topology["lms"]["local"]["base_url"] = f"http://127.0.0.1:{lm}/v1"
    topology["metrics_port"] = metrics
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    try:
        first = dspex("up", "--topology", str(path))
        assert first.returncode == 0, first.stderr
        assert "program sentiment: registered version 1" in first.stdout
        assert "dspex worker: started" in first.stdout
        # Prometheus' file discovery finds the worker's /metrics.
        target = json.loads((targets / f"worker-{topology['name']}.json").read_text())
        assert target == [
            {"targets": [f"127.0.0.1:{metrics}"], "labels": {"deployment": topology["name"]}}
        ]
        again = dspex("up", "--topology", str(path))
        assert "program sentiment: version 1 is current" in again.stdout
        assert again.stdout.count("already running") == 3

        result = dspex(
            "submit",
            "sentiment",
            "--input",
            "review=Lovely!",
            "--bootstrap-servers",
            f"127.0.0.1:{kafka}",
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["status"] == "ok"
        assert answer["outputs"]["sentiment"] in ("positive", "negative", "neutral")
    finally:
        stopped = dspex("down", "--topology", str(path))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [
        "dspex worker: stopped",
        "lm server: stopped",
        "kafka broker: stopped",
    ]
    assert list(targets.iterdir()) == []  # down removes the target


def test_up_refuses_a_remote_broker(tmp_path: Path, state_dir: Path) -> None:
    topology = yaml.safe_load((ROOT / "examples" / "topology.yaml").read_text())
    topology["kafka"]["bootstrap_servers"] = "kafka.example:9092"
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    result = dspex("up", "--topology", str(path))
    assert result.returncode == 1
    assert "runs a local broker" in result.stderr
