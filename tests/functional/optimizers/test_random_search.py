"""Random search over demo sets and variables against a rule-based LM.

The task model answers "number -> parity" for number n correctly when
``n % 3 < points``, where one point each comes from: demos in the prompt, a
request temperature of exactly 0.7, and a prompt that asks for ``reasoning``
(ChainOfThought). So the student scores 0 and only a candidate that has
demos, temperature 0.7 and the ChainOfThought kind scores 1. Temperature 1.9
makes the server answer HTTP 500: those candidates fail, and the search goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import ConfigurationError
from dspex.optimizers.base import Trial
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.random_search import BootstrapFewShotWithRandomSearch
from dspex.optimizers.variables import SearchSpace, Variable
from dspex.programs.lm import RetryPolicy


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def parity(number: int) -> str:
    return "even" if number % 2 == 0 else "odd"


class Rules:
    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, request: RecordedRequest) -> Reply:
        self.requests += 1
        body = request.json
        messages = body["messages"]
        system, user = messages[0]["content"], messages[-1]["content"]
        temperature = body.get("temperature")
        if temperature == 1.9:
            return Reply.error(500, "temperature too high for this model")
        reasoning = "[[ ## reasoning ## ]]" in system
        points = sum(
            [any(m["role"] == "assistant" for m in messages), temperature == 0.7, reasoning]
        )
        number = int(user.split("[[ ## number ## ]]")[1].split()[0])
        answer = parity(number) if number % 3 < points else "unknown"
        fields = {"reasoning": "Look at the last digit."} if reasoning else {}
        return Reply.completion(chat(**fields, parity=answer))


class Classifier(dspex.Module):
    def __init__(self) -> None:
        self.classify = dspex.Predict("number -> parity")

    async def aforward(self, number: str) -> dspex.Prediction:
        return await self.classify.acall(number=number)


def dataset(numbers: range) -> list[dspex.Example]:
    return [dspex.Example(number=str(n), parity=parity(n)).with_inputs("number") for n in numbers]


TRAIN, VAL = dataset(range(1, 13)), dataset(range(13, 25))


def space() -> SearchSpace:
    return SearchSpace(
        [
            Variable.temperature("classify", [0.0, 0.7, 1.9]),
            Variable.module_kind("classify", ["predict", "chain_of_thought"]),
        ]
    )


@pytest.fixture
async def rules() -> AsyncIterator[tuple[ScriptedLM, Rules]]:
    responder = Rules()
    async with ScriptedLM(responder=responder) as server:
        yield server, responder


async def compile_once(
    server: ScriptedLM,
    *,
    seed: int = 3,
    searchable: SearchSpace | None = None,
    resume: list[Trial] | None = None,
) -> tuple[dspex.Module, BootstrapFewShotWithRandomSearch, float]:
    async with dspex.OpenAIChat(
        model="rules",
        base_url=server.openai_url,
        cache=None,
        circuit_breaker=None,
        retry=RetryPolicy(max_attempts=1),
    ) as lm:
        optimizer = BootstrapFewShotWithRandomSearch(
            "exact_match",
            num_candidate_programs=8,
            max_bootstrapped_demos=2,
            max_labeled_demos=3,
            space=searchable,
            seed=seed,
            resume=resume or [],
        )
        with dspex.context(lm=lm):
            baseline = await LocalExecutor().evaluate(Classifier(), VAL, "exact_match")
            assert baseline.score == 0.0
            compiled = await optimizer.acompile(Classifier(), trainset=TRAIN, valset=VAL)
            score = (await LocalExecutor().evaluate(compiled, VAL, "exact_match")).score
    return compiled, optimizer, score


async def test_joint_search_finds_demos_temperature_and_kind(
    rules: tuple[ScriptedLM, Rules],
) -> None:
    server, _ = rules
    compiled, optimizer, score = await compile_once(server, searchable=space())
    assert score == 1.0
    assert isinstance(compiled, Classifier)
    assert isinstance(compiled.classify, dspex.ChainOfThought)
    assert compiled.classify.predict.lm_kwargs["temperature"] == 0.7
    assert compiled.classify.predict.demos
    trials = optimizer.trials
    assert [t.number for t in trials] == list(range(11))
    assert [t.params["demo_set"] for t in trials] == list(range(11))
    assert {"demos", "classify.temperature", "classify.module_kind"} <= set(trials[0].params)
    failed = [t for t in trials if t.params["classify.temperature"] == 1.9]
    assert failed
    assert all(t.failed and "500" in (t.error or "") for t in failed)
    assert failed[0].number < trials[-1].number  # later candidates were still evaluated
    best = optimizer.best_trial()
    assert best.score == 1.0
    assert best.params["classify.module_kind"] == "chain_of_thought"
    assert "classify.predict" in best.state  # the state of the swapped module kind


async def test_without_a_space_demo_sets_beat_zero_shot(rules: tuple[ScriptedLM, Rules]) -> None:
    server, _ = rules
    compiled, optimizer, score = await compile_once(server)
    assert optimizer.trials[0].score == 0.0  # set 0 is zero-shot
    assert score == optimizer.best_trial().score
    assert score > 0.0
    assert compiled.classify.demos


async def test_same_seed_same_trials_and_resume_skips_recorded_trials(
    rules: tuple[ScriptedLM, Rules],
) -> None:
    server, responder = rules
    before = responder.requests
    first_program, first, _ = await compile_once(server, searchable=space())
    first_requests = responder.requests - before
    _, second, _ = await compile_once(server, searchable=space())
    assert [t.to_json() for t in first.trials] == [t.to_json() for t in second.trials]
    _, other_seed, _ = await compile_once(server, searchable=space(), seed=4)
    assert [t.params for t in other_seed.trials] != [t.params for t in first.trials]

    before = responder.requests
    resumed_program, resumed, _ = await compile_once(
        server, searchable=space(), resume=first.trials
    )
    assert responder.requests - before == first_requests - sum(t.examples for t in first.trials)
    assert [t.to_json() for t in resumed.trials] == [t.to_json() for t in first.trials]
    assert resumed_program.dump_state() == first_program.dump_state()

    # Half the trials recorded: only the other half is evaluated again.
    before = responder.requests
    _, partial, _ = await compile_once(server, searchable=space(), resume=first.trials[:5])
    again = sum(t.examples for t in first.trials[5:])
    assert (
        responder.requests - before
        == first_requests - sum(t.examples for t in first.trials) + again
    )
    assert [t.to_json() for t in partial.trials] == [t.to_json() for t in first.trials]


def test_reserved_variable_names_are_rejected() -> None:
    clash = SearchSpace([Variable.temperature("classify", [0.0], name="demo_set")])
    with pytest.raises(ConfigurationError, match="reserved"):
        BootstrapFewShotWithRandomSearch("exact_match", space=clash)
