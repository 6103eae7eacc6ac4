"""What every wire record shares: model configuration, field types, limits, usage.

Records are validated where they enter (``extra="forbid"``, typed fields,
bounded strings) and frozen, so a record that exists is a record that can be
published. The public names are re-exported by :mod:`dspex.streams.records`.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.config import JsonDict

from dspex.programs.lm.types import TokenUsage

__all__ = [
    "DEAD_LETTER_MAX_VALUE_BYTES",
    "DEAD_LETTER_REASON_DESCRIPTIONS",
    "DEFAULT_MAX_RECORD_BYTES",
    "ERROR_TYPE_DESCRIPTIONS",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_ID_CHARS",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_VALUE_CHARS",
    "DeadLetterReason",
    "EpochMillis",
    "ErrorType",
    "Identifier",
    "TopicName",
    "Usage",
    "WireModel",
    "WireRecord",
    "now_ms",
]

#: Longest request, program, rollout and worker id, in characters.
MAX_ID_CHARS: Final = 200
#: Most entries in an inference request's ``metadata``.
MAX_METADATA_ENTRIES: Final = 32
#: Longest ``metadata`` key, in characters.
MAX_METADATA_KEY_CHARS: Final = 128
#: Longest ``metadata`` value, in characters.
MAX_METADATA_VALUE_CHARS: Final = 1024
#: Longest error message or dead-letter detail, in characters (longer ones are cut).
MAX_ERROR_MESSAGE_CHARS: Final = 2000
#: Records larger than this many bytes are rejected by ``decode`` (reason ``too_large``).
DEFAULT_MAX_RECORD_BYTES: Final = 1_000_000
#: A dead letter keeps at most this many bytes of the original value. Base64 makes
#: them 4/3 larger, which keeps the dead letter under Kafka's default 1 MB limit.
DEAD_LETTER_MAX_VALUE_BYTES: Final = 262_144

ErrorType = Literal[
    "unknown_program",
    "unknown_version",
    "invalid_request",
    "invalid_inputs",
    "lm_error",
    "lm_rate_limited",
    "lm_unavailable",
    "parse_error",
    "tool_error",
    "deadline_exceeded",
    "internal",
]

#: Every :data:`ErrorType`, with what it means (published in docs/wire-format.md).
ERROR_TYPE_DESCRIPTIONS: Final[Mapping[ErrorType, str]] = MappingProxyType(
    {
        "unknown_program": "No program with this `program_id` is registered.",
        "unknown_version": "The program exists, but not the requested `program_version`.",
        "invalid_request": (
            "The request record names a known schema but breaks it (a field of the wrong "
            "type or size); it is also in the dead-letter topic with its original bytes."
        ),
        "invalid_inputs": (
            "Inputs are missing, unexpected or of the wrong type; `field` names the first."
        ),
        "lm_error": (
            "The language-model call failed (bad request, credentials, server error, "
            "malformed answer)."
        ),
        "lm_rate_limited": "The provider refused the call for its rate limits (HTTP 429).",
        "lm_unavailable": (
            "The provider could not be reached or did not answer in time, or its circuit "
            "breaker is open."
        ),
        "parse_error": (
            "The LM's answer could not be parsed into the output fields; `field` names the "
            "one at fault, when known."
        ),
        "tool_error": "A ReAct tool raised, or was called with arguments it does not accept.",
        "deadline_exceeded": "The request's deadline passed before its answer was ready.",
        "internal": (
            "An unexpected error inside dspex; the message is generic, details are in the "
            "worker's log."
        ),
    }
)

DeadLetterReason = Literal[
    "invalid_utf8", "invalid_json", "unknown_schema", "invalid_record", "too_large"
]

#: Every :data:`DeadLetterReason`, with what it means (published in docs/wire-format.md).
DEAD_LETTER_REASON_DESCRIPTIONS: Final[Mapping[DeadLetterReason, str]] = MappingProxyType(
    {
        "invalid_utf8": "The value is not valid UTF-8.",
        "invalid_json": (
            "The value is not one JSON document (syntax error, NaN or Infinity, a lone "
            "surrogate escape, nesting too deep, a number out of range)."
        ),
        "unknown_schema": (
            "The value is JSON but not an object with a known `schema`, or not a record "
            "kind the topic accepts."
        ),
        "invalid_record": (
            "The `schema` is known but fields are missing, unknown, mistyped or out of bounds."
        ),
        "too_large": "The value is larger than the worker's maximum record size.",
    }
)

#: A non-empty identifier (request, program, rollout or worker id).
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
#: A legal Kafka topic name.
TopicName = Annotated[
    str, StringConstraints(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
]
#: Milliseconds since the Unix epoch (UTC).
EpochMillis = Annotated[int, Field(ge=0)]


def now_ms() -> int:
    """The current time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


