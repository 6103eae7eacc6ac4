"""Where the Kafka cluster is and how its topics are named.

One model per concept, used by everyone who needs it: a topology's ``kafka``
and ``topics`` sections, the worker, the optimizer service, the client SDK and
the CLI. Each reads ``DSPEX_*`` environment variables for the fields not given.

Example:
    >>> TopicSettings(prefix="staging").partitions
    6
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dspex.errors import ConfigurationError

__all__ = [
    "MAX_TOPIC_NAME",
    "KafkaSettings",
    "KafkaTarget",
    "TopicSettings",
    "client_options",
    "is_legal_topic_name",
    "kafka_settings",
    "servers_of",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]

_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
#: Kafka's limit on a topic name's length.
MAX_TOPIC_NAME = 249


def is_legal_topic_name(name: str) -> bool:
    """Whether Kafka accepts ``name`` as a topic name."""
    return 0 < len(name) <= MAX_TOPIC_NAME and bool(_LEGAL_NAME.match(name))


class KafkaSettings(BaseSettings):
    """Connection to the Kafka cluster; each field reads ``DSPEX_<NAME>``.

    A password is never a field: it is read, when a client connects, from the
    environment variable ``sasl_password_env`` names or the file
    ``sasl_password_file`` names, so a saved topology, a log line or an
    error never holds it.

    Example:
        >>> KafkaSettings(bootstrap_servers="kafka:9093", security_protocol="SASL_SSL",
        ...     sasl_username="dspex", sasl_password_env="KAFKA_PASSWORD").sasl_mechanism
        'SCRAM-SHA-512'
    """

    model_config = SettingsConfigDict(env_prefix="DSPEX_", frozen=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        description="Comma-separated host:port list (DSPEX_BOOTSTRAP_SERVERS).",
    )
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="PLAINTEXT, SSL (TLS; with a client certificate: mutual TLS), "
        "SASL_SSL or SASL_PLAINTEXT (DSPEX_SECURITY_PROTOCOL).",
    )
    sasl_mechanism: SaslMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism (DSPEX_SASL_MECHANISM)."
    )
    sasl_username: str | None = Field(None, description="SASL user (DSPEX_SASL_USERNAME).")
    sasl_password_env: str | None = Field(
        None,
        description="Name of the environment variable holding the SASL password "
        "(DSPEX_SASL_PASSWORD_ENV).",
    )
    sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (DSPEX_SASL_PASSWORD_FILE)."
    )
    ssl_cafile: Path | None = Field(
        None,
        description="CA certificates (PEM) to trust; default the system's (DSPEX_SSL_CAFILE).",
    )
    ssl_certfile: Path | None = Field(
        None, description="Client certificate chain (PEM) for mutual TLS (DSPEX_SSL_CERTFILE)."
    )
    ssl_keyfile: Path | None = Field(
        None, description="The client certificate's private key (PEM) (DSPEX_SSL_KEYFILE)."
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.security_protocol.startswith("SASL_"):
            if not self.sasl_username:
                raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username")
            if (self.sasl_password_env is None) == (self.sasl_password_file is None):
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs exactly one of "
                    "sasl_password_env and sasl_password_file"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    @property
    def secured(self) -> bool:
        return self.security_protocol != "PLAINTEXT"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka producer, consumer or admin client.

        Raises:
            ConfigurationError: The password's variable is unset or its file
                unreadable, or a TLS file cannot be loaded (named; the secret
                never is).
        """
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if not self.secured:
            return options
        options["security_protocol"] = self.security_protocol
        if self.security_protocol.endswith("SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self._password()
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context: the CA file (or the system's) and the client certificate, if any."""
        try:
            context = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
            if self.ssl_certfile is not None and self.ssl_keyfile is not None:
                context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the Kafka TLS files (ssl_cafile {self.ssl_cafile}, ssl_certfile "
                f"{self.ssl_certfile}, ssl_keyfile {self.ssl_keyfile}): {type(exc).__name__}"
            ) from None
        return context

    def _password(self) -> str:
        if self.sasl_password_env is not None:
            password = os.environ.get(self.sasl_password_env)
            if not password:
                raise ConfigurationError(
                    f"the SASL password variable {self.sasl_password_env} is not set"
                )
            return password
        assert self.sasl_password_file is not None  # the validator saw to it
        try:
            password = self.sasl_password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the SASL password file {self.sasl_password_file}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        if not password:
            raise ConfigurationError(f"the SASL password file {self.sasl_password_file} is empty")
        return password


#: Where Kafka is: bootstrap servers alone (the other fields from ``DSPEX_*``
#: variables, plaintext by default), or the whole connection.
KafkaTarget = KafkaSettings | str


def kafka_settings(kafka: KafkaTarget) -> KafkaSettings:
    """``kafka`` as settings: a string is the bootstrap servers."""
    return kafka if isinstance(kafka, KafkaSettings) else KafkaSettings(bootstrap_servers=kafka)


def servers_of(kafka: KafkaTarget) -> str:
    """The bootstrap servers of ``kafka``, for messages."""
    return kafka.bootstrap_servers if isinstance(kafka, KafkaSettings) else kafka


def client_options(kafka: KafkaTarget) -> dict[str, Any]:
    """aiokafka keyword arguments for ``kafka`` (see :meth:`KafkaSettings.client_options`)."""
    return kafka_settings(kafka).client_options()


class TopicSettings(BaseSettings):
    """Topic naming and sizing; each field reads ``DSPEX_TOPICS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DSPEX_TOPICS_", frozen=True)

    prefix: str = Field("dspex", description="Name prefix (DSPEX_TOPICS_PREFIX).")
    partitions: int = Field(
        6, ge=1, description="Partitions of data topics (DSPEX_TOPICS_PARTITIONS)."
    )
    coordination_partitions: int = Field(
        1,
        ge=1,
        description="Partitions of coordination topics (DSPEX_TOPICS_COORDINATION_PARTITIONS).",
    )
    replication_factor: int = Field(
        1, ge=1, description="Replicas per partition (DSPEX_TOPICS_REPLICATION_FACTOR)."
    )

    @field_validator("prefix")
    @classmethod
    def _legal_prefix(cls, value: str) -> str:
        if not value or not _LEGAL_NAME.match(value) or len(value) > 200:
            raise ValueError(
                f"topic prefix {value!r} must be 1-200 characters of letters, digits, '.', '_', '-'"
            )
        return value
