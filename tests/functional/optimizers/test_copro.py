"""COPRO against a rule-based LM: only some proposed instructions make it answer right.

The scripted server plays both roles. As the prompt model it answers a
proposal request with ``n`` different instructions, only one of which names
the keyword PARITY; as the task model it answers "number -> parity" correctly
only when the system prompt contains PARITY, and fails with HTTP 500 when the
instruction contains CRASH. So the starting program scores 0, and a compiled
program scores 1 only if COPRO evaluated the proposals and kept the right one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import ConfigurationError
from dspex.optimizers.base import Trial
from dspex.optimizers.copro import COPRO
from dspex.optimizers.executor import LocalExecutor
from dspex.programs.lm import RetryPolicy

FIRST_PROPOSALS = ["Answer tersely.", "Think about CRASH cases.", "Give the PARITY: odd or even."]
LATER_PROPOSALS = ["State the PARITY of the number, odd or even.", "Be careful."]


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def choices(texts: list[str]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-rules",
        "object": "chat.completion",
        "model": "rules",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": chat(proposed_instruction=t)},
                "finish_reason": "stop",
            }
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


class Rules:
    """The rule-based LM; counts task requests (not proposal requests)."""

    def __init__(self) -> None:
        self.task_requests = 0
        self.attempt_prompts: list[str] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        body = request.json
        system = body["messages"][0]["content"]
        user = body["messages"][-1]["content"]
        if "proposed_instruction" in system:
            n = int(body.get("n", 1))
            pool = FIRST_PROPOSALS if "basic_instruction" in system else LATER_PROPOSALS
            if "attempted_instructions" in system:
                self.attempt_prompts.append(user)
            return Reply(body=choices([pool[i % len(pool)] for i in range(n)]))
        self.task_requests += 1
        if "CRASH" in system:
            return Reply.error(500, "the model crashed")
        number = int(user.split("[[ ## number ## ]]")[1].split()[0])
        parity = ("even" if number % 2 == 0 else "odd") if "PARITY" in system else "unknown"
        return Reply.completion(chat(parity=parity))


def dataset() -> list[dspex.Example]:
    return [
        dspex.Example(number=str(n), parity="even" if n % 2 == 0 else "odd").with_inputs("number")
        for n in range(1, 9)
    ]


async def score(program: dspex.Module) -> float:
    summary = await LocalExecutor().evaluate(program, dataset(), "exact_match")
    return summary.score


@pytest.fixture
async def rules() -> AsyncIterator[tuple[ScriptedLM, Rules]]:
    responder = Rules()
    async with ScriptedLM(responder=responder) as server:
        yield server, responder


async def compile_once(
    server: ScriptedLM, *, seed: int = 0, resume: list[Trial] | None = None
) -> tuple[dspex.Module, COPRO]:
    async with dspex.OpenAIChat(
        model="rules",
        base_url=server.openai_url,
        cache=None,
        circuit_breaker=None,
        retry=RetryPolicy(max_attempts=1),
    ) as lm:
        optimizer = COPRO("exact_match", breadth=3, depth=2, seed=seed, resume=resume or [])
        with dspex.context(lm=lm):
            assert await score(dspex.Predict("number -> parity")) == 0.0
            compiled = await optimizer.acompile(
                dspex.Predict("number -> parity"), trainset=dataset()
            )
            assert await score(compiled) == 1.0
    return compiled, optimizer


async def test_copro_keeps_the_proposal_that_works(rules: tuple[ScriptedLM, Rules]) -> None:
    server, responder = rules
    compiled, optimizer = await compile_once(server)
    assert isinstance(compiled, dspex.Predict)
    assert "PARITY" in compiled.signature.instructions
    trials = optimizer.trials
    # Depth 0: the original and two proposals (duplicates are not re-proposed).
    assert [t.params["depth"] for t in trials[:3]] == [0, 0, 0]
    assert trials[0].params["instructions"] == {
        "self": dspex.Predict("number -> parity").signature.instructions
    }
    assert trials[0].score == 0.0
    crashed = [t for t in trials if "CRASH" in t.params["instructions"]["self"]]
    assert len(crashed) == 1
    assert crashed[0].failed
    assert "lm_" in (crashed[0].error or "") or "500" in (crashed[0].error or "")
    assert any(t.params["depth"] == 1 for t in trials)  # the search went on after the failure
    # Depth 1 proposals were asked with the scored attempts, worst first.
    assert responder.attempt_prompts
    assert "Score" in responder.attempt_prompts[0]
    assert optimizer.best_trial().score == 1.0


async def test_same_seed_same_trials_and_resume_skips_evaluation(
    rules: tuple[ScriptedLM, Rules],
) -> None:
    server, responder = rules
    _, first = await compile_once(server)
    _, second = await compile_once(server)
    assert [t.to_json() for t in first.trials] == [t.to_json() for t in second.trials]

    before = responder.task_requests
    resumed_program, resumed = await compile_once(server, resume=first.trials)
    evaluations = sum(t.examples for t in first.trials)
    baseline_and_check = 2 * len(dataset())  # the two Evaluate calls of compile_once
    assert responder.task_requests - before == baseline_and_check
    assert evaluations > 0
    assert [t.to_json() for t in resumed.trials] == [t.to_json() for t in first.trials]
    assert resumed_program.dump_state() == (await compile_once(server))[0].dump_state()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="breadth"):
        COPRO("exact_match", breadth=1)
    with pytest.raises(ConfigurationError, match="depth"):
        COPRO("exact_match", depth=0)
