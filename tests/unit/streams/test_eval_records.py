"""Evaluation records: requests validate their example, reports aggregate each index once."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dspex.streams.records import EvalReport, EvalRequest, decode, encode


def test_a_request_names_inputs_its_example_has() -> None:
    with pytest.raises(ValidationError, match="lacks"):
        EvalRequest(
            run_id="r",
            run_size=1,
            index=0,
            program_id="qa",
            example={"answer": "4"},
            input_keys=["question"],
            metric="exact_match",
        )


def test_a_request_round_trips_and_rebuilds_its_example() -> None:
    request = EvalRequest(
        run_id="r",
        run_size=3,
        index=2,
        program_id="qa",
        example={"question": "2+2?", "answer": "4"},
        input_keys=["question"],
        metric="exact_match",
    )
    again = decode(encode(request), expect=EvalRequest)
    example = again.to_example()
    assert dict(example.inputs().items()) == {"question": "2+2?"}
    assert dict(example.labels().items()) == {"answer": "4"}


def test_report_mean_and_standard_error_match_statistics() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.5]
    report = EvalReport.empty("r", "qa", len(scores))
    for index, score in enumerate(scores):
        report = report.add(index, score, error=index == 1, cost_usd=0.01)
    assert report.complete
    assert report.count == 5
    assert report.errors == 1
    assert report.mean == pytest.approx(statistics.fmean(scores))
    assert report.standard_error == pytest.approx(statistics.stdev(scores) / math.sqrt(5))
    assert report.cost_usd == pytest.approx(0.05)
    assert report.seen == [(0, 4)]


def test_a_duplicate_score_is_counted_once() -> None:
    report = EvalReport.empty("r", "qa", 3).add(1, 1.0, error=False, cost_usd=0.0)
    assert report.add(1, 0.0, error=True, cost_usd=1.0) == report


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200))
def test_seen_ranges_hold_exactly_the_indexes_added(indexes: list[int]) -> None:
    report = EvalReport.empty("r", "qa", 301)
    for index in indexes:
        report = report.add(index, 1.0, error=False, cost_usd=0.0)
    assert report.count == len(set(indexes))
    covered = {i for start, end in report.seen for i in range(start, end + 1)}
    assert covered == set(indexes)
    # Sorted, disjoint and not adjacent: ranges are as few as they can be.
    for (_, end), (start, _) in zip(report.seen, report.seen[1:], strict=False):
        assert start > end + 1


def test_in_order_arrival_keeps_one_range() -> None:
    order = list(range(1000))
    random.Random(3).shuffle(order)  # nearly any order collapses once all are in
    report = EvalReport.empty("r", "qa", 1000)
    for index in order:
        report = report.add(index, 1.0, error=False, cost_usd=0.0)
    assert report.seen == [(0, 999)]
