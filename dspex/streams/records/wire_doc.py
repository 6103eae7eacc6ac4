"""Render ``docs/wire-format.md``: the wire records as Markdown and JSON Schema.

The document is generated from the models in :mod:`dspex.streams.records`
(their docstrings, field descriptions and ``model_json_schema``) and from
fixed examples built with them, so it cannot drift from the code: a test
compares the committed file with :func:`render_wire_format`, and
``dspex schema --out docs/wire-format.md`` rewrites it.

Example:
    >>> markdown = render_wire_format()
    >>> markdown.startswith("# Wire format")
    True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dspex.errors import InputError, WireFormatError
from dspex.programs.predict import Predict
from dspex.programs.signature import ensure_signature
from dspex.streams.records import (
    DEAD_LETTER_MAX_VALUE_BYTES,
    DEAD_LETTER_REASON_DESCRIPTIONS,
    DEFAULT_MAX_RECORD_BYTES,
    ERROR_TYPE_DESCRIPTIONS,
    MAX_ID_CHARS,
    MAX_METADATA_ENTRIES,
    CandidateRecord,
    ControlCommand,
    DeadLetter,
    ErrorInfo,
    EvalReport,
    EvalRequest,
    EvalScore,
    FeedbackRecord,
    InferenceRequest,
    InferenceResult,
    OptimizerEvent,
    ProgramRecord,
    TelemetryEvent,
    Usage,
    WireRecord,
    decode,
    encode,
)
from dspex.streams.records._base import describe_model

__all__ = ["RecordDoc", "render_wire_format", "wire_record_docs"]

#: 2026-01-01T00:00:00Z: every example's clock starts here, so the output is stable.
_T0 = 1_767_225_600_000
_REQUEST_ID = "3f2b8c1e9d4a4f6b8e7c5a1d2b3c4d5e"
_FAILED_REQUEST_ID = "9a7c1e5b3d2f4a6c8e0b1d3f5a7c9e2b"
_WORKER_ID = "dspex-worker-2"
_QUESTION = "What is the capital of France?"


@dataclass(frozen=True)
class RecordDoc:
    """How one record kind travels: its topics, its key, and examples of it.

    Attributes:
        model: The record class.
        topics: Where it is produced, in Markdown (default topic names, prefix ``dspex``).
        key: Which value is the Kafka record key, in words.
        examples: ``(caption, record)`` pairs, deterministic.
    """

    model: type[WireRecord]
    topics: tuple[str, ...]
    key: str
    examples: tuple[tuple[str, WireRecord], ...]


def _usage() -> Usage:
    # One gpt-4o-mini call: 96 prompt tokens at $0.15/M, 7 completion tokens at $0.60/M.
    return Usage(prompt_tokens=96, completion_tokens=7, cost_usd=0.0000186, calls=1)


def _program_record() -> ProgramRecord:
    signature = ensure_signature("question -> answer").with_instructions(
        "Answer the question with a short factual answer."
    )
    program = Predict(
        signature, demos=[{"question": "What is the capital of Italy?", "answer": "Rome"}]
    )
    return ProgramRecord.from_program(
        "qa",
        3,
        program,
        description="one demo chosen by BootstrapFewShot",
        created_at_ms=_T0 - 86_400_000,
    )


def _dead_letter() -> DeadLetter:
    # A request cut short by its producer: the closing brace is missing.
    value = (
        b'{"schema":"dspex.inference.request/v1","program_id":"qa",'
        b'"inputs":{"question":"What is the capital of France?"}'
    )
    return DeadLetter.from_error(
        _decode_error(value),
        topic="dspex.inference.requests",
        partition=2,
        offset=1187,
        key=b"qa",
        value=value,
        worker_id=_WORKER_ID,
        received_at_ms=_T0 + 5,
    )


def _decode_error(value: bytes) -> WireFormatError:
    """What ``decode`` says about ``value``: the example shows the real message."""
    try:
        decode(value)
    except WireFormatError as error:
        return error
    raise RuntimeError("the dead-letter example is a valid record")  # pragma: no cover


def wire_record_docs() -> tuple[RecordDoc, ...]:
    """Every record kind with its topics, key and examples, in document order."""
    request = InferenceRequest(
        request_id=_REQUEST_ID,
        program_id="qa",
        program_version=3,
        inputs={"question": _QUESTION},
        deadline_ms=_T0 + 30_000,
        created_at_ms=_T0,
        metadata={"tenant": "acme", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
    )
    ok = InferenceResult(
        request_id=_REQUEST_ID,
        program_id="qa",
        program_version=3,
        status="ok",
        outputs={"answer": "Paris"},
        usage=_usage(),
        latency_ms=412.7,
        worker_id=_WORKER_ID,
        completed_at_ms=_T0 + 415,
    )
    failed = InferenceResult(
        request_id=_FAILED_REQUEST_ID,
        program_id="qa",
        program_version=3,
        status="error",
        error=ErrorInfo.from_exception(
            InputError("StringSignature: missing input field(s) `question`", fields=["question"])
        ),
        latency_ms=0.4,
        worker_id=_WORKER_ID,
        completed_at_ms=_T0 + 1,
    )
    lm_call = TelemetryEvent(
        kind="lm_call",
        program_id="qa",
        program_version=3,
        request_id=_REQUEST_ID,
        worker_id=_WORKER_ID,
        status="ok",
        latency_ms=398.2,
        usage=_usage(),
        provider="openai",
        model="gpt-4o-mini",
        at_ms=_T0 + 412,
    )
    return (
        RecordDoc(
            InferenceRequest,
            ("`dspex.inference.requests`",),
            "`program_id`",
            (("A request with a 30 s deadline", request),),
        ),
        RecordDoc(
            InferenceResult,
            ("`dspex.inference.results`", "the request's `reply_to`"),
            "`request_id`",
            (("An answer", ok), ("An error: the request lacked an input field", failed)),
        ),
        RecordDoc(
            ProgramRecord,
            ("`dspex.programs` (compacted)",),
            "`program_id`",
            (("Version 3 of a question-answering program", _program_record()),),
        ),
        RecordDoc(
            DeadLetter,
            ("`dspex.inference.dlq`",),
            "the original record's key (none if it had none)",
            (("A request that is not valid JSON", _dead_letter()),),
        ),
        RecordDoc(
            TelemetryEvent,
            ("`dspex.telemetry`",),
            "`program_id`",
            (("One LM call made for a request", lm_call),),
        ),
        *_evaluation_docs(),
        *_optimizer_docs(),
    )


def _evaluation_docs() -> tuple[RecordDoc, ...]:
    example = {"question": _QUESTION, "answer": "Paris"}
    eval_request = EvalRequest(
        run_id="run-7f3a",
        run_size=500,
        index=41,
        program_id="qa",
        program_version=3,
        example=example,
        input_keys=["question"],
        metric="exact_match",
        created_at_ms=_T0,
    )
    score = EvalScore(
        run_id="run-7f3a",
        run_size=500,
        index=41,
        program_id="qa",
        program_version=3,
        score=1.0,
        outputs={"answer": "Paris"},
        trace=[
            {
                "predictor": "self",
                "signature_name": "StringSignature",
                "inputs": {"question": _QUESTION},
                "outputs": {"answer": "Paris"},
                "usage": _usage().model_dump(),
                "latency_s": 0.398,
            }
        ],
        usage=_usage(),
        latency_ms=401.5,
        worker_id=_WORKER_ID,
        at_ms=_T0 + 402,
    )
    report = EvalReport.empty("run-7f3a", "qa", 500)
    for index in range(3):
        report = report.add(index, float(index != 1), error=False, cost_usd=0.0001)
    report = report.model_copy(update={"updated_at_ms": _T0 + 2_000})
    return (
        RecordDoc(
            EvalRequest,
            ("`dspex.eval.requests`",),
            "`program_id`",
            (("Example 41 of a 500-example run of version 3", eval_request),),
        ),
        RecordDoc(
            EvalScore,
            ("`dspex.eval.scores`", "the request's `reply_to`"),
            "`run_id`",
            (("A correct answer", score),),
        ),
        RecordDoc(
            EvalReport,
            ("`dspex.eval.reports` (compacted)",),
            "`run_id`",
            (("A run three examples in", report),),
        ),
    )


def _optimizer_docs() -> tuple[RecordDoc, ...]:
    valset = [{"question": _QUESTION, "answer": "Paris"}]
    optimize = ControlCommand(
        command_id="c-51d0",
        command="optimize",
        program_id="qa",
        job_id="mipro-qa-7",
        optimizer="mipro",
        settings={"num_trials": 12, "minibatch_size": 25},
        trainset=[{"question": "What is the capital of Italy?", "answer": "Rome"}],
        valset=valset,
        metric="exact_match",
        seed=7,
        margin=0.02,
        created_at_ms=_T0,
    )
    rollback = ControlCommand(
        command_id="c-77e2", command="rollback", program_id="qa", created_at_ms=_T0
    )
    program = _program_record()
    candidate = CandidateRecord(
        job_id="mipro-qa-7",
        program_id="qa",
        candidate_id="mipro-qa-7-t4",
        kind="trial",
        number=4,
        params={"demo_set": 2, "instruction": 1},
        spec=program.spec,
        score=0.72,
        examples=25,
        full_eval=False,
        usage=_usage(),
        created_at_ms=_T0 + 60_000,
    )
    promoted = OptimizerEvent(
        event="promoted",
        program_id="qa",
        job_id="mipro-qa-7",
        command_id="c-51d0",
        candidate_id="mipro-qa-7-final",
        version=4,
        score=0.74,
        baseline=0.66,
        message="candidate 0.7400 vs active 0.6600 (+0.0800, margin 0.02)",
        at_ms=_T0 + 600_000,
    )
    feedback = FeedbackRecord(
        request_id=_REQUEST_ID, program_id="qa", label={"answer": "Paris"}, created_at_ms=_T0
    )
    return (
        RecordDoc(
            ControlCommand,
            ("`dspex.control`",),
            "`program_id`",
            (("Start a MIPROv2 job", optimize), ("Roll back to the previous version", rollback)),
        ),
        RecordDoc(
            CandidateRecord,
            ("`dspex.candidates`",),
            "`program_id`",
            (("Trial 4 of a job, scored on a minibatch", candidate),),
        ),
        RecordDoc(
            OptimizerEvent,
            ("`dspex.candidates`",),
            "`program_id`",
            (("The gate promoted a job's result", promoted),),
        ),
        RecordDoc(
            FeedbackRecord,
            ("`dspex.feedback`",),
            "`request_id`",
            (("The right answer to a production request", feedback),),
        ),
    )


def render_wire_format() -> str:
    """The complete Markdown of ``docs/wire-format.md``; byte-identical on every call.

    Returns:
        The document, ending with one newline.
    """
    docs = wire_record_docs()
    parts: list[str] = [_intro(docs)]
    for doc in docs:
        parts.append(_record_section(doc))
    return "\n\n".join(part.strip("\n") for part in parts) + "\n"


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, ensure_ascii=False) + "\n```"


def _topics(doc: RecordDoc) -> str:
    return ", ".join(doc.topics)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _kcat_example() -> str:
    request = {
        "schema": InferenceRequest.schema_id(),
        "request_id": _REQUEST_ID,
        "program_id": "qa",
        "inputs": {"question": _QUESTION},
    }
    line = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
    decode(line.encode("utf-8"), expect=InferenceRequest)  # the snippet must be a valid request
    return (
        "```sh\n"
        f"echo 'qa|{line}' \\\n"
        "  | kcat -P -b localhost:9092 -t dspex.inference.requests -K '|'\n"
        "kcat -C -b localhost:9092 -t dspex.inference.results -o end -f '%k %s\\n'\n"
        "```"
    )


def _intro(docs: Sequence[RecordDoc]) -> str:
    records = _table(
        ("schema", "record", "topics (default names)", "key"),
        [
            (
                f"`{doc.model.schema_id()}`",
                f"[{doc.model.__name__}](#{_anchor(doc)})",
                _topics(doc),
                doc.key,
            )
            for doc in docs
        ],
    )
    errors = _table(
        ("type", "meaning"),
        [(f"`{name}`", text) for name, text in ERROR_TYPE_DESCRIPTIONS.items()],
    )
    reasons = _table(
        ("reason", "meaning"),
        [(f"`{name}`", text) for name, text in DEAD_LETTER_REASON_DESCRIPTIONS.items()],
    )
    return f"""
