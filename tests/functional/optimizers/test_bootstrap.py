"""BootstrapFewShot and its helpers against a rule-based scripted LM.

The task: answer a word reversed. The scripted LM only "knows" the task when
every demo in its prompt shows a reversed word; without demos, or with one
demo that merely echoes its word, it echoes the input (wrong). So a program
scores 0 zero-shot and 1 only when the optimizer put right demos on it.
Besides, words with an ``x`` are always answered wrong (their runs must never
become demos) and words with a ``z`` only when sampling at a temperature
(later rounds); and like a real model it copies the answer of a demo whose
word is the one asked. Correct answers come in upper case, the labels in
lower case, so a demo shows where it came from: upper case means bootstrapped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import ConfigurationError, OptimizationError
from dspex.optimizers.bootstrap import (
    BootstrapFewShot,
    bootstrap_demo_sets,
    bootstrap_demos,
    with_demos,
)
from dspex.optimizers.executor import LocalExecutor
from dspex.programs.lm import RetryPolicy

NORMAL = ["stone", "river", "cloud", "apple", "lemon", "tiger", "piano", "robot"]
HARD = ["boxer", "pixel", "xenon", "toxic", "relax", "index"]  # always answered wrong
STICKY = ["pizza", "zebra", "blaze"]  # right only at temperature > 0
DEV = ["mango", "bread", "chair", "ocean", "maple", "grape"]


def section(text: str, name: str) -> str | None:
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?:\n\n|\n?$)", text, re.DOTALL)
    return match.group(1).strip() if match else None


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def reverser(request: RecordedRequest) -> Reply:
    """The rule-based LM described in the module docstring."""
    body = request.json
    messages = body["messages"]
    demos = list(zip(messages[1:-1:2], messages[2:-1:2], strict=True))
    taught = bool(demos) and all(
        (section(a["content"], "answer") or "").lower()
        == (section(u["content"], "word") or "")[::-1].lower()
        for u, a in demos
    )
    word = section(messages[-1]["content"], "word") or ""
    sampling = (body.get("temperature") or 0.0) > 0
    copied = [
        section(a["content"], "answer") for u, a in demos if section(u["content"], "word") == word
    ]
    if copied:
        answer = copied[0] or ""
    elif taught and "x" not in word and ("z" not in word or sampling):
        answer = word[::-1].upper()
    else:
        answer = word
    if "[[ ## reasoning ## ]]" in messages[0]["content"]:
        return Reply.completion(chat(reasoning=f"{word} read backwards is {answer}", answer=answer))
    return Reply.completion(chat(answer=answer))


def example(word: str, *, labeled: bool = True) -> dspex.Example:
    if not labeled:
        return dspex.Example(word=word).with_inputs("word")
    return dspex.Example(word=word, answer=word[::-1]).with_inputs("word")


TRAIN = [example(w) for w in [*NORMAL[:4], *HARD, *NORMAL[4:]]]
DEVSET = [example(w) for w in DEV]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLM]:
    async with ScriptedLM(responder=reverser) as scripted:
        yield scripted


@pytest.fixture
async def lm(server: ScriptedLM) -> AsyncIterator[dspex.OpenAIChat]:
    async with dspex.OpenAIChat(
        model="student", base_url=server.openai_url, retry=RetryPolicy(max_attempts=1)
    ) as client:
        yield client


async def score(program: dspex.Module, devset: list[dspex.Example] = DEVSET) -> float:
    return (await LocalExecutor().evaluate(program, devset, "exact_match")).score


def demo_words(program: dspex.Module, path: str = "self") -> list[str]:
    return [demo.word for demo in dict(program.named_predictors())[path].demos]


def bootstrapped(demos: list[dspex.Example]) -> list[dspex.Example]:
    return [d for d in demos if d.answer == d.answer.upper()]


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_compiled_program_scores_higher_and_demos_come_from_passing_runs(
    lm: dspex.OpenAIChat, seed: int
) -> None:
    student = dspex.Predict("word -> answer")
    optimizer = BootstrapFewShot(
        "exact_match", seed=seed, max_bootstrapped_demos=3, max_labeled_demos=3
    )
    with dspex.context(lm=lm):
        zero_shot = await score(student)
        compiled = await optimizer.acompile(student, trainset=TRAIN)
        after = await score(compiled)
    assert zero_shot == 0.0
    assert after == 1.0
    demos = dict(compiled.named_predictors())["self"].demos
    assert len(demos) == 3
    for demo in demos:
        assert demo.answer == demo.word[::-1].upper()  # a run's output, not the label
        assert demo.word not in HARD
        assert demo.input_keys == frozenset({"word"})
    assert student.demos == []  # the student is untouched
    assert optimizer.demos == {"self": demos}


async def test_no_example_is_run_by_a_teacher_showing_it(lm: dspex.OpenAIChat) -> None:
    # max_labeled_demos exceeds the trainset: a single primed teacher would show
    # every example and the LM would copy the labels back.
    trainset = [example(w) for w in NORMAL]
    optimizer = BootstrapFewShot("exact_match", max_bootstrapped_demos=8, max_labeled_demos=16)
    with dspex.context(lm=lm):
        compiled = await optimizer.acompile(dspex.Predict("word -> answer"), trainset=trainset)
    demos = dict(compiled.named_predictors())["self"].demos
    assert sorted(d.word for d in demos) == sorted(NORMAL)
    assert bootstrapped(demos) == demos


async def test_labeled_demos_fill_up_to_max_labeled_demos(lm: dspex.OpenAIChat) -> None:
    optimizer = BootstrapFewShot("exact_match", max_bootstrapped_demos=2, max_labeled_demos=5)
    with dspex.context(lm=lm):
        compiled = await optimizer.acompile(dspex.Predict("word -> answer"), trainset=TRAIN)
    demos = dict(compiled.named_predictors())["self"].demos
    assert len(demos) == 5
    boot, labeled = demos[:2], demos[2:]
    assert bootstrapped(boot) == boot
    assert all(d in TRAIN for d in labeled)  # raw trainset examples, labels and all
    assert {d.word for d in boot}.isdisjoint(d.word for d in labeled)


async def test_metric_threshold_keeps_only_runs_scoring_high_enough(lm: dspex.OpenAIChat) -> None:
    def graded(example: dspex.Example, prediction: dspex.Prediction, trace: Any = None) -> float:
        if prediction.answer.lower() != example.answer:
            return 0.0
        return 1.0 if example.word in ("tiger", "robot", "lemon") else 0.5

    optimizer = BootstrapFewShot(
        graded, max_bootstrapped_demos=3, max_labeled_demos=3, metric_threshold=1.0
    )
    with dspex.context(lm=lm):
        compiled = await optimizer.acompile(dspex.Predict("word -> answer"), trainset=TRAIN)
    demos = dict(compiled.named_predictors())["self"].demos
    assert sorted(d.word for d in bootstrapped(demos)) == ["lemon", "robot", "tiger"]


async def test_chain_of_thought_demos_carry_their_reasoning(lm: dspex.OpenAIChat) -> None:
    student = dspex.ChainOfThought("word -> answer")
    optimizer = BootstrapFewShot("exact_match", max_bootstrapped_demos=2, max_labeled_demos=2)
    with dspex.context(lm=lm):
        compiled = await optimizer.acompile(student, trainset=TRAIN)
        after = await score(compiled)
    demos = dict(compiled.named_predictors())["predict"].demos
    assert len(demos) == 2
    for demo in demos:
        assert list(demo) == ["word", "reasoning", "answer"]
        assert demo.reasoning == f"{demo.word} read backwards is {demo.word[::-1].upper()}"
    assert after == 1.0


async def test_same_seed_same_demos_other_seed_other_demos(lm: dspex.OpenAIChat) -> None:
    def compile_with(seed: int) -> BootstrapFewShot:
        return BootstrapFewShot(
            "exact_match", seed=seed, max_bootstrapped_demos=3, max_labeled_demos=5, batch_size=4
        )

    with dspex.context(lm=lm):
        first = await compile_with(7).acompile(dspex.Predict("word -> answer"), trainset=TRAIN)
        again = await compile_with(7).acompile(dspex.Predict("word -> answer"), trainset=TRAIN)
        other = await compile_with(8).acompile(dspex.Predict("word -> answer"), trainset=TRAIN)
    assert first.dump_state() == again.dump_state()
    assert demo_words(first) != demo_words(other)


async def test_later_rounds_sample_at_a_temperature(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    trainset = [example(w) for w in [*STICKY, *HARD[:2]]]
    with dspex.context(lm=lm):
        one_round = await BootstrapFewShot(
            "exact_match", max_bootstrapped_demos=3, max_labeled_demos=3
        ).acompile(dspex.Predict("word -> answer"), trainset=trainset)
        assert {r.json["temperature"] for r in server.requests} == {0.0}
        assert bootstrapped(dict(one_round.named_predictors())["self"].demos) == []
        server.requests.clear()
        three_rounds = await BootstrapFewShot(
            "exact_match", max_bootstrapped_demos=3, max_labeled_demos=3, max_rounds=3
        ).acompile(dspex.Predict("word -> answer"), trainset=trainset)
    temperatures = [r.json["temperature"] for r in server.requests]
    # Round 0 is cached from the first compile; round 1 re-runs all five, round 2
    # only the two that can never pass.
    assert sorted(temperatures) == [0.701] * 5 + [0.702] * 2
    demos = dict(three_rounds.named_predictors())["self"].demos
    assert sorted(d.word for d in demos) == sorted(STICKY)
    assert bootstrapped(demos) == demos


async def test_trainset_without_labels_is_an_optimization_error(lm: dspex.OpenAIChat) -> None:
    unlabeled = [example(w, labeled=False) for w in NORMAL]
    with dspex.context(lm=lm), pytest.raises(OptimizationError) as caught:
        await BootstrapFewShot("exact_match").acompile(
            dspex.Predict("word -> answer"), trainset=unlabeled
        )
    message = str(caught.value)
    assert "metric raised on every one of 8" in message
    assert "metric_error" in message
    assert "labels" in message
    assert "`answer`" in message


async def test_bad_trainsets_are_configuration_errors(lm: dspex.OpenAIChat) -> None:
    optimizer = BootstrapFewShot("exact_match")
    with dspex.context(lm=lm):
        with pytest.raises(ConfigurationError, match="empty"):
            await optimizer.acompile(dspex.Predict("word -> answer"), trainset=[])
        with pytest.raises(ConfigurationError, match="example 1 has no inputs marked"):
            await optimizer.acompile(
                dspex.Predict("word -> answer"),
                trainset=[example("stone"), dspex.Example(word="river", answer="revir")],
            )
    with pytest.raises(ConfigurationError, match="max_rounds"):
        BootstrapFewShot("exact_match", max_rounds=0)


class TwoStep(dspex.Module):
    def __init__(self) -> None:
        self.first = dspex.Predict("word -> reversed")
        self.second = dspex.Predict("reversed -> answer")

    async def aforward(self, word: str) -> dspex.Prediction:
        reversed_word = (await self.first.acall(word=word)).reversed
        return await self.second.acall(reversed=reversed_word)


def two_step_lm(request: RecordedRequest) -> Reply:
    last = request.json["messages"][-1]["content"]
    word = section(last, "word")
    if word is not None:
        return Reply.completion(chat(reversed=word[::-1]))
    return Reply.completion(chat(answer=(section(last, "reversed") or "").upper()))


async def test_each_predictor_gets_demos_of_its_own_calls_and_batches_stop_early() -> None:
    async with (
        ScriptedLM(responder=two_step_lm) as server,
        dspex.OpenAIChat(model="m", base_url=server.openai_url) as lm,
    ):
        optimizer = BootstrapFewShot(
            "exact_match", max_bootstrapped_demos=2, max_labeled_demos=2, batch_size=2
        )
        with dspex.context(lm=lm):
            compiled = await optimizer.acompile(TwoStep(), trainset=TRAIN)
        # One batch of two examples filled both predictors: 2 calls each, no more.
        assert server.count("/chat/completions") == 4
    predictors = dict(compiled.named_predictors())
    first, second = predictors["first"].demos, predictors["second"].demos
    assert [list(d) for d in first] == [["word", "reversed"]] * 2
    assert [list(d) for d in second] == [["reversed", "answer"]] * 2
    assert [d.reversed for d in first] == [d.reversed for d in second]
    assert second[0].answer == second[0].reversed.upper()


async def test_teacher_settings_and_an_explicit_teacher(server: ScriptedLM) -> None:
    async with (
        dspex.OpenAIChat(model="student", base_url=server.openai_url) as student_lm,
        dspex.OpenAIChat(model="teacher", base_url=server.openai_url) as teacher_lm,
    ):
        teacher = dspex.Predict("word -> answer", demos=[{"word": "abc", "answer": "cba"}])
        optimizer = BootstrapFewShot(
            "exact_match",
            max_bootstrapped_demos=2,
            max_labeled_demos=2,
            teacher_settings={"lm": teacher_lm},
        )
        with dspex.context(lm=student_lm):
            compiled = await optimizer.acompile(
                dspex.Predict("word -> answer"), trainset=TRAIN, teacher=teacher
            )
        assert {r.json["model"] for r in server.requests} == {"teacher"}
        assert len(bootstrapped(dict(compiled.named_predictors())["self"].demos)) == 2
        with pytest.raises(ConfigurationError, match="teacher's predictors"):
            await optimizer.acompile(
                dspex.Predict("word -> answer"), trainset=TRAIN, teacher=TwoStep()
            )


async def test_bootstrap_demos_and_with_demos(lm: dspex.OpenAIChat) -> None:
    program = dspex.ChainOfThought("word -> answer")
    with dspex.context(lm=lm):
        demos = await bootstrap_demos(
            program,
            TRAIN,
            "exact_match",
            LocalExecutor(),
            max_bootstrapped_demos=1,
            max_labeled_demos=1,
            seed=3,
        )
    assert list(demos) == ["predict"]
    assert len(demos["predict"]) == 1
    assert "reasoning" in demos["predict"][0]
    compiled = with_demos(program, demos)
    assert compiled.predict.demos == demos["predict"]
    assert program.predict.demos == []
    with pytest.raises(ConfigurationError, match="does not have"):
        with_demos(program, {"nope": []})


async def test_demo_sets_follow_the_documented_layout(lm: dspex.OpenAIChat) -> None:
    program = dspex.Predict("word -> answer")

    async def make() -> list[dict[str, list[dspex.Example]]]:
        with dspex.context(lm=lm):
            return await bootstrap_demo_sets(
                program,
                TRAIN,
                "exact_match",
                LocalExecutor(),
                num_sets=6,
                seed=5,
                max_bootstrapped_demos=3,
                max_labeled_demos=4,
            )

    sets = await make()
    assert len(sets) == 6
    assert all(list(s) == ["self"] for s in sets)
    zero, labeled, unshuffled, *shuffled = (s["self"] for s in sets)
    assert zero == []
    assert len(labeled) == 4
    assert bootstrapped(labeled) == []
    assert all(d in TRAIN for d in labeled)
    # Set 2 walks the trainset as given: the first three words that pass.
    assert [d.word for d in bootstrapped(unshuffled)] == NORMAL[:3]
    assert len(unshuffled) == 4
    for demos in shuffled:
        assert 1 <= len(bootstrapped(demos)) <= 3
        assert len(demos) == 4
    again = await make()
    assert [[d.to_json() for d in s["self"]] for s in again] == [
        [d.to_json() for d in s["self"]] for s in sets
    ]
    with pytest.raises(ConfigurationError, match="num_sets"):
        await bootstrap_demo_sets(program, TRAIN, "exact_match", LocalExecutor(), num_sets=0)


async def test_the_executors_concurrency_bound_holds_while_bootstrapping() -> None:
    def slow(request: RecordedRequest) -> Reply:
        return dataclasses.replace(reverser(request), delay_s=0.05)

    async with (
        ScriptedLM(responder=slow) as server,
        dspex.OpenAIChat(model="m", base_url=server.openai_url) as lm,
    ):
        optimizer = BootstrapFewShot(
            "exact_match",
            executor=LocalExecutor(max_concurrency=3),
            max_bootstrapped_demos=len(TRAIN),
            max_labeled_demos=4,
        )
        with dspex.context(lm=lm):
            await optimizer.acompile(dspex.Predict("word -> answer"), trainset=TRAIN)
        assert server.count("/chat/completions") == len(TRAIN)
        assert server.max_concurrent == 3
