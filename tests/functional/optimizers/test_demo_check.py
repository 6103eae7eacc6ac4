"""Demos never silently hurt: with a valset, a demo optimizer keeps the better program.

The scripted LM answers each word reversed when it sees no demos, and parrots
the first demo's answer when it sees some: demos make it worse, as they can a
small model. Without a valset nothing is checked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.optimizers.bootstrap import BootstrapFewShot
from dspex.optimizers.labeled import LabeledFewShot
from dspex.programs.lm import RetryPolicy
from tests.functional.optimizers.test_bootstrap import chat, example, section

TRAIN = [example(w) for w in ["stone", "river", "cloud", "apple", "lemon", "tiger"]]
VALSET = [example(w) for w in ["mango", "bread", "chair", "ocean"]]


def parrot(request: RecordedRequest) -> Reply:
    messages = request.json["messages"]
    word = section(messages[-1]["content"], "word") or ""
    if len(messages) > 2:  # demos as user/assistant turns before the question
        return Reply.completion(chat(answer=section(messages[2]["content"], "answer") or ""))
    return Reply.completion(chat(answer=word[::-1]))


@pytest.fixture
async def lm() -> AsyncIterator[dspex.OpenAIChat]:
    async with (
        ScriptedLM(responder=parrot) as server,
        dspex.OpenAIChat(
            model="small", base_url=server.openai_url, retry=RetryPolicy(max_attempts=1)
        ) as client,
    ):
        yield client


@pytest.mark.parametrize(
    "optimizer",
    [
        pytest.param(lambda **kw: LabeledFewShot(k=3, **kw), id="labeled"),
        pytest.param(
            lambda **kw: BootstrapFewShot("exact_match", max_labeled_demos=3, **kw),
            id="bootstrap",
        ),
    ],
)
async def test_demos_that_lower_the_valset_score_are_reported_and_dropped(
    lm: dspex.OpenAIChat, optimizer: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dspex.optimizers")
    student = dspex.Predict("word -> answer")
    with dspex.context(lm=lm):
        dropping = optimizer()  # type: ignore[operator]
        returned = await dropping.acompile(student, trainset=TRAIN, valset=VALSET)
        keeping = optimizer(keep_worse=True)  # type: ignore[operator]
        kept = await keeping.acompile(student, trainset=TRAIN, valset=VALSET)
        unchecked = await optimizer().acompile(student, trainset=TRAIN)  # type: ignore[operator]
    assert returned.demos == []  # the student, without the demos that hurt
    assert dropping.check is not None
    assert dropping.check.hurt
    assert (dropping.check.student_score, dropping.check.compiled_score) == (1.0, 0.0)
    assert dropping.check.returned == "student"
    assert kept.demos != []
    assert keeping.check is not None
    assert keeping.check.returned == "compiled"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "from 1.000 to 0.000 (4 examples)" in warnings[0]
    assert unchecked.demos != []  # no valset: nothing checked, nothing dropped


async def test_demos_that_help_are_kept_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dspex.optimizers")

    def copier(request: RecordedRequest) -> Reply:
        # Answers right only when shown demos (it copies their style: reversal).
        messages = request.json["messages"]
        word = section(messages[-1]["content"], "word") or ""
        return Reply.completion(chat(answer=word[::-1] if len(messages) > 2 else word))

    async with (
        ScriptedLM(responder=copier) as server,
        dspex.OpenAIChat(model="m", base_url=server.openai_url) as client,
    ):
        optimizer = LabeledFewShot(k=2)
        with dspex.context(lm=client):
            compiled = await optimizer.acompile(
                dspex.Predict("word -> answer"), trainset=TRAIN, valset=VALSET
            )
    assert len(compiled.demos) == 2
    assert optimizer.check is not None
    assert (optimizer.check.student_score, optimizer.check.compiled_score) == (0.0, 1.0)
    assert not optimizer.check.hurt
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
