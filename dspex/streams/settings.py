"""Where the Kafka cluster is: ``DSPEX_BOOTSTRAP_SERVERS`` and friends."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["KafkaSettings"]


class KafkaSettings(BaseSettings):
    """Connection to the Kafka cluster; each field reads ``DSPEX_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DSPEX_", frozen=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        description="Comma-separated host:port list (DSPEX_BOOTSTRAP_SERVERS).",
    )
