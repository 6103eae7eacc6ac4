"""Where the Kafka cluster is and how its topics are named.

One model per concept, used by everyone who needs it: a topology's ``kafka``
and ``topics`` sections, the worker, the optimizer service, the client SDK and
the CLI. Each reads ``DSPEX_*`` environment variables for the fields not given.

Example:
    >>> TopicSettings(prefix="staging").partitions
    6
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MAX_TOPIC_NAME", "KafkaSettings", "TopicSettings", "is_legal_topic_name"]

_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
#: Kafka's limit on a topic name's length.
MAX_TOPIC_NAME = 249


def is_legal_topic_name(name: str) -> bool:
    """Whether Kafka accepts ``name`` as a topic name."""
    return 0 < len(name) <= MAX_TOPIC_NAME and bool(_LEGAL_NAME.match(name))


class KafkaSettings(BaseSettings):
    """Connection to the Kafka cluster; each field reads ``DSPEX_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DSPEX_", frozen=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        description="Comma-separated host:port list (DSPEX_BOOTSTRAP_SERVERS).",
    )


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
