"""The optimizer's records, journal, promotion gate, settings and trace joining."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dspex.errors import ConfigurationError
from dspex.optimizers.bootstrap import BootstrapFewShot
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.mipro import MIPROv2
from dspex.programs.predict import Predict
from dspex.programs.state import ProgramSpec
from dspex.streams.optimizer_service.jobs import Journal, build_optimizer, gate, online_settings
from dspex.streams.optimizer_service.online import TraceBook
from dspex.streams.records import (
    CandidateRecord,
    ControlCommand,
    FeedbackRecord,
    InferenceRequest,
    InferenceResult,
    OptimizerEvent,
    decode,
    encode,
)

ROWS = [{"q": "1", "a": "2"}]


def optimize(**fields: Any) -> ControlCommand:
    values: dict[str, Any] = {
        "command": "optimize",
        "program_id": "qa",
        "optimizer": "bootstrap",
        "trainset": ROWS,
        "valset": ROWS,
    }
    return ControlCommand(**(values | fields))


def candidate(job: str, number: int, score: float | None) -> CandidateRecord:
    return CandidateRecord(
        job_id=job,
        program_id="qa",
        candidate_id=f"{job}-t{number}",
        kind="trial",
        number=number,
        params={"set": number},
        spec=ProgramSpec.from_program(Predict("q -> a")),
        score=score,
        examples=4,
    )


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"command": "optimize", "valset": ROWS}, "needs optimizer, trainset"),
        ({"command": "online"}, "needs valset"),
        ({"command": "promote"}, "needs candidate_id"),
        ({"command": "pause"}, "needs job_id"),
    ],
)
def test_a_command_names_what_it_lacks(fields: dict[str, Any], missing: str) -> None:
    with pytest.raises(ValidationError, match=missing):
        ControlCommand(program_id="qa", **fields)


def test_records_round_trip_through_the_codec() -> None:
    event = OptimizerEvent(event="job_started", program_id="qa", command=optimize(job_id="j"))
    feedback = FeedbackRecord(request_id="r1", label={"a": "2"})
    for record in (optimize(), candidate("j", 0, 0.5), event, feedback):
        assert decode(encode(record)) == record


def test_feedback_needs_a_score_or_a_label_and_a_score_in_range() -> None:
    with pytest.raises(ValidationError, match="needs a `score` or a `label`"):
        FeedbackRecord(request_id="r1")
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        FeedbackRecord(request_id="r1", score=3.0)


def status(journal: Journal) -> str:
    return journal.jobs["j1"].status


def test_journal_rebuilds_jobs_trials_and_handled_commands() -> None:
    journal = Journal()
    start = optimize(job_id="j1")
    journal.apply(OptimizerEvent(event="job_started", program_id="qa", command=start, version=2))
    journal.apply(candidate("j1", 1, 0.7))
    journal.apply(candidate("j1", 0, None))
    journal.apply(
        OptimizerEvent(event="job_paused", program_id="qa", job_id="j1", command_id="c-pause")
    )
    job = journal.jobs["j1"]
    assert status(journal) == "paused"
    assert job.base_version == 2
    assert [(t.number, t.score) for t in job.trials()] == [(0, None), (1, 0.7)]
    assert job.next_number("trial") == 2
    assert journal.handled == {"c-pause"}
    assert journal.candidates["j1-t1"].score == 0.7
    journal.apply(OptimizerEvent(event="job_resumed", program_id="qa", job_id="j1"))
    assert status(journal) == "running"
    journal.apply(OptimizerEvent(event="job_failed", program_id="qa", job_id="j1"))
    assert status(journal) == "failed"


@pytest.mark.parametrize(
    ("score", "baseline", "margin", "promoted"),
    [
        (0.8, 0.6, 0.1, True),
        (0.65, 0.6, 0.1, False),  # better, but not by the margin
        (0.6, 0.6, 0.0, False),  # a tie never replaces the active version
        (0.61, 0.6, 0.0, True),
        (None, 0.6, 0.0, False),  # the candidate failed
        (0.1, None, 0.5, True),  # nothing to beat
    ],
)
def test_gate(score: float | None, baseline: float | None, margin: float, promoted: bool) -> None:
    assert gate(score, baseline, margin)[0] is promoted


def test_optimizer_settings_are_checked_by_name_and_type() -> None:
    executor = LocalExecutor()
    built = build_optimizer(optimize(settings={"max_labeled_demos": 2}), executor=executor)
    assert isinstance(built, BootstrapFewShot)
    assert built.max_labeled_demos == 2
    mipro = build_optimizer(
        optimize(optimizer="mipro", settings={"num_trials": 3, "init_temperature": 1}),
        executor=executor,
    )
    assert isinstance(mipro, MIPROv2)
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\) \['num_trials'\]"):
        build_optimizer(optimize(settings={"num_trials": 3}), executor=executor)
    with pytest.raises(ConfigurationError, match="must be int, got True"):
        build_optimizer(optimize(settings={"max_labeled_demos": True}), executor=executor)
    with pytest.raises(ConfigurationError, match="must be float"):
        build_optimizer(
            optimize(optimizer="mipro", settings={"init_temperature": "hot"}), executor=executor
        )


def test_online_settings_fill_defaults() -> None:
    command = ControlCommand(
        command="online", program_id="qa", valset=ROWS, settings={"min_traces": 3}
    )
    settings = online_settings(command)
    assert settings["min_traces"] == 3
    assert settings["max_demos"] == 4
    bad = command.model_copy(update={"settings": {"min_trace": 3}})
    with pytest.raises(ConfigurationError, match="min_trace"):
        online_settings(bad)


def request(rid: str, q: str) -> InferenceRequest:
    return InferenceRequest(request_id=rid, program_id="qa", inputs={"q": q})


def result(rid: str, a: str) -> InferenceResult:
    return InferenceResult(
        request_id=rid,
        program_id="qa",
        program_version=1,
        status="ok",
        outputs={"a": a},
        latency_ms=1,
        worker_id="w",
    )


def test_traces_join_in_any_order_and_labels_beat_outputs() -> None:
    book = TraceBook(capacity=100)
    assert book.add_feedback(FeedbackRecord(request_id="r1", score=0.5)) is None
    assert book.add_result(result("r1", "wrong")) is None
    scored = book.add_request(request("r1", "1"))
    assert scored is not None
    assert (scored.outputs, scored.score) == ({"a": "wrong"}, 0.5)
    book.add_request(request("r2", "2"))
    labelled = book.add_feedback(FeedbackRecord(request_id="r2", label={"a": "4"}))
    assert labelled is not None
    assert (labelled.outputs, labelled.score) == ({"a": "4"}, 1.0)
    assert [t.request_id for t in book.best("qa", min_score=0.0)] == ["r2", "r1"]
    assert [t.request_id for t in book.best("qa", min_score=0.9)] == ["r2"]
    example = labelled.example()
    assert example.inputs().to_dict() == {"q": "2"}
    assert example.labels().to_dict() == {"a": "4"}


def test_trace_book_forgets_the_oldest_beyond_its_capacity() -> None:
    book = TraceBook(capacity=100)
    for i in range(150):
        book.add_request(request(f"r{i}", str(i)))
    assert book.add_feedback(FeedbackRecord(request_id="r10", label={"a": "x"})) is None
    assert book.add_feedback(FeedbackRecord(request_id="r120", label={"a": "x"})) is not None
    # A failed result is never a trace, though its request and feedback wait for one.
    book.add_request(request("bad", "0"))
    book.add_feedback(FeedbackRecord(request_id="bad", score=0.9))
    failed = result("bad", "x").model_copy(update={"status": "error", "outputs": None})
    assert book.add_result(failed) is None
    assert book.waiting_feedback("bad")
    assert book.add_result(result("bad", "x")) is not None
