"""Pure parts of the local broker: settings, rendered configuration, Java lookup."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from dspex._local._paths import infra_dir
from dspex._local.broker import (
    BrokerSettings,
    KafkaBroker,
    find_java,
    new_cluster_id,
    render_server_properties,
)
from dspex.errors import JavaNotFoundError


def _properties(text: str) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def _rendered(settings: BrokerSettings, log_dirs: Path) -> dict[str, str]:
    template = (infra_dir() / "kafka" / "server.properties").read_text()
    return _properties(render_server_properties(template, settings, log_dirs))


def test_single_node_settings_are_rendered(tmp_path: Path) -> None:
    props = _rendered(BrokerSettings(port=19500, controller_port=19501), tmp_path / "logs")
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19500,CONTROLLER://127.0.0.1:19501"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19500"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19501"
    assert props["log.dirs"] == str(tmp_path / "logs")
    assert props["process.roles"] == "broker,controller"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert not any("@" in value and value.endswith("@") for value in props.values())


def test_an_unknown_placeholder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="@NOPE@"):
        render_server_properties("a=@NOPE@\n", BrokerSettings(), tmp_path)


def test_controller_port_defaults_to_the_next_port() -> None:
    assert BrokerSettings(port=9300).resolved_controller_port == 9301


def test_settings_read_dspex_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSPEX_BROKER_PORT", "19999")
    monkeypatch.setenv("DSPEX_BROKER_DATA_DIR", str(tmp_path / "d"))
    settings = BrokerSettings()
    assert settings.port == 19999
    assert settings.bootstrap_servers == "127.0.0.1:19999"
    assert settings.resolved_data_dir == (tmp_path / "d").resolve()


def test_data_dir_defaults_under_the_per_user_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DSPEX_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    broker = KafkaBroker(BrokerSettings())
    assert broker.data_dir == (tmp_path / "dspex" / "kafka").resolve()
    assert broker.state_path.parent == broker.data_dir


def test_cluster_id_is_sixteen_bytes_in_url_safe_base64() -> None:
    ids = {new_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_java_found_on_this_machine() -> None:
    assert find_java().name == "java"


def test_java_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="Java not found"):
        find_java()


def test_too_old_java_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'openjdk version \"1.8.0_392\"' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", os.defpath)
    with pytest.raises(JavaNotFoundError, match=r"needs Java 17\+.* is Java 8"):
        find_java()
