"""The inference channel: requests to run a program, and their results or typed errors."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Self, cast

from pydantic import Field, StringConstraints, model_validator

from dspex.errors import AdapterParseError, DSPExError, InputError, error_type
from dspex.streams.records._base import (
    MAX_ERROR_MESSAGE_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    EpochMillis,
    ErrorType,
    Identifier,
    TopicName,
    Usage,
    WireModel,
    WireRecord,
    now_ms,
    shorten,
)

__all__ = ["ErrorInfo", "InferenceRequest", "InferenceResult"]

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)]

#: The message of an ``internal`` error: whatever went wrong stays in the worker's log.
INTERNAL_ERROR_MESSAGE = "internal error while running the program; see the worker's log"


def _new_request_id() -> str:
    return uuid.uuid4().hex


class InferenceRequest(WireRecord):
    """A request to run one version of a registered program on one set of inputs.

    Produced by clients (``DSPExClient``, or any Kafka client) on
    ``dspex.inference.requests`` with the program id as key; consumed by the
    inference workers, which answer each with exactly one
    :class:`InferenceResult` carrying the same ``request_id`` (at least once:
    a restarted worker may answer twice, never zero times; when the deployment
    runs with ``processing_guarantee: exactly_once``, a reader with
    ``isolation_level=read_committed`` finds exactly one).

    Example:
        >>> request = InferenceRequest(program_id="qa", inputs={"question": "Why?"})
        >>> request.kafka_key()
        b'qa'
    """

    schema_: Literal["dspex.inference.request/v1"] = Field(
        "dspex.inference.request/v1", alias="schema", description="Record kind and version."
    )
    request_id: Identifier = Field(
        default_factory=_new_request_id,
        description=(
            "Correlates the result with this request: set it to recognise the answer. Unique "
            "per request, up to 200 characters; when left out, the reader generates a UUID4 "
            "in hex."
        ),
    )
    program_id: Identifier = Field(description="The registered program to run.")
    program_version: int | None = Field(
        None, ge=1, description="The version to run; null runs the program's active version."
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description="The program's input fields by name, as JSON values.",
    )
    reply_to: TopicName | None = Field(
        None,
        description="Topic to publish the result to; null uses the default results topic.",
    )
    deadline_ms: EpochMillis | None = Field(
        None,
        description=(
            "Epoch milliseconds after which the answer is no longer wanted; a worker that "
            "reaches it answers with a `deadline_exceeded` error. Null: no deadline."
        ),
    )
    created_at_ms: EpochMillis = Field(
        default_factory=now_ms,
        description=(
            "When the client created the request (epoch ms); when left out, the time the "
            "record is read."
        ),
    )
    rollout_id: Identifier | None = Field(
        None,
        description=(
            "Passed on to the program's LM calls: distinguishes otherwise identical sampled "
            "calls and makes them cacheable at temperature > 0."
        ),
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_ENTRIES,
        description=(
            f"Free-form string tags for tracing (tenant, trace id, ...): at most "
            f"{MAX_METADATA_ENTRIES} entries, keys up to {MAX_METADATA_KEY_CHARS} and values "
            f"up to {MAX_METADATA_VALUE_CHARS} characters."
        ),
    )

    def kafka_key(self) -> bytes:
        """The program id: a program's requests go to the workers caching it."""
        return self.program_id.encode("utf-8")

    def deadline_passed(self, at_ms: int | None = None) -> bool:
        """Whether the deadline (if any) is at or before ``at_ms`` (default: now)."""
        if self.deadline_ms is None:
            return False
        return self.deadline_ms <= (now_ms() if at_ms is None else at_ms)