# Wire format

<!-- Generated from dspex/streams/records.py by `dspex schema --out docs/wire-format.md`.
     Do not edit by hand: a test fails when this file and the code disagree. -->

Every record value on dspex's Kafka topics is **plain JSON, UTF-8**: one JSON
object per record, written compactly (the examples below are indented for
reading). Any Kafka client (kcat, Java, Go, ...) can produce requests and read
results without Python; this page is everything it needs.

## Conventions

- **`schema`**: every record has a `schema` field, `dspex.<kind>/v<N>`,
  naming its kind and version. Readers dispatch on it; a record without a
  known `schema` goes to the dead-letter topic.
- **Unknown fields are rejected**, not ignored: a typo'd field name makes the
  record invalid instead of silently losing the value.
- **Versioning**: a schema string names one exact set of fields. Any change
  a `v<N>` reader would reject (a new field, a new error type or reason, a
  removed, renamed or retyped field, a tighter bound) comes with a new
  version `v<N+1>`; readers accept both versions during a rollout, and
  writers switch once every reader does. Relaxing a bound or rewording a
  description keeps the version.
- **Optional fields** (those not in a schema's `required` list) may be
  left out: they take the `default` shown, or a value generated where the
  record is read (`request_id`, creation times). `null` means "none".
- **Times** are integer milliseconds since the Unix epoch (UTC), named
  `*_ms`; durations are `latency_ms` (a float). Ids (`request_id`,
  `program_id`, ...) are 1 to {MAX_ID_CHARS} characters.
- **Floats** are finite: JSON has no NaN or Infinity, so they are rejected
  where a number is expected, and written as `null` inside free-form inputs
  and outputs.
- **Limits**: a record value larger than {DEFAULT_MAX_RECORD_BYTES:,} bytes is rejected
  (`too_large`); `metadata` holds at most {MAX_METADATA_ENTRIES} entries; a dead letter keeps
  the first {DEAD_LETTER_MAX_VALUE_BYTES:,} bytes of the original value.
- **Keys** are the UTF-8 bytes of the value named below. Topic names are
  the defaults, under the prefix `dspex`, which a deployment may change.

## Records and their keys

{records}

## Error types

An error result carries `error.type`, one of these, and `error.retryable`:
whether sending the same request again (later) may succeed.

{errors}

## Dead-letter reasons

A record that cannot be read at all is not answered: it is copied, with its
original bytes, to the dead-letter topic with one of these reasons.

{reasons}

## Trying it with kcat

Produce a request keyed by its program id, and watch the results:

{_kcat_example()}
"""


def _anchor(doc: RecordDoc) -> str:
    return doc.model.__name__.lower()


def _record_section(doc: RecordDoc) -> str:
    model = doc.model
    lines = [
        f'<a id="{_anchor(doc)}"></a>',
        f"## {model.__name__}: `{model.schema_id()}`",
        "",
        describe_model(model),
        "",
        f"- **Topics**: {_topics(doc)}",
        f"- **Key**: {doc.key}",
    ]
    for caption, record in doc.examples:
        lines += ["", f"**Example.** {caption}:", "", _json_block(json.loads(encode(record)))]
    lines += [
        "",
        "<details><summary>JSON Schema</summary>",
        "",
        _json_block(model.model_json_schema(by_alias=True)),
        "",
        "</details>",
    ]
    return "\n".join(lines)
