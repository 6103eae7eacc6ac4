"""Ensemble against a scripted LM that answers what each member's instructions say."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import ConfigurationError, LMServerError
from dspex.optimizers.ensemble import Ensemble, EnsembleProgram
from dspex.programs.lm import RetryPolicy


def voter(request: RecordedRequest) -> Reply:
    """Answers the colour named by ``Say COLOUR.`` in the system prompt, after 0.1 s."""
    system = request.json["messages"][0]["content"]
    colour = re.search(r"Say (\w+)\.", system)
    if colour is None or colour.group(1) == "fail":
        return Reply.error(500, "member failed")
    return Reply.completion(
        f"[[ ## answer ## ]]\n{colour.group(1)}\n\n[[ ## completed ## ]]", delay_s=0.1
    )


def member(colour: str) -> dspex.Predict:
    return dspex.Predict(
        dspex.Predict("question -> answer").signature.with_instructions(f"Say {colour}.")
    )


def colours_asked(server: ScriptedLM) -> list[str]:
    found = (re.search(r"Say (\w+)\.", r.json["messages"][0]["content"]) for r in server.requests)
    return sorted(m.group(1) for m in found if m)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLM]:
    async with ScriptedLM(responder=voter) as scripted:
        yield scripted


@pytest.fixture
async def lm(server: ScriptedLM) -> AsyncIterator[dspex.OpenAIChat]:
    async with dspex.OpenAIChat(
        model="m", base_url=server.openai_url, cache=None, retry=RetryPolicy(max_attempts=1)
    ) as client:
        yield client


async def test_majority_of_members_run_concurrently(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    members = [member("red"), member("blue"), member("red")]
    ensemble = Ensemble().compile(members)
    with dspex.context(lm=lm):
        prediction = await ensemble.acall(question="which colour?")
    assert prediction.answer == "red"
    assert [c["answer"] for c in prediction.completions] == ["red", "blue", "red"]
    assert server.max_concurrent == 3  # all three were in flight together
    assert prediction.usage.calls == 3
    assert {step.predictor for step in prediction.trace} == {
        "programs[0]",
        "programs[1]",
        "programs[2]",
    }
    assert ensemble.programs[0] is not members[0]  # members are copies


async def test_without_reduce_fn_every_answer_is_a_completion(lm: dspex.OpenAIChat) -> None:
    ensemble = Ensemble(reduce_fn=None).compile([member("green"), member("red"), member("red")])
    with dspex.context(lm=lm):
        prediction = await ensemble.acall(question="q")
    assert prediction.answer == "green"  # the first member's
    assert [c["answer"] for c in prediction.completions] == ["green", "red", "red"]
    assert dspex.majority(prediction).answer == "red"


async def test_a_custom_reducer(lm: dspex.OpenAIChat) -> None:
    def longest(predictions: Sequence[dspex.Prediction]) -> dspex.Prediction:
        return max(predictions, key=lambda p: len(p.answer))

    ensemble = Ensemble(reduce_fn=longest).compile([member("red"), member("purple")])
    with dspex.context(lm=lm):
        assert (await ensemble.acall(question="q")).answer == "purple"


async def test_size_samples_members_deterministically_per_input(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    colours = ["red", "blue", "green", "black", "white"]
    ensemble = Ensemble(size=2, seed=1).compile([member(c) for c in colours])
    chosen: list[list[str]] = []
    with dspex.context(lm=lm):
        for question in ["q1", "q1", "q2", "q3", "q4"]:
            server.requests.clear()
            await ensemble.acall(question=question)
            chosen.append(colours_asked(server))
    assert all(len(c) == 2 for c in chosen)
    assert chosen[0] == chosen[1]  # same inputs, same members
    assert len({tuple(c) for c in chosen}) > 1  # other inputs meet other members


async def test_a_failing_member_fails_the_call_with_its_own_error(lm: dspex.OpenAIChat) -> None:
    ensemble = Ensemble().compile([member("red"), member("fail"), member("red")])
    with dspex.context(lm=lm), pytest.raises(LMServerError, match="member failed"):
        await ensemble.acall(question="q")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        Ensemble().compile([])
    with pytest.raises(ConfigurationError, match="size"):
        Ensemble(size=0)
    with pytest.raises(ConfigurationError, match="more than"):
        Ensemble(size=3).compile([member("a"), member("b")])
    program = Ensemble().compile([member("a")])
    assert isinstance(program, EnsembleProgram)
    assert [name for name, _ in program.named_predictors()] == ["programs[0]"]
