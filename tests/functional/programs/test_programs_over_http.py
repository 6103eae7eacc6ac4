"""Modules, adapters and Evaluate against a scripted OpenAI-compatible server.

The scripted server produces exact completions on demand (a tool call, a
malformed answer, a failure on one example), which the real local model
cannot; the client code under test talks real HTTP to it.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex.errors import AdapterParseError, LMServerError, ToolError
from dspex.programs.lm import RetryPolicy


def chat(**fields: Any) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def last_user_message(request: RecordedRequest) -> str:
    return str(request.json["messages"][-1]["content"])


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLM]:
    async with ScriptedLM() as scripted:
        yield scripted


@pytest.fixture
async def lm(server: ScriptedLM) -> AsyncIterator[dspex.OpenAIChat]:
    async with dspex.OpenAIChat(
        model="scripted",
        base_url=server.openai_url,
        cache=None,
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02),
    ) as client:
        yield client


async def test_predict_returns_typed_outputs_usage_and_trace(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    server.script(Reply.completion(chat(answer="Paris", confidence="0.9")))
    qa = dspex.Predict("question -> answer, confidence: float")
    with dspex.context(lm=lm):
        prediction = await qa.acall(question="Capital of France?")
    assert prediction.answer == "Paris"
    assert prediction.confidence == 0.9
    assert prediction.usage.calls == 1
    assert prediction.usage.prompt_tokens == 11
    assert [step.predictor for step in prediction.trace] == ["self"]
    assert prediction.trace[0].inputs == {"question": "Capital of France?"}
    sent = server.requests[0].json
    assert sent["messages"][0]["role"] == "system"
    assert "Capital of France?" in sent["messages"][-1]["content"]


async def test_chat_parse_failure_falls_back_to_json_and_counts_both_calls(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    server.script(
        Reply.completion("Paris, I am fairly sure."),
        Reply.completion(json.dumps({"answer": "Paris"})),
    )
    with dspex.context(lm=lm):
        prediction = await dspex.Predict("question -> answer").acall(question="q")
    assert prediction.answer == "Paris"
    assert prediction.usage.calls == 2
    assert "response_format" not in server.requests[0].json
    assert "response_format" in server.requests[1].json


async def test_unparseable_after_fallback_is_a_typed_error(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    server.default = Reply.completion("no structure at all")
    with dspex.context(lm=lm), pytest.raises(AdapterParseError) as info:
        await dspex.Predict("question -> answer").acall(question="q")
    assert info.value.adapter == "json"
    assert info.value.completion == "no structure at all"


async def test_literal_output_accepts_only_allowed_labels(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    class Classify(dspex.Signature):
        """Classify."""

        text: str = dspex.InputField()
        label: Literal["pos", "neg"] = dspex.OutputField()

    server.default = Reply.completion(json.dumps({"label": "maybe"}))
    predict = dspex.Predict(Classify, adapter=dspex.JSONAdapter())
    with dspex.context(lm=lm), pytest.raises(AdapterParseError) as info:
        await predict.acall(text="meh")
    assert info.value.field == "label"
    schema = server.requests[0].json["response_format"]
    assert "pos" in json.dumps(schema)


async def test_chain_of_thought_returns_reasoning_then_answer(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    server.script(Reply.completion(chat(reasoning="Paris is the capital.", answer="Paris")))
    with dspex.context(lm=lm):
        prediction = await dspex.ChainOfThought("question -> answer").acall(question="q")
    assert prediction.reasoning == "Paris is the capital."
    assert prediction.answer == "Paris"
    assert [step.predictor for step in prediction.trace] == ["predict"]


async def test_react_calls_tools_with_validated_arguments_then_answers(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    calls: list[tuple[str, int]] = []

    async def search(query: str, k: int = 2) -> list[str]:
        """Search the encyclopedia."""
        calls.append((query, k))
        return [f"{query} fact {i}" for i in range(k)]

    server.script(
        Reply.completion(
            chat(
                next_thought="I should search.",
                next_tool_name="search",
                next_tool_args='{"query": "Paris", "k": "3"}',
            )
        ),
        Reply.completion(
            chat(next_thought="Enough.", next_tool_name="finish", next_tool_args="{}")
        ),
        Reply.completion(chat(reasoning="The facts say Paris.", answer="Paris")),
    )
    agent = dspex.ReAct("question -> answer", tools=[search], max_iters=4)
    with dspex.context(lm=lm):
        prediction = await agent.acall(question="Capital of France?")
    assert calls == [("Paris", 3)]
    assert prediction.answer == "Paris"
    assert any("Paris fact 2" in line for line in prediction.trajectory)
    assert [step.predictor for step in prediction.trace] == ["react", "react", "extract.predict"]
    assert prediction.usage.calls == 3


async def test_react_tool_failure_is_a_tool_error_or_an_observation(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    def broken(query: str) -> str:
        """Always fails."""
        raise RuntimeError("backend down")

    step = chat(next_thought="t", next_tool_name="broken", next_tool_args='{"query": "x"}')
    server.script(Reply.completion(step))
    with dspex.context(lm=lm), pytest.raises(ToolError, match="backend down") as info:
        await dspex.ReAct("question -> answer", tools=[broken]).acall(question="q")
    assert info.value.tool == "broken"

    server.script(
        Reply.completion(step),
        Reply.completion(chat(next_thought="t", next_tool_name="finish", next_tool_args="{}")),
        Reply.completion(chat(reasoning="r", answer="unknown")),
    )
    agent = dspex.ReAct("question -> answer", tools=[broken], tool_errors="observe")
    with dspex.context(lm=lm):
        prediction = await agent.acall(question="q")
    assert any("error: tool `broken` raised RuntimeError" in line for line in prediction.trajectory)


async def test_best_of_n_uses_distinct_rollouts_and_keeps_the_best(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    server.script(*(Reply.completion(chat(answer=a)) for a in ["a", "bbb", "cc"]))
    best = dspex.BestOfN(
        dspex.Predict("question -> answer"),
        n=3,
        reward_fn=lambda inputs, pred: len(pred.answer),
        threshold=10,
    )
    with dspex.context(lm=lm):
        prediction = await best.acall(question="q")
    assert prediction.answer == "bbb"
    bodies = [r.json for r in server.requests]
    assert {b["temperature"] for b in bodies} == {1.0}
    assert len(server.requests) == 3


async def test_context_is_isolated_between_concurrent_tasks() -> None:
    async with (
        ScriptedLM(default=Reply.completion(chat(answer="A"))) as server_a,
        ScriptedLM(default=Reply.completion(chat(answer="B"))) as server_b,
    ):
        lm_a = dspex.OpenAIChat(model="a", base_url=server_a.openai_url, cache=None)
        lm_b = dspex.OpenAIChat(model="b", base_url=server_b.openai_url, cache=None)
        predict = dspex.Predict("question -> answer")

        async def ask(lm: dspex.OpenAIChat) -> str:
            with dspex.context(lm=lm):
                await asyncio.sleep(0)
                return str((await predict.acall(question="q")).answer)

        answers = await asyncio.gather(*(ask(lm_a if i % 2 else lm_b) for i in range(200)))
        await lm_a.aclose()
        await lm_b.aclose()
    assert answers == ["A" if i % 2 else "B" for i in range(200)]


async def test_thousand_concurrent_calls_respect_the_rate_limit_without_leaks(
    server: ScriptedLM,
) -> None:
    server.default = Reply.completion(chat(answer="ok"))
    tasks_before = asyncio.all_tasks()
    lm = dspex.OpenAIChat(
        model="scripted",
        base_url=server.openai_url,
        cache=None,
        rate_limit=dspex.RateLimit(requests_per_minute=30_000),  # 500 per second
    )
    predict = dspex.Predict("question -> answer")
    with dspex.context(lm=lm):
        results = await dspex.Parallel(max_concurrency=1000).arun(
            [(predict, {"question": f"q{i}"}) for i in range(1000)]
        )
    await lm.aclose()
    assert len(results) == 1000
    assert all(isinstance(r, dspex.Prediction) and r.answer == "ok" for r in results)
    # A full bucket may let one burst through at once; beyond it, 500/s.
    assert server.max_in_window(1.0) <= 500 + 500 + 10
    assert await server.wait_until_idle(5.0)
    assert asyncio.all_tasks() - tasks_before == set()


async def test_evaluate_scores_counts_errors_and_shows_progress(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    def answer(request: RecordedRequest) -> Reply:
        question = last_user_message(request)
        if "explode" in question:
            return Reply.error(500)
        return Reply.completion(chat(answer="4" if "2+2" in question else "wrong"))

    server.responder = answer
    devset = [
        dspex.Example(question="2+2?", answer="4").with_inputs("question"),
        dspex.Example(question="3+3?", answer="6").with_inputs("question"),
        dspex.Example(question="explode", answer="x").with_inputs("question"),
    ]
    progress = io.StringIO()
    evaluate = dspex.Evaluate(
        devset=devset, metric=dspex.exact_match, max_concurrency=2, progress_stream=progress
    )
    with dspex.context(lm=lm):
        result = await evaluate.acall(dspex.Predict("question -> answer"))
    assert [r.score for r in result.results] == [1.0, 0.0, 0.0]
    assert result.score == pytest.approx(1 / 3)
    assert result.errors == 1
    assert isinstance(result.results[2].error, LMServerError)
    assert "Evaluate 3/3" in progress.getvalue()
    table = result.table()
    assert "error: LMServerError" in table
    assert "score 0.3333" in table


async def test_semantic_f1_asks_the_judge(server: ScriptedLM, lm: dspex.OpenAIChat) -> None:
    server.script(Reply.completion(chat(recall="1.0", precision="0.5")))
    metric = dspex.SemanticF1()
    example = dspex.Example(question="q", answer="Paris, France").with_inputs("question")
    with dspex.context(lm=lm):
        score = await metric(example, dspex.Prediction(answer="Paris"))
    assert score == pytest.approx(2 * 1.0 * 0.5 / 1.5)


async def test_context_cache_false_bypasses_the_response_cache(server: ScriptedLM) -> None:
    server.default = Reply.completion(chat(answer="ok"))
    predict = dspex.Predict("question -> answer")
    async with dspex.OpenAIChat(model="scripted", base_url=server.openai_url) as cached_lm:
        with dspex.context(lm=cached_lm):
            await predict.acall(question="same")
            again = await predict.acall(question="same")
        assert again.usage.cached_calls == 1
        assert len(server.requests) == 1
        with dspex.context(lm=cached_lm, cache=False):
            fresh = await predict.acall(question="same")
        assert fresh.usage.calls == 1
        assert len(server.requests) == 2


def test_unknown_context_setting_is_named() -> None:
    from dspex.errors import ConfigurationError

    with (
        pytest.raises(ConfigurationError, match="unknown dspex setting.*temprature"),
        dspex.context(temprature=0.5),
    ):
        pass  # pragma: no cover


async def test_truncated_completion_says_so(server: ScriptedLM, lm: dspex.OpenAIChat) -> None:
    cut = {
        "id": "x",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '{"answer": "Par'},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
    server.default = Reply(body=cut)
    predict = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    with dspex.context(lm=lm), pytest.raises(AdapterParseError, match="cut off at max_tokens"):
        await predict.acall(question="q")


async def test_refine_feeds_advice_into_the_next_attempt(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    server.script(
        Reply.completion(chat(answer="short")),
        Reply.completion(chat(advice="Write a much longer answer.")),
        Reply.completion(chat(answer="a much longer answer")),
    )
    refine = dspex.Refine(
        dspex.Predict("question -> answer"),
        n=3,
        reward_fn=lambda inputs, pred: float(len(pred.answer) > 10),
        threshold=1.0,
    )
    with dspex.context(lm=lm):
        prediction = await refine.acall(question="q")
    assert prediction.answer == "a much longer answer"
    assert len(server.requests) == 3
    third_system_prompt = server.requests[2].json["messages"][0]["content"]
    assert "Write a much longer answer." in third_system_prompt
    assert "Write a much longer answer." not in server.requests[0].json["messages"][0]["content"]


async def test_multi_chain_comparison_shows_every_attempt(
    server: ScriptedLM, lm: dspex.OpenAIChat
) -> None:
    server.script(Reply.completion(chat(rationale="Attempt 2 is right.", answer="8")))
    compare = dspex.MultiChainComparison("question -> answer", m=2)
    attempts = [{"reasoning": "3+4", "answer": "7"}, {"reasoning": "4+4", "answer": "8"}]
    with dspex.context(lm=lm):
        prediction = await compare.acall(completions=attempts, question="4+4?")
    assert prediction.answer == "8"
    user_turn = server.requests[0].json["messages"][-1]["content"]
    assert "my prediction is 7" in user_turn
    assert "my prediction is 8" in user_turn
    with dspex.context(lm=lm), pytest.raises(dspex.errors.InputError, match="expects 2"):
        await compare.acall(completions=attempts[:1], question="q")
