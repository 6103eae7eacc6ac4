"""Finding and checking the GGUF model file for the local LM server."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspex._local.lm import LMServerSettings, LocalLMServer, check_model_file, default_model_path
from dspex.errors import ModelFileError


def test_default_model_comes_from_the_installed_wheel() -> None:
    path = default_model_path()
    assert path.suffix == ".gguf"
    assert "site-packages" in path.parts or "dist-packages" in path.parts
    assert path.read_bytes()[:4] == b"GGUF"


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileError, match="model file not found") as info:
        check_model_file(missing)
    assert str(missing) in str(info.value)
    assert info.value.path == missing


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a file"):
        check_model_file(tmp_path)


def test_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        check_model_file(bogus)


def test_server_command_serves_the_model_on_loopback(tmp_path: Path) -> None:
    server = LocalLMServer(LMServerSettings(port=18123, state_dir=tmp_path))
    command = server.command()
    assert command[1:3] == ["-m", "llama_cpp.server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "18123"
    assert Path(command[command.index("--model") + 1]) == default_model_path()
    assert server.base_url == "http://127.0.0.1:18123/v1"
