"""Records for operators: dead letters (input that could not be read) and telemetry."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal, Self, get_args

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from dspex.errors import WireFormatError
from dspex.streams.records._base import (
    DEAD_LETTER_MAX_VALUE_BYTES,
    MAX_ERROR_MESSAGE_CHARS,
    DeadLetterReason,
    EpochMillis,
    ErrorType,
    Identifier,
    TopicName,
    Usage,
    WireRecord,
    now_ms,
    shorten,
)

__all__ = ["DeadLetter", "TelemetryEvent"]


def _valid_base64(text: str) -> str:
    try:
        base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not valid base64 ({exc})") from None
    return text


#: Standard base64 with padding; checked to decode, so a dead letter always can.
Base64 = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$"),
    AfterValidator(_valid_base64),
]

_REASONS: frozenset[str] = frozenset(get_args(DeadLetterReason))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class DeadLetter(WireRecord):
    """A record a worker could not read, kept with its original bytes and the reason.

    Produced by any dspex worker on ``dspex.inference.dlq`` (with the original
    record's key) when a value is not UTF-8, not JSON, not a known ``schema``,
    fails validation or is too large: nothing is dropped silently, and the
    worker keeps running. ``value_b64`` keeps the value's first 256 KiB
    (``DEAD_LETTER_MAX_VALUE_BYTES``), so the record can be inspected, fixed
    and produced again.

    Example:
        >>> error = WireFormatError("record is not JSON", reason="invalid_json")
        >>> letter = DeadLetter.from_error(
        ...     error, topic="dspex.inference.requests", partition=0, offset=7,
        ...     key=b"qa", value=b"{not json", worker_id="w1")
        >>> letter.reason, letter.original_value()
        ('invalid_json', b'{not json')
    """

    schema_: Literal["dspex.dead_letter/v1"] = Field(
        "dspex.dead_letter/v1", alias="schema", description="Record kind and version."
    )
    topic: TopicName = Field(description="The topic the unreadable record was consumed from.")
    partition: int = Field(ge=0, description="Its partition.")
    offset: int = Field(ge=0, description="Its offset in that partition.")
    key_b64: Base64 | None = Field(
        None, description="Base64 of the record's key bytes; null when it had no key."
    )
    value_b64: Base64 = Field(
        description=(
            f"Base64 of the record's value bytes (empty for a null value), cut to the first "
            f"{DEAD_LETTER_MAX_VALUE_BYTES} bytes."
        )
    )
    value_truncated: bool = Field(
        False, description="Whether `value_b64` holds only the start of a longer value."
    )
    reason: DeadLetterReason = Field(
        description=(
            "Why it could not be read, from a fixed list; a new reason comes with a new "
            "schema version."
        )
    )
    detail: str = Field(
        max_length=MAX_ERROR_MESSAGE_CHARS,
        description="A one-line human explanation (position of a JSON error, fields at fault).",
    )
    worker_id: Identifier = Field(description="The worker that gave up on the record.")
    received_at_ms: EpochMillis = Field(
        default_factory=now_ms, description="When the worker read the record (epoch ms)."
    )

    @classmethod
    def from_error(
        cls,
        error: WireFormatError,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        worker_id: str,
        received_at_ms: int | None = None,
    ) -> DeadLetter:
        """The dead letter for a record that ``decode`` rejected with ``error``.

        Args:
            error: What ``decode`` raised; its reason and message are kept.
            topic: The topic the record came from.
            partition: Its partition.
            offset: Its offset.
            key: Its key bytes, or None.
            value: Its value bytes; None (a tombstone) is kept as empty.
            worker_id: The worker writing the dead letter.
            received_at_ms: When the record was read (default: now).

        Returns:
            The dead letter, its value cut to ``DEAD_LETTER_MAX_VALUE_BYTES``.
        """
        value = value or b""
        # A WireFormatError raised elsewhere may carry another reason; the record is
        # still unreadable, so it is kept rather than lost.
        reason = error.reason if error.reason in _REASONS else "invalid_record"
        return cls.model_validate(
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "key_b64": None if key is None else _b64(key),
                "value_b64": _b64(value[:DEAD_LETTER_MAX_VALUE_BYTES]),
                "value_truncated": len(value) > DEAD_LETTER_MAX_VALUE_BYTES,
                "reason": reason,
                "detail": shorten(" ".join(str(error).split()), MAX_ERROR_MESSAGE_CHARS),
                "worker_id": worker_id,
                "received_at_ms": now_ms() if received_at_ms is None else received_at_ms,
            }
        )

    def original_key(self) -> bytes | None:
        """The original record's key bytes, or None when it had none."""
        return None if self.key_b64 is None else _unb64(self.key_b64)

    def original_value(self) -> bytes:
        """The original value bytes (only their start when ``value_truncated``)."""
        return _unb64(self.value_b64)

    def kafka_key(self) -> bytes | None:
        """The original record's key, so dead letters keep its partitioning."""
        return self.original_key()


def _unb64(text: str) -> bytes:
    # Validated on construction (``Base64``), so this cannot fail.
    return base64.b64decode(text, validate=True)


class TelemetryEvent(WireRecord):
    """One finished request or one LM call, for dashboards, cost accounting and alerts.

    Produced by inference workers on ``dspex.telemetry``, keyed by program id:
    ``kind="request"`` once per answered request, ``kind="lm_call"`` once per
    LM call the program made (cache hits included, with ``cached`` true).
    ``error_type`` is set exactly when ``status`` is ``"error"``; ``provider``
    is set exactly for LM calls.

    Example:
        >>> event = TelemetryEvent(
        ...     kind="lm_call", program_id="qa", worker_id="w1", status="ok",
        ...     latency_ms=310.0, provider="openai", model="gpt-4o-mini")
        >>> event.kafka_key()
        b'qa'
    """

    schema_: Literal["dspex.telemetry/v1"] = Field(
        "dspex.telemetry/v1", alias="schema", description="Record kind and version."
    )
    kind: Literal["request", "lm_call"] = Field(
        description="`request`: one answered request. `lm_call`: one LM call within one."
    )
    program_id: Identifier = Field(description="The program the request named.")
    program_version: int | None = Field(
        None, ge=1, description="The version that ran; null when none could be resolved."
    )
    request_id: Identifier | None = Field(
        None, description="The request the event belongs to, when there is one."
    )
    worker_id: Identifier = Field(description="The worker that observed the event.")
    status: Literal["ok", "error"] = Field(description="Whether the request or call succeeded.")
    error_type: ErrorType | None = Field(
        None, description="The error type when `status` is `error` (same list as results)."
    )
    latency_ms: float = Field(ge=0.0, description="Duration of the request or call, in ms.")
    usage: Usage = Field(
        default_factory=Usage, description="Tokens, cost and calls of the request or call."
    )
    provider: str | None = Field(
        None, max_length=100, description="LM calls: the provider kind, e.g. `openai`."
    )
    model: str | None = Field(None, max_length=200, description="LM calls: the model name.")
    cached: bool = Field(False, description="LM calls: answered from the response cache.")
    at_ms: EpochMillis = Field(
        default_factory=now_ms, description="When the request or call ended (epoch ms)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.status == "error") != (self.error_type is not None):
            raise ValueError("`error_type` is set exactly when status is 'error'")
        if self.kind == "lm_call" and self.provider is None:
            raise ValueError("an lm_call event needs `provider`")
        if self.kind == "request" and (
            self.provider is not None or self.model is not None or self.cached
        ):
            raise ValueError("`provider`, `model` and `cached` describe lm_call events only")
        return self

    def kafka_key(self) -> bytes:
        """The program id, like the requests it describes."""
        return self.program_id.encode("utf-8")
