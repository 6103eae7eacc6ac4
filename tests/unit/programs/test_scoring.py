"""The one scorer (and standard error) every evaluation path shares, without an LM."""

from __future__ import annotations

import doctest
import math
import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dspex.errors import ConfigurationError, LMError
from dspex.programs import _scoring
from dspex.programs._scoring import (
    METRIC_ERROR,
    check_inputs_marked,
    score_one,
    standard_error,
    standard_error_from_moments,
)
from dspex.programs.evaluate import Evaluate
from dspex.programs.example import Example, Prediction
from dspex.programs.metrics import exact_match
from dspex.programs.module import Module


class Shout(Module):
    """Upper-cases the question; ``boom`` fails like an LM error would."""

    async def aforward(self, question: str) -> Prediction:
        if question == "boom":
            raise LMError("the server said no", provider="test")
        return Prediction(answer=question.upper())


def ex(question: str, answer: str | None = None) -> Example:
    return Example(question=question, answer=answer or question.upper()).with_inputs("question")


async def test_a_scored_example_keeps_outputs_trace_usage_and_prediction() -> None:
    output = await score_one(Shout(), ex("hi"), exact_match, index=3)
    assert output.ok
    assert (output.index, output.score, output.outputs) == (3, 1.0, {"answer": "HI"})
    assert output.prediction is not None
    assert output.prediction.answer == "HI"


async def test_a_program_error_becomes_an_output_with_the_failure_score() -> None:
    output = await score_one(Shout(), ex("boom"), exact_match, failure_score=-1.0)
    assert output.score == -1.0
    assert output.outputs is None
    assert output.error is not None
    assert output.error.type == "lm_error"
    assert "the server said no" in output.error.message
    assert isinstance(output.exception, LMError)


async def test_a_bug_in_the_program_is_not_swallowed() -> None:
    class Broken(Module):
        async def aforward(self, question: str) -> Prediction:
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await score_one(Broken(), ex("hi"), exact_match)


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (lambda example, prediction, trace=None: {}["gold"], "KeyError"),
        (lambda example, prediction, trace=None: "1.0", "returned str, not a number"),
    ],
)
async def test_a_metric_failure_is_recorded_or_raised_as_the_caller_asks(
    metric: Any, message: str
) -> None:
    output = await score_one(Shout(), ex("hi"), metric, failure_score=0.5)
    assert output.error is not None
    assert output.error.type == METRIC_ERROR
    assert message in output.error.message
    assert output.score == 0.5
    assert output.outputs == {"answer": "HI"}  # the program ran
    with pytest.raises((KeyError, ConfigurationError)):
        await score_one(Shout(), ex("hi"), metric, raise_metric_errors=True)


async def test_an_async_metric_and_a_bool_score() -> None:
    async def longer_than_one(example: Example, prediction: Prediction, trace: Any = None) -> bool:
        return len(prediction.answer) > 1

    assert (await score_one(Shout(), ex("hi"), longer_than_one)).score == 1.0
    assert (await score_one(Shout(), ex("h"), longer_than_one)).score == 0.0


def test_inputs_must_be_marked_and_items_must_be_examples() -> None:
    check_inputs_marked(ex("hi"), 0)
    with pytest.raises(ConfigurationError, match="example 2 has no inputs marked"):
        check_inputs_marked(Example(question="q"), 2)
    with pytest.raises(ConfigurationError, match="devset example 1 is a dict, not an Example"):
        check_inputs_marked({"question": "q"}, 1, what="devset example")


async def test_evaluate_uses_the_scorer_and_stops_on_a_broken_metric() -> None:
    evaluate = Evaluate(
        devset=[ex("a"), ex("boom"), ex("b", "x")], metric=exact_match, display_progress=False
    )
    result = await evaluate.acall(Shout())
    assert [r.score for r in result.results] == [1.0, 0.0, 0.0]
    assert result.errors == 1
    assert isinstance(result.results[1].error, LMError)
    assert result.results[0].prediction is not None
    # Evaluate is the strict one: a metric that returns no number stops it.
    strict = Evaluate(
        devset=[ex("a")], metric=lambda e, p, trace=None: "yes", display_progress=False
    )
    with pytest.raises(ConfigurationError, match="not a number"):
        await strict.acall(Shout())


def test_evaluate_checks_the_devset_with_the_same_rule() -> None:
    with pytest.raises(ConfigurationError, match="devset example 1 has no inputs marked"):
        Evaluate(devset=[ex("a"), Example(question="q")], metric=exact_match)


def test_standard_error_of_few_scores_is_zero() -> None:
    assert standard_error([]) == standard_error([1.0]) == 0.0
    assert standard_error_from_moments(0, 0.0) == standard_error_from_moments(1, 0.0) == 0.0
    assert standard_error_from_moments(3, -1e-18) == 0.0  # rounding below zero


@given(st.lists(st.floats(min_value=-10, max_value=10), min_size=2, max_size=50))
def test_both_forms_of_the_standard_error_agree(scores: list[float]) -> None:
    expected = statistics.stdev(scores) / math.sqrt(len(scores))
    assert standard_error(scores) == pytest.approx(expected)
    mean = statistics.fmean(scores)
    squared_deviations = sum((score - mean) ** 2 for score in scores)
    assert standard_error_from_moments(len(scores), squared_deviations) == pytest.approx(
        expected, abs=1e-9
    )


def test_doctests() -> None:
    assert doctest.testmod(_scoring).failed == 0
