"""The examples of ``docs/wire-format.md``: every record kind, its topics, key and examples.

Each :class:`RecordDoc` says how one record kind travels and shows it with
fixed examples built from the models themselves, on a fixed clock, so the
rendered document (:mod:`dspex.streams.records.wire_doc`) is byte-identical on
every run and every example is a valid record.
"""

from __future__ import annotations

from dataclasses import dataclass

from dspex.errors import InputError, WireFormatError
from dspex.programs.predict import Predict
from dspex.programs.signature import ensure_signature
from dspex.streams.records import (
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
)

__all__ = ["QUESTION", "REQUEST_ID", "RecordDoc", "wire_record_docs"]

#: 2026-01-01T00:00:00Z: every example's clock starts here, so the output is stable.
_T0 = 1_767_225_600_000
#: The request of the examples; the kcat snippet sends it too.
REQUEST_ID = "3f2b8c1e9d4a4f6b8e7c5a1d2b3c4d5e"
#: The question the examples ask.
QUESTION = "What is the capital of France?"
_FAILED_REQUEST_ID = "9a7c1e5b3d2f4a6c8e0b1d3f5a7c9e2b"
_WORKER_ID = "dspex-worker-2"


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
        request_id=REQUEST_ID,
        program_id="qa",
        program_version=3,
        inputs={"question": QUESTION},
        deadline_ms=_T0 + 30_000,
        created_at_ms=_T0,
        metadata={"tenant": "acme", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
    )
    ok = InferenceResult(
        request_id=REQUEST_ID,
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
        request_id=REQUEST_ID,
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
    example = {"question": QUESTION, "answer": "Paris"}
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
                "inputs": {"question": QUESTION},
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
    valset = [{"question": QUESTION, "answer": "Paris"}]
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
        request_id=REQUEST_ID, program_id="qa", label={"answer": "Paris"}, created_at_ms=_T0
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
