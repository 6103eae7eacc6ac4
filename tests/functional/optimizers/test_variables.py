"""Search-space choices reach the wire: each knob changes what the LM server receives.

One scripted server answers for two model names. It answers "number -> parity"
correctly only when every knob is right: model "big", temperature 0.7 in the
request body, a prompt asking for ``reasoning`` (ChainOfThought), and the
instruction naming PARITY. Scoring every choice of the grid shows that
exactly one choice works, so each variable really changes the program; a
random search over the same space finds it and records the model by name.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.random_search import BootstrapFewShotWithRandomSearch
from dspex.optimizers.variables import SearchSpace, Variable
from dspex.programs.lm import RetryPolicy

SECRET = "sk-test-do-not-leak"


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def parity(number: int) -> str:
    return "even" if number % 2 == 0 else "odd"


def rules(request: RecordedRequest) -> Reply:
    body = request.json
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    reasoning = "[[ ## reasoning ## ]]" in system
    right = all(
        [body["model"] == "big", body.get("temperature") == 0.7, reasoning, "PARITY" in system]
    )
    number = int(user.split("[[ ## number ## ]]")[1].split()[0])
    fields = {"reasoning": "Check the last digit."} if reasoning else {}
    return Reply.completion(chat(**fields, parity=parity(number) if right else "unknown"))


class Classifier(dspex.Module):
    def __init__(self) -> None:
        self.classify = dspex.Predict("number -> parity")

    async def aforward(self, number: str) -> dspex.Prediction:
        return await self.classify.acall(number=number)


EXAMPLES = [
    dspex.Example(number=str(n), parity=parity(n)).with_inputs("number") for n in range(1, 7)
]


@pytest.fixture
async def models() -> AsyncIterator[dict[str, dspex.OpenAIChat]]:
    async with ScriptedLM(responder=rules) as server:
        clients = {
            name: dspex.OpenAIChat(
                model=name,
                base_url=server.openai_url,
                api_key=SECRET,
                cache=None,
                retry=RetryPolicy(max_attempts=1),
            )
            for name in ("small", "big")
        }
        try:
            yield clients
        finally:
            for client in clients.values():
                await client.aclose()


def space(models: dict[str, dspex.OpenAIChat]) -> SearchSpace:
    return SearchSpace(
        [
            Variable.model("*", models),
            Variable.temperature("classify", [0.0, 0.7]),
            Variable.module_kind("classify"),
            Variable.instructions("classify", ["Answer.", "Give the PARITY of the number."]),
        ]
    )


async def test_exactly_one_choice_of_the_grid_works(models: dict[str, dspex.OpenAIChat]) -> None:
    searchable = space(models)
    scores = {}
    for choice in searchable.grid():
        program = searchable.apply(Classifier(), choice)
        summary = await LocalExecutor().evaluate(program, EXAMPLES, "exact_match")
        scores[json.dumps(choice, sort_keys=True)] = summary.score
    assert len(scores) == searchable.size == 16
    winners = [json.loads(key) for key, score in scores.items() if score == 1.0]
    assert winners == [
        {
            "model": "big",
            "classify.temperature": 0.7,
            "classify.module_kind": "chain_of_thought",
            "classify.instructions": 1,
        }
    ]
    assert sorted(set(scores.values())) == [0.0, 1.0]


async def test_random_search_records_the_model_by_name_never_the_client(
    models: dict[str, dspex.OpenAIChat],
) -> None:
    searchable = space(models)
    optimizer = BootstrapFewShotWithRandomSearch(
        "exact_match",
        num_candidate_programs=13,
        max_bootstrapped_demos=0,
        max_labeled_demos=0,
        space=searchable,
        seed=0,
    )
    with dspex.context(lm=models["small"]):
        compiled = await optimizer.acompile(Classifier(), trainset=EXAMPLES)
    assert {t.params["model"] for t in optimizer.trials} == {"small", "big"}
    best = optimizer.best_trial()
    assert best.score == 1.0
    assert best.params["model"] == "big"
    assert isinstance(compiled.classify, dspex.ChainOfThought)
    assert compiled.classify.predict.lm is models["big"]
    recorded = json.dumps([t.to_json() for t in optimizer.trials])
    assert SECRET not in recorded
    assert "OpenAIChat" not in recorded
    summary = await LocalExecutor().evaluate(compiled, EXAMPLES, "exact_match")
    assert summary.score == 1.0
