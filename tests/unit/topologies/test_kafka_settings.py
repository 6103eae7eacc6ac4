"""KafkaSettings: the connection a Kafka client gets, and where its secret comes from."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from dspex.errors import ConfigurationError
from dspex.topologies.settings import KafkaSettings, client_options

SECRET = "s3cret-not-to-be-shown"


def sasl(**fields: object) -> KafkaSettings:
    given = {"bootstrap_servers": "kafka:9093", "security_protocol": "SASL_SSL"}
    return KafkaSettings.model_validate({**given, "sasl_username": "dspex", **fields})


def test_plaintext_is_the_default_and_needs_nothing_else() -> None:
    assert client_options("h:1") == {"bootstrap_servers": "h:1"}


def test_the_password_comes_from_the_variable_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", SECRET)
    settings = sasl(sasl_password_env="KAFKA_PASSWORD")
    options = settings.client_options()
    assert options["sasl_plain_password"] == SECRET
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    # The settings hold the variable's name, never its value.
    assert SECRET not in repr(settings) + settings.model_dump_json()


def test_the_password_comes_from_the_file_it_names(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")
    assert sasl(sasl_password_file=path).client_options()["sasl_plain_password"] == SECRET


def test_a_missing_secret_is_a_configuration_error_naming_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError, match="variable KAFKA_PASSWORD is not set"):
        sasl(sasl_password_env="KAFKA_PASSWORD").client_options()
    with pytest.raises(ConfigurationError, match="cannot read the SASL password file"):
        sasl(sasl_password_file=tmp_path / "absent").client_options()


@pytest.mark.parametrize(
    "fields",
    [
        {},  # no password source
        {"sasl_password_env": "A", "sasl_password_file": "/b"},  # two
        {"sasl_password_env": "A", "sasl_username": None},  # no user
        {"sasl_password_env": "A", "ssl_certfile": "/cert.pem"},  # a certificate without its key
    ],
)
def test_incomplete_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        sasl(**fields)


def test_unreadable_tls_files_are_named(tmp_path: Path) -> None:
    settings = KafkaSettings(
        bootstrap_servers="kafka:9093", security_protocol="SSL", ssl_cafile=tmp_path / "ca.pem"
    )
    with pytest.raises(ConfigurationError, match="ca.pem"):
        settings.client_options()


def test_settings_come_from_dspex_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DSPEX_SASL_USERNAME", "me")
    monkeypatch.setenv("DSPEX_SASL_PASSWORD_ENV", "MY_PASSWORD")
    monkeypatch.setenv("MY_PASSWORD", SECRET)
    options = client_options("kafka:9092")  # servers given, the rest from the environment
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_plain_username"] == "me"
    assert "ssl_context" not in options
