"""Wire records: round trips, every dead-letter reason, error mapping, invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dspex.errors import (
    AdapterParseError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    InputError,
    LMAuthError,
    LMBadRequestError,
    LMConnectionError,
    LMError,
    LMRateLimitError,
    LMResponseError,
    LMServerError,
    LMTimeoutError,
    ProgramNotFoundError,
    StateError,
    ToolError,
    WireFormatError,
)
from dspex.programs import ChainOfThought, Module, Predict, Prediction, ProgramRegistry, TokenUsage
from dspex.streams.records import (
    DEAD_LETTER_MAX_VALUE_BYTES,
    DEAD_LETTER_REASON_DESCRIPTIONS,
    ERROR_TYPE_DESCRIPTIONS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_METADATA_ENTRIES,
    RECORD_TYPES,
    DeadLetter,
    DeadLetterReason,
    ErrorInfo,
    ErrorType,
    InferenceRequest,
    InferenceResult,
    ProgramRecord,
    TelemetryEvent,
    Usage,
    WireRecord,
    decode,
    encode,
)

T0 = 1_767_225_600_000


def request(**overrides: Any) -> InferenceRequest:
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "program_id": "qa",
        "inputs": {"question": "Où est la gare ?", "n": 3, "tags": ["a", None]},
        "created_at_ms": T0,
    }
    return InferenceRequest(**(fields | overrides))


def ok_result(**overrides: Any) -> InferenceResult:
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "program_id": "qa",
        "program_version": 2,
        "status": "ok",
        "outputs": {"answer": "Paris", "confidence": 0.9},
        "usage": Usage(prompt_tokens=10, completion_tokens=2, cost_usd=0.001, calls=1),
        "latency_ms": 12.5,
        "worker_id": "w-1",
        "completed_at_ms": T0,
    }
    return InferenceResult(**(fields | overrides))


def error_result() -> InferenceResult:
    return InferenceResult(
        request_id="r-2",
        program_id="nope",
        program_version=None,
        status="error",
        error=ErrorInfo(type="unknown_program", message="no program 'nope'", retryable=False),
        latency_ms=0.1,
        worker_id="w-1",
        completed_at_ms=T0,
    )


def every_record() -> list[WireRecord]:
    return [
        request(),
        request(
            program_version=4,
            reply_to="my-app.results",
            deadline_ms=T0 + 1000,
            rollout_id="ro-1",
            metadata={"tenant": "acme"},
        ),
        ok_result(),
        error_result(),
        ProgramRecord.from_program("qa", 1, ChainOfThought("question -> answer"), created_at_ms=T0),
        DeadLetter.from_error(
            WireFormatError("record is not JSON", reason="invalid_json"),
            topic="dspex.inference.requests",
            partition=1,
            offset=42,
            key=b"qa",
            value=b"{not json",
            worker_id="w-1",
            received_at_ms=T0,
        ),
        TelemetryEvent(
            kind="request",
            program_id="qa",
            program_version=1,
            request_id="r-1",
            worker_id="w-1",
            status="error",
            error_type="lm_unavailable",
            latency_ms=5.0,
            at_ms=T0,
        ),
        TelemetryEvent(
            kind="lm_call",
            program_id="qa",
            worker_id="w-1",
            status="ok",
            latency_ms=300.0,
            provider="openai",
            model="gpt-4o-mini",
            cached=True,
            at_ms=T0,
        ),
    ]


RECORDS = every_record()


# --- round trips and encoding ---------------------------------------------------------


@pytest.mark.parametrize("record", every_record(), ids=lambda r: type(r).__name__)
def test_every_record_round_trips(record: WireRecord) -> None:
    data = encode(record)
    assert decode(data) == record
    assert decode(data, expect=type(record)) == record
    assert json.loads(data)["schema"] == record.schema_id()


def test_encode_is_compact_utf8_json_by_alias() -> None:
    data = encode(request())
    text = data.decode("utf-8")
    assert text.startswith('{"schema":"dspex.inference.request/v1",')
    assert ": " not in text
    assert ", " not in text.replace("Où est", "")
    assert "Où est la gare ?" in text  # raw UTF-8, not \u escapes
    assert "schema_" not in text


def test_program_spec_is_serialised_by_alias() -> None:
    record = ProgramRecord.from_program("qa", 1, Predict("question -> answer"))
    spec = json.loads(encode(record))["spec"]
    assert spec["schema"] == "dspex.program_spec/v1"
    assert "schema_" not in spec


def test_non_finite_floats_in_free_form_values_become_null() -> None:
    data = encode(ok_result(outputs={"score": float("nan"), "big": float("inf")}))
    assert b"NaN" not in data
    assert b"Infinity" not in data
    assert decode(data, expect=InferenceResult).outputs == {"score": None, "big": None}


def test_non_finite_floats_are_rejected_in_number_fields() -> None:
    with pytest.raises(ValidationError):
        ok_result(latency_ms=float("nan"))
    with pytest.raises(ValidationError):
        Usage(cost_usd=float("inf"))


@pytest.mark.parametrize(
    "value", [object(), "\ud800", b"\xff"], ids=["object", "surrogate", "bytes"]
)
def test_unencodable_values_raise_wire_format_error(value: Any) -> None:
    with pytest.raises(WireFormatError) as caught:
        encode(ok_result(outputs={"x": value}))
    assert caught.value.reason == "unencodable"


def test_records_are_frozen_and_reject_unknown_fields() -> None:
    record = request()
    with pytest.raises(ValidationError):
        record.program_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        InferenceRequest(program_id="qa", inptus={})  # type: ignore[call-arg]


def test_request_defaults() -> None:
    first, second = InferenceRequest(program_id="qa"), InferenceRequest(program_id="qa")
    assert len(first.request_id) == 32
    assert first.request_id != second.request_id
    assert first.created_at_ms > T0 - 10**12
    assert first.inputs == {}
    assert first.metadata == {}
    assert first.program_version is None
    assert first.reply_to is None


@pytest.mark.parametrize(
    "fields",
    [
        {"program_id": ""},
        {"program_id": "x" * 201},
        {"request_id": ""},
        {"program_version": 0},
        {"reply_to": "not a topic!"},
        {"deadline_ms": -1},
        {"metadata": {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}},
        {"metadata": {"k" * 129: "v"}},
        {"metadata": {"k": "v" * 1025}},
        {"metadata": {"k": 1}},
    ],
    ids=lambda f: next(iter(f)),
)
def test_request_bounds(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(**fields)


def test_deadline_passed() -> None:
    assert not request().deadline_passed()
    timed = request(deadline_ms=T0 + 100)
    assert not timed.deadline_passed(T0 + 99)
    assert timed.deadline_passed(T0 + 100)
    assert request(deadline_ms=0).deadline_passed()


def test_kafka_keys_follow_the_design_table() -> None:
    assert request().kafka_key() == b"qa"
    assert ok_result().kafka_key() == b"r-1"
    assert ProgramRecord.from_program("qa", 1, Predict("q -> a")).kafka_key() == b"qa"
    event = TelemetryEvent(
        kind="request", program_id="qa", worker_id="w", status="ok", latency_ms=1
    )
    assert event.kafka_key() == b"qa"
    letter = every_record()[5]
    assert isinstance(letter, DeadLetter)
    assert letter.kafka_key() == b"qa"


def test_record_types_table() -> None:
    assert set(RECORD_TYPES) == {
        "dspex.inference.request/v1",
        "dspex.inference.result/v1",
        "dspex.program/v1",
        "dspex.dead_letter/v1",
        "dspex.telemetry/v1",
        "dspex.eval.request/v1",
        "dspex.eval.score/v1",
        "dspex.eval.report/v1",
        "dspex.control/v1",
        "dspex.candidate/v1",
        "dspex.optimizer.event/v1",
        "dspex.feedback/v1",
    }
    for schema, model in RECORD_TYPES.items():
        assert model.schema_id() == schema
    with pytest.raises(TypeError):
        RECORD_TYPES["x/v1"] = InferenceRequest  # type: ignore[index]


@pytest.mark.parametrize("model", list(RECORD_TYPES.values()), ids=lambda m: m.__name__)
def test_published_schema_requires_schema_and_forbids_extras(model: type[WireRecord]) -> None:
    schema = model.model_json_schema(by_alias=True)
    assert schema["required"][0] == "schema"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema"]["const"] == model.schema_id()
    assert ">>>" not in schema["description"]
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{model.__name__}.{name} has no description"


def test_descriptions_cover_every_error_type_and_reason() -> None:
    assert list(ERROR_TYPE_DESCRIPTIONS) == list(get_args(ErrorType))
    assert list(DEAD_LETTER_REASON_DESCRIPTIONS) == list(get_args(DeadLetterReason))


# --- decode: every dead-letter reason ------------------------------------------------

REQUEST_SCHEMA = '"schema":"dspex.inference.request/v1"'


@pytest.mark.parametrize(
    ("data", "reason", "mentions"),
    [
        (b"\xff\xfe", "invalid_utf8", "offset 0"),
        (b'{"schema":"dspex.inference.request/v1","program_id":"\xc3"}', "invalid_utf8", ""),
        (b"{not json", "invalid_json", "line 1"),
        (b"", "invalid_json", ""),
        (b'{"a": 1} {"b": 2}', "invalid_json", ""),
        (
            b'{"schema":"dspex.inference.request/v1","program_id":"qa","inputs":{"x":NaN}}',
            "invalid_json",
            "",
        ),
        (b'{"s": "\\ud800"}', "invalid_json", ""),
        (b"[" * 5000 + b"]" * 5000, "invalid_json", ""),
        (b"[]", "unknown_schema", "array"),
        (b'"dspex.inference.request/v1"', "unknown_schema", "string"),
        (b"{}", "unknown_schema", "no `schema`"),
        (b'{"schema": "x/v9"}', "unknown_schema", "'x/v9'"),
        (b'{"schema": 5}', "unknown_schema", "number"),
        (b'{"schema": null}', "unknown_schema", "null"),
        (b'{"schema": "dspex.inference.request/v2"}', "unknown_schema", "v2"),
        (b"{" + REQUEST_SCHEMA.encode() + b"}", "invalid_record", "program_id: Field required"),
        (
            b"{" + REQUEST_SCHEMA.encode() + b',"program_id":"qa","inptus":{}}',
            "invalid_record",
            "inptus: Extra inputs are not permitted",
        ),
        (
            b"{" + REQUEST_SCHEMA.encode() + b',"program_id":"qa","inputs":[1]}',
            "invalid_record",
            "inputs: Input should be a valid dictionary",
        ),
        (
            b"{" + REQUEST_SCHEMA.encode() + b',"program_id":"qa","schema_":"x"}',
            "invalid_record",
            "schema_",
        ),
    ],
)
def test_decode_rejects_with_reason(data: bytes, reason: str, mentions: str) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode(data)
    assert caught.value.reason == reason
    assert reason in DEAD_LETTER_REASON_DESCRIPTIONS
    assert mentions in str(caught.value)


def test_decode_rejects_too_large_before_parsing() -> None:
    data = encode(request())
    assert decode(data, max_bytes=len(data)) == request()
    with pytest.raises(WireFormatError) as caught:
        decode(data, max_bytes=len(data) - 1)
    assert caught.value.reason == "too_large"
    with pytest.raises(WireFormatError) as caught:
        decode(b"\xff" * 2_000_000)  # not even looked at: the default limit is 1 MB
    assert caught.value.reason == "too_large"


def test_result_validator_failures_are_invalid_records() -> None:
    payload = json.loads(encode(ok_result()))
    payload["outputs"] = None
    with pytest.raises(WireFormatError) as caught:
        decode(json.dumps(payload).encode())
    assert caught.value.reason == "invalid_record"
    assert "status 'ok' needs `outputs`" in str(caught.value)


def test_invalid_record_message_names_fields_not_values() -> None:
    secret = "sk-" + "x" * 100_000
    data = json.dumps(
        {
            "schema": "dspex.inference.request/v1",
            "program_id": secret,
            "program_version": secret,
            "metadata": {secret: 1},
            "a": 1,
            "b": 2,
            "c": 3,
            "d": 4,
        }
    ).encode()
    with pytest.raises(WireFormatError) as caught:
        decode(data)
    message = str(caught.value)
    assert caught.value.reason == "invalid_record"
    assert "x" * 50 not in message  # values are not echoed, keys are cut short
    assert len(message) < 1000
    assert "program_id: String should have at most 200 characters" in message
    assert "more" in message  # 8 problems, 5 listed


def test_decode_accepts_lax_numbers_from_other_languages() -> None:
    data = b'{"schema":"dspex.inference.request/v1","program_id":"qa","program_version":2.0}'
    assert decode(data, expect=InferenceRequest).program_version == 2


# --- expect= ---------------------------------------------------------------------------


def test_expect_restricts_the_kinds_accepted() -> None:
    data = encode(request())
    decoded: InferenceRequest = decode(data, expect=InferenceRequest)
    assert decoded.program_id == "qa"
    assert decode(data, expect=(InferenceRequest, ProgramRecord)) == request()
    with pytest.raises(WireFormatError) as caught:
        decode(data, expect=InferenceResult)
    assert caught.value.reason == "unknown_schema"
    assert "dspex.inference.result/v1" in str(caught.value)
    with pytest.raises(WireFormatError, match="program/v1 or dspex.telemetry/v1"):
        decode(data, expect=(ProgramRecord, TelemetryEvent))


def test_expect_checks_the_kind_before_validating_fields() -> None:
    with pytest.raises(WireFormatError) as caught:
        decode(b'{"schema":"dspex.program/v1"}', expect=InferenceRequest)
    assert caught.value.reason == "unknown_schema"


# --- hypothesis: decode never raises anything else ---------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    sorted(
        {
            name
            for model in RECORD_TYPES.values()
            for name in model.model_json_schema(by_alias=True)["properties"]
        }
    )
)


@st.composite
def record_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record's JSON with up to three fields dropped, added or replaced."""
    payload: dict[str, Any] = json.loads(encode(draw(st.sampled_from(RECORDS))))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(payload)) | field_names | st.text(max_size=8))
        if draw(st.booleans()):
            payload.pop(name, None)
        else:
            payload[name] = draw(json_values | st.sampled_from(["", "x" * 300, -1, 0, 1.5]))
    return payload


