"""SIMBA against a rule-based LM whose answers vary with the sampling temperature.

The task model answers "number -> parity" correctly when the prompt shows a
demo or its instructions name PARITY; otherwise only when sampling hot
(temperature >= 0.6), and wrongly at the program's own temperature 0. So
the student scores 0, its rollouts disagree (SIMBA's signal), and the
compiled program scores 1 only if SIMBA turned a good rollout into a demo or
got a PARITY rule from the advice model (the same server, answering the
advice signature) and kept the resulting candidate.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import ConfigurationError
from dspex.optimizers.base import Trial
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.simba import SIMBA
from dspex.programs.lm import RetryPolicy


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def parity(number: int) -> str:
    return "even" if number % 2 == 0 else "odd"


class Rules:
    def __init__(self) -> None:
        self.task_requests = 0
        self.advice_prompts: list[str] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        body = request.json
        messages = body["messages"]
        system, user = messages[0]["content"], messages[-1]["content"]
        if "better_trajectory" in system:
            self.advice_prompts.append(user)
            return Reply.completion(
                chat(advice=json.dumps({"self": "Answer with the PARITY: odd or even."}))
            )
        self.task_requests += 1
        number = int(user.split("[[ ## number ## ]]")[1].split()[0])
        has_demo = any(m["role"] == "assistant" for m in messages)
        hot = float(body.get("temperature") or 0.0) >= 0.6
        right = has_demo or "PARITY" in system or hot
        return Reply.completion(chat(parity=parity(number) if right else "unknown"))


def dataset() -> list[dspex.Example]:
    return [
        dspex.Example(number=str(n), parity=parity(n)).with_inputs("number") for n in range(1, 9)
    ]


@pytest.fixture
async def rules() -> AsyncIterator[tuple[ScriptedLM, Rules]]:
    responder = Rules()
    async with ScriptedLM(responder=responder) as server:
        yield server, responder


async def compile_once(
    server: ScriptedLM, *, seed: int = 0, resume: list[Trial] | None = None
) -> tuple[dspex.Module, SIMBA]:
    async with dspex.OpenAIChat(
        model="rules",
        base_url=server.openai_url,
        cache=None,
        circuit_breaker=None,
        retry=RetryPolicy(max_attempts=1),
    ) as lm:
        optimizer = SIMBA(
            "exact_match",
            bsize=4,
            num_candidates=3,
            max_steps=2,
            max_demos=2,
            seed=seed,
            resume=resume or [],
        )
        with dspex.context(lm=lm):
            student = dspex.Predict("number -> parity")
            assert (await LocalExecutor().evaluate(student, dataset(), "exact_match")).score == 0
            compiled = await optimizer.acompile(student, trainset=dataset())
            summary = await LocalExecutor().evaluate(compiled, dataset(), "exact_match")
        assert summary.score == 1.0
    return compiled, optimizer


async def test_simba_learns_a_demo_or_rule_from_variable_rollouts(
    rules: tuple[ScriptedLM, Rules],
) -> None:
    server, responder = rules
    compiled, optimizer = await compile_once(server)
    assert isinstance(compiled, dspex.Predict)
    learned_rule = "PARITY" in compiled.signature.instructions
    assert learned_rule or compiled.demos
    # A demo comes from a successful rollout: its answer is right.
    assert all(demo.parity == parity(int(demo.number)) for demo in compiled.demos)
    minibatch = [t for t in optimizer.trials if not t.full_eval]
    final = [t for t in optimizer.trials if t.full_eval]
    assert {t.params["strategy"] for t in minibatch} == {"demo", "rule"}
    assert all(t.examples == 4 for t in minibatch)
    assert final[0].params["program"] == 0  # the baseline is always a final candidate
    assert final[0].score == 0.0
    assert max(t.score or 0.0 for t in final) == 1.0
    # The advice model saw both runs: the better one right, the worse one "unknown".
    assert responder.advice_prompts
    assert "unknown" in responder.advice_prompts[0]


async def test_same_seed_same_trials_and_resume_skips_recorded_trials(
    rules: tuple[ScriptedLM, Rules],
) -> None:
    server, responder = rules
    before = responder.task_requests
    first_program, first = await compile_once(server)
    first_requests = responder.task_requests - before
    _, second = await compile_once(server)
    assert [t.to_json() for t in first.trials] == [t.to_json() for t in second.trials]

    before = responder.task_requests
    resumed_program, resumed = await compile_once(server, resume=first.trials)
    evaluated = sum(t.examples for t in first.trials)
    assert responder.task_requests - before == first_requests - evaluated
    assert [t.to_json() for t in resumed.trials] == [t.to_json() for t in first.trials]
    assert resumed_program.dump_state() == first_program.dump_state()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="bsize"):
        SIMBA("exact_match", bsize=0)
    with pytest.raises(ConfigurationError, match="temperatures"):
        SIMBA("exact_match", temperature_for_sampling=0)
