"""BootstrapFewShot against the real local model (SmolLM2-135M).

The model is tiny and often wrong, so this checks structure only: compiling
bootstraps demos from the model's own runs onto the predictor, and the
compiled program runs. Correctness is never asserted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from dspex.optimizers.bootstrap import BootstrapFewShot
from dspex.optimizers.executor import LocalExecutor

pytestmark = pytest.mark.lm

QUESTIONS = {
    "What is 1 plus 1?": "2",
    "What is 2 plus 2?": "4",
    "What is the capital of France?": "Paris",
    "What colour is the sky on a clear day?": "blue",
    "How many legs does a dog have?": "4",
    "What is the opposite of hot?": "cold",
    "What is 3 plus 3?": "6",
    "What animal says moo?": "cow",
}


@pytest.fixture
async def lm(local_lm_url: str) -> AsyncIterator[dspex.OpenAIChat]:
    async with dspex.OpenAIChat(
        model="smollm2-135m-instruct", base_url=local_lm_url, max_tokens=48
    ) as client:
        yield client


def answered(example: dspex.Example, prediction: dspex.Prediction, trace: Any = None) -> bool:
    """Any non-empty answer passes: the point is the plumbing, not the model."""
    return bool(str(prediction.answer).strip())


async def test_bootstrap_compiles_and_the_compiled_program_runs(lm: dspex.OpenAIChat) -> None:
    trainset = [
        dspex.Example(question=q, answer=a).with_inputs("question") for q, a in QUESTIONS.items()
    ]
    student = dspex.Predict("question -> answer")
    optimizer = BootstrapFewShot(
        answered,
        executor=LocalExecutor(max_concurrency=4),
        max_bootstrapped_demos=2,
        max_labeled_demos=2,
        batch_size=4,
        seed=1,
    )
    with dspex.context(lm=lm):
        compiled = await optimizer.acompile(student, trainset=trainset)
        prediction = await compiled.acall(question="What is 4 plus 4?")
    demos = dict(compiled.named_predictors())["self"].demos
    assert len(demos) == 2
    for demo in demos:
        assert set(demo) == {"question", "answer"}
        assert demo.question in QUESTIONS
        assert isinstance(demo.answer, str)
        assert demo.answer.strip()
        assert demo.input_keys == frozenset({"question"})
    assert student.demos == []
    assert isinstance(prediction.answer, str)
    assert prediction.usage.calls + prediction.usage.cached_calls >= 1