def decode_or_wire_error(data: bytes) -> WireRecord | None:
    """Decode ``data``; None when it raised a WireFormatError with a dead-letter reason."""
    reason = None
    try:
        return decode(data, max_bytes=10_000)
    except WireFormatError as exc:
        reason = exc.reason
    assert reason in DEAD_LETTER_REASON_DESCRIPTIONS
    return None


@given(st.binary(max_size=300))
def test_decode_of_arbitrary_bytes_is_a_record_or_a_wire_error(data: bytes) -> None:
    decode_or_wire_error(data)


@settings(max_examples=300)
@given(record_like())
def test_decode_of_record_like_json_is_a_record_or_a_wire_error(payload: dict[str, Any]) -> None:
    record = decode_or_wire_error(json.dumps(payload).encode("utf-8"))
    if record is not None:
        assert decode(encode(record)) == record


ids = st.text(min_size=1, max_size=200)


@given(
    st.builds(
        InferenceRequest,
        request_id=ids,
        program_id=ids,
        program_version=st.none() | st.integers(min_value=1),
        inputs=st.dictionaries(st.text(), json_values, max_size=5),
        deadline_ms=st.none() | st.integers(min_value=0),
        rollout_id=st.none() | ids,
        metadata=st.dictionaries(
            st.text(min_size=1, max_size=128), st.text(max_size=50), max_size=5
        ),
    )
)
def test_valid_requests_round_trip_exactly(record: InferenceRequest) -> None:
    assert decode(encode(record), expect=InferenceRequest) == record


