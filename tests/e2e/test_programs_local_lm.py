"""Programs against the real local model (SmolLM2-135M).

The model is tiny and often wrong, so these tests check types and formats,
never that answers are correct.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

import dspex
from dspex.errors import AdapterParseError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def lm(local_lm_url: str) -> AsyncIterator[dspex.OpenAIChat]:
    async with dspex.OpenAIChat(
        model="smollm2-135m-instruct", base_url=local_lm_url, max_tokens=128
    ) as client:
        yield client


class Classify(dspex.Signature):
    """Classify the sentiment of the review."""

    review: str = dspex.InputField()
    sentiment: Literal["positive", "negative", "neutral"] = dspex.OutputField()


class Count(dspex.Signature):
    """Count the words in the sentence."""

    sentence: str = dspex.InputField()
    words: int = dspex.OutputField()
    sure: bool = dspex.OutputField()


async def test_predict_with_json_adapter_returns_typed_fields(lm: dspex.OpenAIChat) -> None:
    predict = dspex.Predict(Count, adapter=dspex.JSONAdapter())
    with dspex.context(lm=lm):
        prediction = await predict.acall(sentence="the cat sat on the mat")
    assert isinstance(prediction.words, int)
    assert isinstance(prediction.sure, bool)
    assert prediction.usage.calls == 1
    assert lm.detected_json_mode == "json_object_schema"


async def test_literal_classifier_returns_only_allowed_labels(lm: dspex.OpenAIChat) -> None:
    predict = dspex.Predict(Classify, adapter=dspex.JSONAdapter())
    reviews = ["I love it!", "It broke at once.", "It is blue.", "Fine, I guess."]
    outcomes: list[object] = []
    with dspex.context(lm=lm):
        for review in reviews:
            try:
                outcomes.append((await predict.acall(review=review)).sentiment)
            except AdapterParseError as exc:  # allowed: a typed error, never a stray label
                outcomes.append(exc)
    for outcome in outcomes:
        if isinstance(outcome, AdapterParseError):
            assert outcome.field in (None, "sentiment")
        else:
            assert outcome in ("positive", "negative", "neutral")


async def test_chain_of_thought_gives_reasoning_and_a_typed_answer(lm: dspex.OpenAIChat) -> None:
    cot = dspex.ChainOfThought("question -> answer: int")
    with dspex.context(lm=lm):
        prediction = await cot.acall(question="What is 7 plus 5?")
    assert isinstance(prediction.reasoning, str)
    assert isinstance(prediction.answer, int)


def test_sync_wrapper_from_a_script(local_lm_url: str) -> None:
    lm = dspex.OpenAIChat(model="smollm2-135m-instruct", base_url=local_lm_url, max_tokens=64)
    predict = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    with dspex.context(lm=lm):
        prediction = predict(question="Name a colour.")
    assert isinstance(prediction.answer, str)


@pytest.mark.parametrize("example", ["sentiment.py", "qa.py"])
def test_examples_run_against_the_local_model(example: str, local_lm_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / example),
            "--lm-url",
            local_lm_url,
            "--limit",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "score" in result.stdout
