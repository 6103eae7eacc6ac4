"""MIPROv2 against a rule-based LM that also plays the prompt model.

As the prompt model, the server summarizes the dataset as "numbers labelled
by their PARITY", and proposes an instruction naming PARITY only when that
summary reached the proposal prompt (data-aware proposals); otherwise a
useless one. As the task model it answers "number -> parity" for number n
correctly when ``n % 3 < points``, one point each for: PARITY in the system
prompt, demos in the prompt, request temperature exactly 0.7. Temperature
1.9 gets HTTP 500. The student scores 0; a perfect program needs a proposed
instruction, a demo set with demos and temperature 0.7, found by the search.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import ConfigurationError
from dspex.optimizers.base import Trial
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.mipro import MIPROv2
from dspex.optimizers.variables import SearchSpace, Variable
from dspex.programs.lm import RetryPolicy

SUMMARY = "Whole numbers, each labelled by its PARITY: odd or even."
#: An instruction the user offers through the search space; it lacks the keyword.
HANDWRITTEN = "Classify the number."


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def parity(number: int) -> str:
    return "even" if number % 2 == 0 else "odd"


class Rules:
    def __init__(self) -> None:
        self.task_requests = 0
        self.proposal_prompts: list[str] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        body = request.json
        messages = body["messages"]
        system, user = messages[0]["content"], messages[-1]["content"]
        if "[[ ## summary ## ]]" in system:
            return Reply.completion(chat(summary=SUMMARY))
        if "proposed_instruction" in system:
            self.proposal_prompts.append(user)
            tag = hashlib.sha256(user.encode()).hexdigest()[:6]
            if SUMMARY in user:
                return Reply.completion(chat(proposed_instruction=f"Tell the PARITY ({tag})."))
            return Reply.completion(chat(proposed_instruction=f"Answer ({tag})."))
        self.task_requests += 1
        temperature = body.get("temperature")
        if temperature == 1.9:
            return Reply.error(500, "temperature too high for this model")
        points = sum(
            [
                "PARITY" in system,
                any(m["role"] == "assistant" for m in messages),
                temperature == 0.7,
            ]
        )
        number = int(user.split("[[ ## number ## ]]")[1].split()[0])
        return Reply.completion(chat(parity=parity(number) if number % 3 < points else "unknown"))


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
            Variable.instructions("classify", [HANDWRITTEN]),
        ]
    )


@pytest.fixture
async def rules() -> AsyncIterator[tuple[ScriptedLM, Rules]]:
    responder = Rules()
    async with ScriptedLM(responder=responder) as server:
        yield server, responder


async def compile_once(
    server: ScriptedLM, *, seed: int = 0, resume: list[Trial] | None = None
) -> tuple[dspex.Module, MIPROv2, float]:
    async with dspex.OpenAIChat(
        model="rules",
        base_url=server.openai_url,
        cache=None,
        circuit_breaker=None,
        retry=RetryPolicy(max_attempts=1),
    ) as lm:
        optimizer = MIPROv2(
            "exact_match",
            num_candidates=3,
            num_trials=15,
            minibatch_size=6,
            minibatch_full_eval_steps=5,
            max_bootstrapped_demos=2,
            max_labeled_demos=2,
            space=space(),
            seed=seed,
            resume=resume or [],
        )
        with dspex.context(lm=lm):
            baseline = await LocalExecutor().evaluate(Classifier(), VAL, "exact_match")
            assert baseline.score == 0.0
            compiled = await optimizer.acompile(Classifier(), trainset=TRAIN, valset=VAL)
            score = (await LocalExecutor().evaluate(compiled, VAL, "exact_match")).score
    return compiled, optimizer, score


async def test_mipro_finds_instruction_demos_and_temperature(
    rules: tuple[ScriptedLM, Rules],
) -> None:
    server, responder = rules
    compiled, optimizer, score = await compile_once(server)
    assert score == 1.0
    assert isinstance(compiled, Classifier)
    assert "PARITY" in compiled.classify.signature.instructions
    assert compiled.classify.demos
    assert compiled.classify.lm_kwargs["temperature"] == 0.7
    # Candidates: the student's instruction first, then data-aware proposals.
    instructions = optimizer.instruction_candidates["classify"]
    assert len(instructions) == 4
    assert "PARITY" not in instructions[0]
    assert instructions[1] == HANDWRITTEN  # the space's instruction joins the candidates
    assert all("PARITY" in text for text in instructions[2:])
    assert all("classify.instructions" not in t.params for t in optimizer.trials)
    assert len(optimizer.demo_candidates) == 3
    # Proposal prompts carry the summary, the program's fields, demos and a tip.
    prompt = responder.proposal_prompts[0]
    assert SUMMARY in prompt
    assert "`number`" in prompt
    assert "[[ ## tip ## ]]" in prompt
    trials = optimizer.trials
    assert trials[0].params == {"baseline": True}
    assert trials[0].score == 0.0
    assert trials[0].full_eval
    minibatch = [t for t in trials if not t.full_eval]
    full = [t for t in trials[1:] if t.full_eval]
    assert len(minibatch) == 15
    assert all(t.examples == 6 for t in minibatch)
    assert len(full) == 3  # after minibatch trials 5, 10 and 15
    assert all(t.examples == 12 for t in full)
    assert [t.number for t in trials] == list(range(len(trials)))
    failed = [t for t in minibatch if t.params["classify.temperature"] == 1.9]
    assert failed
    assert all(t.failed for t in failed)
    assert optimizer.best_trial(full_eval_only=True).score == 1.0


async def test_same_seed_same_trials_and_resume_skips_recorded_trials(
    rules: tuple[ScriptedLM, Rules],
) -> None:
    server, responder = rules
    before = responder.task_requests
    first_program, first, _ = await compile_once(server)
    first_requests = responder.task_requests - before
    _, second, _ = await compile_once(server)
    assert [t.to_json() for t in first.trials] == [t.to_json() for t in second.trials]
    _, other, _ = await compile_once(server, seed=1)
    assert [t.params for t in other.trials] != [t.params for t in first.trials]

    evaluated = sum(t.examples for t in first.trials)
    before = responder.task_requests
    resumed_program, resumed, _ = await compile_once(server, resume=first.trials)
    assert responder.task_requests - before == first_requests - evaluated
    assert [t.to_json() for t in resumed.trials] == [t.to_json() for t in first.trials]
    assert resumed_program.dump_state() == first_program.dump_state()

    # An interrupted run: the first eight trials recorded, the rest evaluated again.
    before = responder.task_requests
    _, partial, _ = await compile_once(server, resume=first.trials[:8])
    again = sum(t.examples for t in first.trials[8:])
    assert responder.task_requests - before == first_requests - evaluated + again
    assert [t.to_json() for t in partial.trials] == [t.to_json() for t in first.trials]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="num_trials"):
        MIPROv2("exact_match", num_trials=0)


async def test_space_names_clashing_with_mipro_params_are_rejected() -> None:
    clash = SearchSpace([Variable.temperature("classify", [0.0], name="classify.instruction")])
    optimizer = MIPROv2("exact_match", space=clash)
    with pytest.raises(ConfigurationError, match="reserved"):
        await optimizer.acompile(Classifier(), trainset=TRAIN)
