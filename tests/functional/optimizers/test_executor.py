"""LocalExecutor against a scripted OpenAI-compatible server.

The server answers per question, so each example's fate (answer, HTTP error,
garbage, slow) is chosen by its input; the client runs its real HTTP code.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import ConfigurationError
from dspex.optimizers.executor import LocalExecutor, ScoredOutput
from dspex.programs.lm import ResponseCache, RetryPolicy

_QUESTION = re.compile(r"\[\[ ## question ## \]\]\n(.*?)\n", re.DOTALL)


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def question_of(request: RecordedRequest) -> str:
    match = _QUESTION.search(str(request.json["messages"][-1]["content"]))
    return match.group(1) if match else ""


def respond(request: RecordedRequest) -> Reply:
    """``boom`` → 500, ``slow`` → rate limited, ``garbage`` → unparseable, else an echo."""
    question = question_of(request)
    if question == "boom":
        return Reply.error(500, "kaboom")
    if question == "limited":
        return Reply.error(429, "slow down")
    if question == "garbage":
        return Reply.completion("I will not use your format.")
    delay = float(question.split(":")[1]) if question.startswith("delay:") else 0.0
    return Reply.completion(chat(answer=question.upper()), delay_s=delay)


def ex(question: str, answer: str | None = None) -> dspex.Example:
    return dspex.Example(question=question, answer=answer or question.upper()).with_inputs(
        "question"
    )


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLM]:
    async with ScriptedLM(responder=respond) as scripted:
        yield scripted


@pytest.fixture
async def lm(server: ScriptedLM) -> AsyncIterator[dspex.OpenAIChat]:
    async with dspex.OpenAIChat(
        model="scripted", base_url=server.openai_url, cache=None, retry=RetryPolicy(max_attempts=1)
    ) as client:
        yield client


async def test_concurrency_is_bounded_as_seen_by_the_server(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    examples = [ex(f"delay:0.05:{i}") for i in range(10)]
    with dspex.context(lm=lm):
        summary = await LocalExecutor(max_concurrency=3).evaluate(
            dspex.Predict("question -> answer"), examples, "exact_match"
        )
    assert server.count("/chat/completions") == 10
    assert server.max_concurrent == 3
    assert summary.score == 1.0
    assert summary.errors == 0


async def test_failures_become_outputs_with_their_error_type(lm: dspex.OpenAIChat) -> None:
    examples = [
        ex("fine"),
        ex("boom"),
        ex("limited"),
        ex("garbage"),
        dspex.Example(query="wrong field", answer="x").with_inputs("query"),
    ]
    with dspex.context(lm=lm):
        summary = await LocalExecutor().evaluate(
            dspex.Predict("question -> answer"), examples, "exact_match", failure_score=-1.0
        )
    kinds = [o.error.type if o.error else None for o in summary.outputs]
    assert kinds == [None, "lm_error", "lm_rate_limited", "parse_error", "invalid_inputs"]
    assert [o.score for o in summary.outputs] == [1.0, -1.0, -1.0, -1.0, -1.0]
    assert summary.outputs[0].outputs == {"answer": "FINE"}
    assert summary.outputs[1].outputs is None
    assert "kaboom" in summary.outputs[1].error.message  # type: ignore[union-attr]
    assert summary.error_counts() == {
        "lm_error": 1,
        "lm_rate_limited": 1,
        "parse_error": 1,
        "invalid_inputs": 1,
    }


async def test_a_metric_that_raises_gives_metric_error_not_a_crash(lm: dspex.OpenAIChat) -> None:
    def picky(example: dspex.Example, prediction: dspex.Prediction, trace: Any = None) -> bool:
        if example.question == "odd":
            raise KeyError("no gold answer for odd")
        return True

    with dspex.context(lm=lm):
        summary = await LocalExecutor().evaluate(
            dspex.Predict("question -> answer"), [ex("even"), ex("odd")], picky
        )
    ok, failed = summary.outputs
    assert ok.ok
    assert ok.score == 1.0
    assert failed.error is not None
    assert failed.error.type == "metric_error"
    assert failed.error.message.startswith("KeyError")
    # The program ran: its outputs and trace are kept for inspection.
    assert failed.outputs == {"answer": "ODD"}
    assert len(failed.trace) == 1


async def test_labels_missing_for_the_builtin_metric_is_a_metric_error(
    lm: dspex.OpenAIChat,
) -> None:
    unlabeled = dspex.Example(question="q").with_inputs("question")
    with dspex.context(lm=lm):
        summary = await LocalExecutor().evaluate(
            dspex.Predict("question -> answer"), [unlabeled], "exact_match"
        )
    [output] = summary.outputs
    assert output.error is not None
    assert output.error.type == "metric_error"
    assert "answer" in output.error.message


async def test_evaluate_sorts_outputs_by_index_whatever_the_arrival_order(
    lm: dspex.OpenAIChat,
) -> None:
    # Later examples answer sooner, so they arrive first.
    examples = [ex(f"delay:{0.2 - 0.04 * i:.2f}:{i}") for i in range(5)]
    arrived: list[int] = []

    def on_output(output: ScoredOutput) -> None:
        arrived.append(output.index)

    with dspex.context(lm=lm):
        summary = await LocalExecutor().evaluate(
            dspex.Predict("question -> answer"), examples, "exact_match", on_output=on_output
        )
    assert arrived != sorted(arrived)
    assert [o.index for o in summary.outputs] == [0, 1, 2, 3, 4]
    assert [o.example for o in summary.outputs] == examples


async def test_rollout_id_reaches_the_lm_and_makes_sampled_calls_cacheable(
    server: ScriptedLM,
) -> None:
    program = dspex.Predict("question -> answer", temperature=0.9)
    async with dspex.OpenAIChat(
        model="scripted", base_url=server.openai_url, cache=ResponseCache()
    ) as lm:
        with dspex.context(lm=lm):
            executor = LocalExecutor()
            await executor.evaluate(program, [ex("a"), ex("b")], "exact_match")
            await executor.evaluate(program, [ex("a"), ex("b")], "exact_match")
            assert server.count("/chat/completions") == 4  # sampled, no rollout: never cached
            await executor.evaluate(program, [ex("a"), ex("b")], "exact_match", rollout_id="r1")
            await executor.evaluate(program, [ex("a"), ex("b")], "exact_match", rollout_id="r1")
            assert server.count("/chat/completions") == 6  # the second r1 batch was cached
            await executor.evaluate(program, [ex("a"), ex("b")], "exact_match", rollout_id="r2")
            assert server.count("/chat/completions") == 8


async def test_whole_batch_problems_raise(lm: dspex.OpenAIChat) -> None:
    executor = LocalExecutor()
    with dspex.context(lm=lm):
        with pytest.raises(ConfigurationError, match="unknown metric|metric"):
            await executor.evaluate(dspex.Predict("question -> answer"), [ex("a")], "no_such")
        with pytest.raises(ConfigurationError, match="no inputs marked"):
            await executor.evaluate(
                dspex.Predict("question -> answer"),
                [dspex.Example(question="a", answer="A")],
                "exact_match",
            )
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        LocalExecutor(max_concurrency=0)
