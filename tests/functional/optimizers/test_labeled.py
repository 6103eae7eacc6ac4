"""LabeledFewShot over HTTP: the demos reach the prompt and teach the scripted LM.

The scripted LM reverses the word it is asked about only when the prompt
shows at least one demo whose answer is its word reversed; otherwise it
echoes the word, which the metric scores 0.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.labeled import LabeledFewShot


def field(text: str, name: str) -> str:
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(\w*)", text)
    return match.group(1) if match else ""


def learner(request: RecordedRequest) -> Reply:
    messages = request.json["messages"]
    pairs = zip(messages[1:-1:2], messages[2:-1:2], strict=True)
    taught = any(
        field(a["content"], "answer") == field(u["content"], "word")[::-1] for u, a in pairs
    )
    word = field(messages[-1]["content"], "word")
    answer = word[::-1] if taught else word
    reasoning = ""
    if "[[ ## reasoning ## ]]" in messages[0]["content"]:
        reasoning = "[[ ## reasoning ## ]]\nI know this one.\n\n"
    return Reply.completion(f"{reasoning}[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]")


def example(word: str) -> dspex.Example:
    return dspex.Example(word=word, answer=word[::-1]).with_inputs("word")


TRAIN = [example(w) for w in ["stone", "river", "cloud", "apple", "lemon", "tiger"]]
DEVSET = [example(w) for w in ["mango", "bread", "chair"]]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLM]:
    async with ScriptedLM(responder=learner) as scripted:
        yield scripted


async def test_labelled_demos_reach_the_prompt_and_raise_the_score(server: ScriptedLM) -> None:
    student = dspex.Predict("word -> answer")
    compiled = LabeledFewShot(k=2, seed=3).compile(student, trainset=TRAIN)
    async with dspex.OpenAIChat(model="m", base_url=server.openai_url, cache=None) as lm:
        with dspex.context(lm=lm):
            before = await LocalExecutor().evaluate(student, DEVSET, "exact_match")
            server.requests.clear()
            after = await LocalExecutor().evaluate(compiled, DEVSET, "exact_match")
    assert before.score == 0.0
    assert after.score == 1.0
    for request in server.requests:
        messages = request.json["messages"]
        shown = [field(m["content"], "word") for m in messages[1:-1:2]]
        answers = [field(m["content"], "answer") for m in messages[2:-1:2]]
        assert shown == [demo.word for demo in compiled.demos]
        assert answers == [demo.answer for demo in compiled.demos]


async def test_chain_of_thought_gets_labelled_demos_without_reasoning(server: ScriptedLM) -> None:
    compiled = LabeledFewShot(k=3).compile(dspex.ChainOfThought("word -> answer"), trainset=TRAIN)
    assert len(compiled.predict.demos) == 3
    async with dspex.OpenAIChat(model="m", base_url=server.openai_url, cache=None) as lm:
        with dspex.context(lm=lm):
            await compiled.acall(word="mango")
    assistant_turns = [m for m in server.requests[0].json["messages"] if m["role"] == "assistant"]
    assert len(assistant_turns) == 3
    # Labelled demos have no reasoning: the turn shows only the fields they have.
    assert all("[[ ## reasoning ## ]]" not in m["content"] for m in assistant_turns)