class ErrorInfo(WireModel):
    """Why a request failed: a stable machine-readable type and a human message.

    Built by the worker that ran the request, from the exception that ended
    it, and carried in an error :class:`InferenceResult`. Messages never
    contain credentials, request bodies or headers.

    Example:
        >>> info = ErrorInfo.from_exception(InputError("missing `question`", fields=["question"]))
        >>> info.type, info.field, info.retryable
        ('invalid_inputs', 'question', False)
    """

    type: ErrorType = Field(
        description=(
            "What kind of failure, from a fixed list; a new type comes with a new schema version."
        )
    )
    message: str = Field(
        max_length=MAX_ERROR_MESSAGE_CHARS, description="A one-line human explanation."
    )
    retryable: bool = Field(
        description="Whether sending the same request again (later) may succeed."
    )
    field: str | None = Field(
        None, description="The input or output field at fault, when there is one."
    )
    exception: str | None = Field(
        None, description="The dspex exception class behind the error, when there is one."
    )

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe ``exc`` for a result record.

        dspex errors keep their (already redacted) message; any other exception
        becomes ``internal`` with a generic message, so nothing about the
        worker's internals reaches the results topic. A ProgramNotFoundError
        with a ``version`` is ``unknown_version`` (the program exists, that
        version does not); without one it is ``unknown_program``.

        Args:
            exc: The exception that ended the request.

        Returns:
            The error info, with the type from the exception's class.
        """
        if not isinstance(exc, DSPExError):
            return cls(type="internal", message=INTERNAL_ERROR_MESSAGE, retryable=False)
        code = cast(ErrorType, error_type(exc))
        if code == "internal":
            # Configuration, state and wire errors here are dspex's own fault, and
            # their messages may name files or settings of the worker.
            return cls(
                type="internal",
                message=INTERNAL_ERROR_MESSAGE,
                retryable=bool(exc.retryable),
                exception=type(exc).__name__,
            )
        field: str | None = None
        if isinstance(exc, InputError):
            field = exc.fields[0] if exc.fields else None
        elif isinstance(exc, AdapterParseError):
            field = exc.field
        message = str(exc).strip() or type(exc).__name__
        return cls(
            type=code,
            message=shorten(" ".join(message.split()), MAX_ERROR_MESSAGE_CHARS),
            retryable=bool(exc.retryable),
            field=field,
            exception=type(exc).__name__,
        )


class InferenceResult(WireRecord):
    """The answer to one :class:`InferenceRequest`: its outputs, or a typed error.

    Produced by the inference worker that handled the request, on the request's
    ``reply_to`` topic or ``dspex.inference.results``, keyed by request id.
    ``status`` is ``"ok"`` with ``outputs`` and no ``error``, or ``"error"``
    with ``error`` and no ``outputs``. Clients match results to requests by
    ``request_id`` and drop duplicates.

    Example:
        >>> result = InferenceResult(
        ...     request_id="r1", program_id="qa", program_version=1, status="ok",
        ...     outputs={"answer": "42"}, latency_ms=12.5, worker_id="w1")
        >>> result.kafka_key()
        b'r1'
    """

    schema_: Literal["dspex.inference.result/v1"] = Field(
        "dspex.inference.result/v1", alias="schema", description="Record kind and version."
    )
    request_id: Identifier = Field(description="The `request_id` of the request answered.")
    program_id: Identifier = Field(description="The program the request named.")
    program_version: int | None = Field(
        ge=1,
        description="The version that ran; null when no version could be resolved "
        "(unknown program or version).",
    )
    status: Literal["ok", "error"] = Field(
        description="`ok`: `outputs` is set. `error`: `error` is set."
    )
    outputs: dict[str, Any] | None = Field(
        None, description="The program's output fields by name, when `status` is `ok`."
    )
    error: ErrorInfo | None = Field(None, description="Why it failed, when `status` is `error`.")
    usage: Usage = Field(
        default_factory=Usage, description="Tokens, cost and LM calls spent on the request."
    )
    latency_ms: float = Field(
        ge=0.0,
        description="Milliseconds from the worker taking the request to the result being ready.",
    )
    worker_id: Identifier = Field(description="The worker that produced the result.")
    completed_at_ms: EpochMillis = Field(
        default_factory=now_ms, description="When the result was ready (epoch ms)."
    )

    @model_validator(mode="after")
    def _status_matches_payload(self) -> Self:
        if self.status == "ok" and (self.outputs is None or self.error is not None):
            raise ValueError("status 'ok' needs `outputs` and no `error`")
        if self.status == "error" and (self.error is None or self.outputs is not None):
            raise ValueError("status 'error' needs `error` and no `outputs`")
        return self

    def kafka_key(self) -> bytes:
        """The request id: all answers to one request land on one partition."""
        return self.request_id.encode("utf-8")