_SECTION = re.compile(r"^(Args|Attributes|Example|Examples|Note|Raises|Returns):\s*$", re.MULTILINE)
_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`")


def describe_model(model: type[BaseModel]) -> str:
    """A model's docstring up to its first Google section, in Markdown.

    It is the model's ``description`` in the published JSON Schema and its
    purpose in docs/wire-format.md; examples and attribute lists stay in the code.
    """
    doc = inspect.cleandoc(model.__doc__ or "")
    section = _SECTION.search(doc)
    if section is not None:
        doc = doc[: section.start()]
    paragraphs = (" ".join(paragraph.split()) for paragraph in doc.strip().split("\n\n"))
    return _ROLE.sub(r"`\1`", "\n\n".join(paragraphs)).replace("``", "`")


def _publish(schema: JsonDict, model: type[Any]) -> None:
    """Publish the model's description without its code examples.

    A record's ``schema`` is published as required too: readers dispatch on it,
    whatever its default in Python.
    """
    schema["description"] = describe_model(model)
    properties = schema.get("properties")
    required = schema.get("required", [])
    if isinstance(properties, dict) and "schema" in properties and isinstance(required, list):
        schema["required"] = ["schema", *(name for name in required if name != "schema")]


class WireModel(BaseModel):
    """Base of every model on the wire: frozen, unknown fields rejected, finite floats.

    JSON has no NaN or Infinity: float fields reject them, and free-form values
    (inputs, outputs) holding them are written as ``null``.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        ser_json_inf_nan="null",
        json_schema_extra=_publish,
    )


class WireRecord(WireModel):
    """Base of every top-level record: one Kafka record value, with a ``schema`` field.

    Subclasses declare ``schema_: Literal["dspex.<kind>/v<N>"]`` with the alias
    ``schema`` (the attribute cannot be called ``schema``: pydantic's BaseModel
    has a method of that name) and implement :meth:`kafka_key`.
    """

    @classmethod
    def schema_id(cls) -> str:
        """The record kind's ``schema`` value, e.g. ``"dspex.inference.request/v1"``."""
        field = cls.model_fields.get("schema_")
        if field is None or not isinstance(field.default, str):
            raise TypeError(f"{cls.__name__} declares no `schema` field")
        return field.default

    def kafka_key(self) -> bytes | None:
        """The key this record is produced with (DESIGN §4's table), as bytes."""
        raise NotImplementedError


class Usage(TokenUsage):
    """Tokens, cost and LM calls behind a result or an event (cache hits counted apart).

    Note:
        A :class:`~dspex.programs.lm.types.TokenUsage` that rejects unknown
        fields and negative counts, so it can be read from the wire.

    Example:
        >>> Usage.from_token_usage(TokenUsage(prompt_tokens=10, calls=1)).total_tokens
        10
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, json_schema_extra=_publish
    )

    prompt_tokens: int = Field(0, ge=0, description="Prompt tokens of the calls made.")
    completion_tokens: int = Field(0, ge=0, description="Completion tokens of the calls made.")
    cost_usd: float = Field(
        0.0, ge=0.0, description="Estimated cost of the calls in US dollars (0 when unpriced)."
    )
    calls: int = Field(0, ge=0, description="LM calls that reached the provider.")
    cached_calls: int = Field(
        0,
        ge=0,
        description="LM calls answered from the response cache (their tokens are not counted).",
    )

    @classmethod
    def from_token_usage(cls, usage: TokenUsage) -> Usage:
        """The wire form of ``usage`` (returned as is when it already is one)."""
        if isinstance(usage, Usage):
            return usage
        return cls.model_validate(usage, from_attributes=True)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return "object"
