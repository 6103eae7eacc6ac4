"""The wire records of dspex's Kafka topics, and the codec between them and bytes.

Every record value is one JSON object (UTF-8) with a ``schema`` field naming
its kind and version, e.g. ``"dspex.inference.request/v1"``. Each kind is a
frozen pydantic model that rejects unknown fields, so a typo is an error and
not a silently dropped field. The models are published as JSON Schema in
``docs/wire-format.md`` (see :mod:`dspex.streams.records.wire_doc`), so any Kafka
client can produce requests and read results without Python.

This module imports neither Faust nor aiokafka: clients of any kind may use it.

::

    WireRecord                  a Kafka record value, with `schema`; kafka_key()
    ├── InferenceRequest        dspex.inference.request/v1   run a program on inputs
    ├── InferenceResult         dspex.inference.result/v1    its outputs, or an ErrorInfo
    ├── ProgramRecord           dspex.program/v1             a program version (ProgramSpec)
    ├── DeadLetter              dspex.dead_letter/v1         a record that could not be read
    ├── TelemetryEvent          dspex.telemetry/v1           one finished request or LM call
    ├── EvalRequest             dspex.eval.request/v1        one example of an eval run
    ├── EvalScore               dspex.eval.score/v1          that example, scored
    ├── EvalReport              dspex.eval.report/v1         a run's running aggregate
    ├── ControlCommand          dspex.control/v1             optimize, promote, rollback, ...
    ├── CandidateRecord         dspex.candidate/v1           a proposed version, evaluated
    ├── OptimizerEvent          dspex.optimizer.event/v1     a job's step or a command's outcome
    └── FeedbackRecord          dspex.feedback/v1            a score or label for a result

Example:
    >>> data = encode(InferenceRequest(program_id="qa", inputs={"question": "Why?"}))
    >>> decode(data, expect=InferenceRequest).inputs
    {'question': 'Why?'}
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar, overload

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, from_json

from dspex.errors import WireFormatError
from dspex.streams.records._base import (
    DEAD_LETTER_MAX_VALUE_BYTES,
    DEAD_LETTER_REASON_DESCRIPTIONS,
    DEFAULT_MAX_RECORD_BYTES,
    ERROR_TYPE_DESCRIPTIONS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_ID_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    DeadLetterReason,
    ErrorType,
    Usage,
    WireModel,
    WireRecord,
    json_kind,
    now_ms,
    shorten,
)
from dspex.streams.records._coordination import ProgramRecord
from dspex.streams.records._evaluation import EvalReport, EvalRequest, EvalScore, ScoreErrorInfo
from dspex.streams.records._inference import ErrorInfo, InferenceRequest, InferenceResult
from dspex.streams.records._operations import DeadLetter, TelemetryEvent
from dspex.streams.records._optimizer import (
    CandidateRecord,
    ControlCommand,
    FeedbackRecord,
    OptimizerEvent,
)

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
    "RECORD_TYPES",
    "CandidateRecord",
    "ControlCommand",
    "DeadLetter",
    "DeadLetterReason",
    "ErrorInfo",
    "ErrorType",
    "EvalReport",
    "EvalRequest",
    "EvalScore",
    "FeedbackRecord",
    "InferenceRequest",
    "InferenceResult",
    "OptimizerEvent",
    "ProgramRecord",
    "Record",
    "ScoreErrorInfo",
    "TelemetryEvent",
    "Usage",
    "WireModel",
    "WireRecord",
    "decode",
    "encode",
    "now_ms",
]

#: Any record ``decode`` can return.
Record: TypeAlias = (
    InferenceRequest
    | InferenceResult
    | ProgramRecord
    | DeadLetter
    | TelemetryEvent
    | EvalRequest
    | EvalScore
    | EvalReport
    | ControlCommand
    | CandidateRecord
    | OptimizerEvent
    | FeedbackRecord
)

R = TypeVar("R", bound=WireRecord)

#: Record kind by ``schema`` value: the one table ``decode`` dispatches on.
RECORD_TYPES: Final[Mapping[str, type[Record]]] = MappingProxyType(
    {
        model.schema_id(): model
        for model in (
            InferenceRequest,
            InferenceResult,
            ProgramRecord,
            DeadLetter,
            TelemetryEvent,
            EvalRequest,
            EvalScore,
            EvalReport,
            ControlCommand,
            CandidateRecord,
            OptimizerEvent,
            FeedbackRecord,
        )
    }
)

#: At most this many validation problems are listed in an ``invalid_record`` message.
_MAX_LISTED_PROBLEMS = 5
#: Location parts (which may be keys taken from the input) are cut to this length.
_MAX_LOCATION_PART_CHARS = 40


def encode(record: WireRecord) -> bytes:
    """``record`` as compact UTF-8 JSON, fields by their wire names (``schema``).

    Non-finite floats inside free-form values (inputs, outputs) become ``null``:
    JSON has no NaN.

    Args:
        record: The record to publish.

    Returns:
        The Kafka record value.

    Raises:
        WireFormatError: (reason ``unencodable``) A free-form value holds
            something JSON cannot represent: an arbitrary object, bytes that are
            not UTF-8, a string with a lone surrogate.
    """
    try:
        return record.model_dump_json(by_alias=True, warnings="error").encode("utf-8")
    except PydanticSerializationError as exc:
        raise WireFormatError(
            f"cannot encode {record.schema_id()} record as JSON: {shorten(str(exc), 300)}",
            reason="unencodable",
        ) from exc


@overload
def decode(data: bytes, *, expect: type[R], max_bytes: int = ...) -> R: ...


@overload
def decode(
    data: bytes,
    *,
    expect: tuple[type[WireRecord], ...] | None = None,
    max_bytes: int = ...,
) -> Record: ...


def decode(
    data: bytes,
    *,
    expect: type[WireRecord] | tuple[type[WireRecord], ...] | None = None,
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> WireRecord:
    """Read one record from a Kafka record value.

    The ``schema`` field picks the model; ``expect`` restricts which kinds are
    accepted (a topic carries only some). Every failure is a
    :class:`~dspex.errors.WireFormatError` whose ``reason`` is a
    :data:`DeadLetterReason`, ready for a :class:`DeadLetter`.

    Args:
        data: The record value.
        expect: The record class, or classes, the caller accepts; None: any.
        max_bytes: Larger values are rejected before they are parsed.

    Returns:
        The validated record.

    Raises:
        WireFormatError: ``too_large``, ``invalid_utf8``, ``invalid_json``,
            ``unknown_schema`` (no or an unknown ``schema``, or a kind not in
            ``expect``) or ``invalid_record`` (fields missing, unknown,
            mistyped or out of bounds; the message names them, not their values).
    """
    if len(data) > max_bytes:
        raise WireFormatError(
            f"record is {len(data)} bytes, more than the {max_bytes} allowed", reason="too_large"
        )
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireFormatError(
            f"record is not UTF-8: invalid byte at offset {exc.start}", reason="invalid_utf8"
        ) from exc
    try:
        # pydantic's parser rejects NaN, lone surrogates and deep nesting, which
        # json.loads would let through (or answer with RecursionError).
        parsed = from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        raise WireFormatError(
            f"record is not JSON: {shorten(str(exc), 200)}", reason="invalid_json"
        ) from exc
    model = _model_for(parsed, expect)
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        raise WireFormatError(_describe(model.schema_id(), exc), reason="invalid_record") from exc


def _model_for(
    parsed: Any, expect: type[WireRecord] | tuple[type[WireRecord], ...] | None
) -> type[Record]:
    if not isinstance(parsed, dict):
        raise WireFormatError(
            f"record is a JSON {json_kind(parsed)}, not an object with a `schema` field",
            reason="unknown_schema",
        )
    if "schema" not in parsed:
        raise WireFormatError("record has no `schema` field", reason="unknown_schema")
    schema = parsed["schema"]
    model = RECORD_TYPES.get(schema) if isinstance(schema, str) else None
    if model is None:
        shown = shorten(schema, 80) if isinstance(schema, str) else f"a JSON {json_kind(schema)}"
        raise WireFormatError(
            f"unknown schema {shown!r}; known: {', '.join(RECORD_TYPES)}",
            reason="unknown_schema",
        )
    if expect is not None and not issubclass(model, expect):
        expected = expect if isinstance(expect, tuple) else (expect,)
        raise WireFormatError(
            f"a {model.schema_id()} record is not accepted here (expected "
            f"{' or '.join(kind.schema_id() for kind in expected)})",
            reason="unknown_schema",
        )
    return model


def _describe(schema: str, exc: ValidationError) -> str:
    """The fields at fault and why, without the values (which may be huge or private)."""
    problems = exc.errors(include_url=False, include_input=False, include_context=False)
    listed = [
        f"{_location(problem['loc'])}: {shorten(problem['msg'].removeprefix('Value error, '), 200)}"
        for problem in problems[:_MAX_LISTED_PROBLEMS]
    ]
    more = len(problems) - len(listed)
    message = f"invalid {schema} record: " + "; ".join(listed)
    if more > 0:
        message += f"; and {more} more"
    return shorten(message, MAX_ERROR_MESSAGE_CHARS)


def _location(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "record"
    parts = [
        f"[{part}]" if isinstance(part, int) else shorten(part, _MAX_LOCATION_PART_CHARS)
        for part in loc
    ]
    return ".".join(parts).replace(".[", "[")
