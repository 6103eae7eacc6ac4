"""The `dspex` command: help everywhere, meaningful exit codes, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dspex._local._process import free_port
from dspex.cli import main
from dspex.cli._common import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_USAGE

COMMANDS = [
    [],
    ["broker"],
    ["broker", "start"],
    ["broker", "stop"],
    ["broker", "status"],
    ["broker", "fetch"],
    ["lm"],
    ["lm", "serve"],
    ["lm", "stop"],
    ["lm", "status"],
    ["schema"],
    ["topics"],
    ["topics", "create"],
    ["topics", "list"],
    ["worker"],
    ["programs"],
    ["programs", "register"],
    ["programs", "list"],
    ["programs", "show"],
    ["submit"],
    ["eval"],
    ["metrics-doc"],
    ["dashboards"],
    ["report"],
    ["optimize"],
    ["optimizer"],
    ["optimizer", "serve"],
    ["optimizer", "promote"],
    ["optimizer", "rollback"],
    ["optimizer", "pause"],
    ["optimizer", "resume"],
    ["optimizer", "feedback"],
    ["up"],
    ["down"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dspex")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_status_of_a_broker_never_started(state_dir: Path) -> None:
    result = CliRunner().invoke(main, ["broker", "status"])
    assert result.exit_code == EXIT_NOT_RUNNING
    assert "kafka broker: not running" in result.output


def test_stop_of_a_broker_never_started(state_dir: Path) -> None:
    result = CliRunner().invoke(main, ["broker", "stop"])
    assert result.exit_code == 0
    assert "was not running" in result.output


def test_lm_serve_with_missing_model_names_the_path(tmp_path: Path, state_dir: Path) -> None:
    missing = tmp_path / "missing.gguf"
    # A free port: a server already on the default one must not change the answer.
    port = str(free_port())
    result = CliRunner().invoke(main, ["lm", "serve", "--model", str(missing), "--port", port])
    assert result.exit_code == EXIT_FAILURE
    assert result.output == f"error: model file not found: {missing}\n"


def test_invalid_setting_from_environment_is_a_usage_error(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPEX_BROKER_PORT", "not-a-port")
    result = CliRunner().invoke(main, ["broker", "status"])
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith("error: invalid setting: port:")


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "dspex, version" in result.output


def test_schema_check_fails_on_a_stale_doc(tmp_path: Path) -> None:
    stale = tmp_path / "wire-format.md"
    stale.write_text("old\n")
    result = CliRunner().invoke(main, ["schema", "--out", str(stale), "--check"])
    assert result.exit_code == EXIT_FAILURE
    assert "is stale" in result.output
    assert CliRunner().invoke(main, ["schema", "--out", str(stale)]).exit_code == 0
    assert CliRunner().invoke(main, ["schema", "--out", str(stale), "--check"]).exit_code == 0


def test_worker_with_a_broken_topology_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "topology.yaml"
    bad.write_text("inflight_limit: -1\n")
    result = CliRunner().invoke(main, ["worker", str(bad)])
    assert result.exit_code == EXIT_FAILURE
    assert f"topology {bad}" in result.output