@given(st.sampled_from(RECORDS), st.data())
def test_mutated_records_decode_or_fail_cleanly(record: WireRecord, data: st.DataObject) -> None:
    raw = bytearray(encode(record))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    decode_or_wire_error(bytes(raw))


# --- ErrorInfo ---------------------------------------------------------------------------


def lm(cls: type[LMError]) -> LMError:
    return cls("openai gpt-4o-mini: failed", provider="openai", model="gpt-4o-mini")


@pytest.mark.parametrize(
    ("exc", "error_type", "field", "retryable"),
    [
        (
            InputError("missing `question`", fields=["question", "context"]),
            "invalid_inputs",
            "question",
            False,
        ),
        (InputError("bad inputs"), "invalid_inputs", None, False),
        (
            AdapterParseError("no `answer`", adapter="chat", completion="...", field="answer"),
            "parse_error",
            "answer",
            True,
        ),
        (ToolError("search raised", tool="search"), "tool_error", None, False),
        (lm(LMRateLimitError), "lm_rate_limited", None, True),
        (lm(CircuitOpenError), "lm_unavailable", None, True),
        (lm(LMTimeoutError), "lm_unavailable", None, True),
        (lm(LMConnectionError), "lm_unavailable", None, True),
        (lm(LMServerError), "lm_error", None, True),
        (lm(LMResponseError), "lm_error", None, True),
        (lm(LMAuthError), "lm_error", None, False),
        (lm(LMBadRequestError), "lm_error", None, False),
        (lm(LMError), "lm_error", None, True),
        (DeadlineExceededError("no answer in 30 s", timeout_s=30), "deadline_exceeded", None, True),
        (ProgramNotFoundError("no program 'qa'", program_id="qa"), "unknown_program", None, False),
        (
            ProgramNotFoundError("'qa' has no version 9", program_id="qa", version=9),
            "unknown_version",
            None,
            False,
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_error_info_from_dspex_exceptions(
    exc: BaseException, error_type: ErrorType, field: str | None, retryable: bool
) -> None:
    info = ErrorInfo.from_exception(exc)
    assert (info.type, info.field, info.retryable) == (error_type, field, retryable)
    assert info.message == str(exc)
    assert info.exception == type(exc).__name__


def test_foreign_exceptions_are_internal_and_leak_nothing() -> None:
    info = ErrorInfo.from_exception(KeyError("Authorization: Bearer sk-secret"))
    assert info.type == "internal"
    assert not info.retryable
    assert "sk-secret" not in info.message
    assert "KeyError" not in info.message
    assert info.exception is None
    assert info.field is None


@pytest.mark.parametrize(
    "exc",
    [
        StateError("cannot read /srv/secrets/spec.json"),
        ConfigurationError("DSPEX_API_KEY=sk-secret is invalid"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_dspex_errors_are_internal_with_a_generic_message(exc: Exception) -> None:
    info = ErrorInfo.from_exception(exc)
    assert info.type == "internal"
    assert str(exc) not in info.message
    assert info.exception == type(exc).__name__


def test_a_request_breaking_its_schema_is_invalid_request_with_the_reason() -> None:
    exc = WireFormatError("`inputs`: Input should be a valid dictionary", reason="invalid_record")
    info = ErrorInfo.from_exception(exc)
    assert info.type == "invalid_request"
    assert info.message == str(exc)


def test_error_messages_are_one_bounded_line() -> None:
    info = ErrorInfo.from_exception(InputError("line one\nline two  " + "x" * 5000))
    assert "\n" not in info.message
    assert info.message.startswith("line one line two x")
    assert len(info.message) == MAX_ERROR_MESSAGE_CHARS
    assert ErrorInfo.from_exception(ToolError("", tool="t")).message == "ToolError"


def test_cancellation_is_internal() -> None:
    import asyncio

    assert ErrorInfo.from_exception(asyncio.CancelledError()).type == "internal"


# --- InferenceResult invariant -----------------------------------------------------------


ERROR = ErrorInfo(type="internal", message="boom", retryable=False)


@pytest.mark.parametrize(
    ("status", "outputs", "error"),
    [
        ("ok", None, None),
        ("ok", {"a": 1}, ERROR),
        ("ok", None, ERROR),
        ("error", None, None),
        ("error", {"a": 1}, ERROR),
        ("error", {"a": 1}, None),
    ],
)
def test_status_must_match_outputs_and_error(
    status: str, outputs: dict[str, Any] | None, error: ErrorInfo | None
) -> None:
    with pytest.raises(ValidationError, match="status"):
        ok_result(status=status, outputs=outputs, error=error)


def test_ok_with_empty_outputs_is_valid() -> None:
    assert ok_result(outputs={}).status == "ok"


def test_usage_from_token_usage() -> None:
    usage = TokenUsage(prompt_tokens=5, completion_tokens=3, cost_usd=0.5, calls=2, cached_calls=1)
    wire = Usage.from_token_usage(usage)
    assert wire.model_dump() == usage.model_dump()
    assert wire.total_tokens == 8
    assert Usage.from_token_usage(wire) is wire
    assert ok_result(usage=wire).usage == wire
    with pytest.raises(ValidationError):
        Usage(calls=-1)
    with pytest.raises(ValidationError):
        Usage.model_validate({"calls": 1, "tokens": 3})


# --- ProgramRecord -----------------------------------------------------------------------


def test_program_record_rebuilds_the_program() -> None:
    program = Predict("question -> answer", demos=[{"question": "2+2?", "answer": "4"}])
    record = ProgramRecord.from_program("qa", 7, program, description="more demos")
    decoded = decode(encode(record), expect=ProgramRecord)
    rebuilt = decoded.spec.build()
    assert isinstance(rebuilt, Predict)
    assert rebuilt.dump_state() == program.dump_state()
    assert (decoded.program_id, decoded.version, decoded.description) == ("qa", 7, "more demos")


class Custom(Module):
    def __init__(self) -> None:
        self.step = Predict("question -> answer")

    async def aforward(self, **inputs: Any) -> Prediction:
        return await self.step.acall(**inputs)


def test_program_record_needs_registered_custom_modules() -> None:
    with pytest.raises(StateError, match="register"):
        ProgramRecord.from_program("custom", 1, Custom())
    registry = ProgramRegistry()
    registry.register("custom", Custom)
    record = ProgramRecord.from_program("custom", 1, Custom(), registry=registry)
    assert isinstance(
        decode(encode(record), expect=ProgramRecord).spec.build(registry=registry), Custom
    )


def test_program_record_version_starts_at_one() -> None:
    with pytest.raises(ValidationError):
        ProgramRecord.from_program("qa", 0, Predict("q -> a"))


# --- DeadLetter ----------------------------------------------------------------------------


def dead_letter(
    value: bytes | None, key: bytes | None = b"k", reason: str = "invalid_json"
) -> DeadLetter:
    return DeadLetter.from_error(
        WireFormatError("bad\nrecord", reason=reason),
        topic="dspex.inference.requests",
        partition=0,
        offset=1,
        key=key,
        value=value,
        worker_id="w",
    )


def test_dead_letter_keeps_the_original_bytes() -> None:
    letter = decode(encode(dead_letter(b"\xff\x00binary", key=b"\x01key")), expect=DeadLetter)
    assert letter.original_value() == b"\xff\x00binary"
    assert letter.original_key() == b"\x01key"
    assert not letter.value_truncated
    assert letter.detail == "bad record"


def test_dead_letter_truncates_large_values() -> None:
    value = b"x" * (DEAD_LETTER_MAX_VALUE_BYTES + 10)
    letter = dead_letter(value, reason="too_large")
    assert letter.value_truncated
    assert letter.original_value() == value[:DEAD_LETTER_MAX_VALUE_BYTES]
    assert len(encode(letter)) < 1_000_000


def test_dead_letter_of_null_key_and_value() -> None:
    letter = dead_letter(None, key=None)
    assert letter.original_key() is None
    assert letter.kafka_key() is None
    assert letter.original_value() == b""


def test_dead_letter_keeps_records_with_unexpected_reasons() -> None:
    assert dead_letter(b"x", reason="unencodable").reason == "invalid_record"


@pytest.mark.parametrize("bad", ["not base64!", "abc", "===="])
def test_dead_letter_base64_is_checked(bad: str) -> None:
    payload = json.loads(encode(dead_letter(b"x")))
    payload["value_b64"] = bad
    with pytest.raises(WireFormatError) as caught:
        decode(json.dumps(payload).encode())
    assert caught.value.reason == "invalid_record"


def test_decode_errors_make_dead_letters() -> None:
    for data in (b"\xff", b"{", b"[]", b"{}", b'{"schema":"dspex.telemetry/v1"}'):
        with pytest.raises(WireFormatError) as caught:
            decode(data)
        assert dead_letter(data, reason=caught.value.reason).reason == caught.value.reason


# --- TelemetryEvent ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "request", "status": "error"},
        {"kind": "request", "status": "ok", "error_type": "internal"},
        {"kind": "lm_call", "status": "ok"},
        {"kind": "request", "status": "ok", "provider": "openai"},
        {"kind": "request", "status": "ok", "cached": True},
    ],
)
def test_telemetry_consistency(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TelemetryEvent(program_id="qa", worker_id="w", latency_ms=1.0, **fields)


# --- no broker code --------------------------------------------------------------------------


def test_records_import_neither_faust_nor_aiokafka() -> None:
    code = (
        "import sys, dspex.streams.records\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'faust', 'aiokafka', 'mode'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
