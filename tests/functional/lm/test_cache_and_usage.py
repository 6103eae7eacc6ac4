"""Response cache (memory and disk) and usage/cost accounting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.scripted_lm import Reply, ScriptedLM
from dspex.programs.lm import (
    Message,
    ModelPrice,
    OpenAIChat,
    PriceTable,
    ResponseCache,
    TokenUsage,
)


def ask(text: str = "What is 2+2?") -> list[Message]:
    return [Message(role="user", content=text)]


def client(server: ScriptedLM, **options: Any) -> OpenAIChat:
    return OpenAIChat(model="scripted-model", base_url=server.openai_url, **options)


async def test_identical_temperature_zero_requests_reach_the_server_once() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        first = await lm.acomplete(ask())
        second = await lm.acomplete(ask())
    assert len(server.requests) == 1
    assert not first.cached
    assert second.cached
    assert second.text == first.text
    assert second.usage == TokenUsage(cached_calls=1)
    assert lm.usage.calls == 1
    assert lm.usage.cached_calls == 1
    assert lm.usage.total_tokens == first.usage.total_tokens  # hits add no tokens


async def test_any_parameter_change_is_a_different_entry() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        await lm.acomplete(ask())
        await lm.acomplete(ask(), max_tokens=5)
        await lm.acomplete(ask(), stop=["."])
        await lm.acomplete(ask("Something else"))
    assert len(server.requests) == 4


async def test_sampled_calls_bypass_the_cache_unless_a_rollout_id_names_them() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        await lm.acomplete(ask(), temperature=0.7)
        await lm.acomplete(ask(), temperature=0.7)
        assert len(server.requests) == 2
        await lm.acomplete(ask(), temperature=0.7, rollout_id="r1")
        hit = await lm.acomplete(ask(), temperature=0.7, rollout_id="r1")
        assert len(server.requests) == 3
        assert hit.cached
        await lm.acomplete(ask(), temperature=0.7, rollout_id="r2")
        assert len(server.requests) == 4


async def test_provider_default_temperature_counts_as_sampled() -> None:
    async with ScriptedLM() as server, client(server, temperature=None) as lm:
        await lm.acomplete(ask())
        await lm.acomplete(ask())
    assert len(server.requests) == 2
    assert "temperature" not in server.requests[0].json


async def test_errors_are_not_cached() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        server.script(Reply.error(400, "bad"))
        with pytest.raises(Exception, match="bad"):
            await lm.acomplete(ask())
        response = await lm.acomplete(ask())
    assert not response.cached
    assert len(server.requests) == 2


async def test_lru_drops_the_least_recently_used_entry() -> None:
    async with ScriptedLM() as server, client(server, cache=ResponseCache(max_entries=2)) as lm:
        for text in ["a", "b", "a", "c", "a", "b"]:
            await lm.acomplete(ask(text))
    # a, b miss; a hits; c misses and evicts b; a hits; b misses again.
    assert [r.json["messages"][0]["content"] for r in server.requests] == ["a", "b", "c", "b"]


async def test_the_disk_cache_survives_a_new_client(tmp_path: Path) -> None:
    settings = ResponseCache(directory=tmp_path / "cache")
    async with (
        ScriptedLM() as server,
        client(server, cache=settings) as lm,
    ):
        original = await lm.acomplete(ask())
        async with client(server, cache=settings) as fresh:
            again = await fresh.acomplete(ask())
    assert len(server.requests) == 1
    assert again.cached
    assert again.text == original.text
    assert fresh.usage == TokenUsage(cached_calls=1)


async def test_cache_can_be_disabled() -> None:
    async with ScriptedLM() as server, client(server, cache=None) as lm:
        await lm.acomplete(ask())
        await lm.acomplete(ask())
    assert len(server.requests) == 2


async def test_cost_comes_from_the_price_table() -> None:
    prices = PriceTable(
        prices={
            "scripted-model": ModelPrice(
                prompt_usd_per_million=1_000_000, completion_usd_per_million=2_000_000
            )
        }
    )
    async with ScriptedLM() as server, client(server, pricing=prices, cache=None) as lm:
        response = await lm.acomplete(ask())
        await lm.acomplete(ask())
    # 11 prompt tokens at $1 each, 7 completion tokens at $2 each.
    assert response.usage.cost_usd == pytest.approx(11 + 14)
    assert lm.usage.cost_usd == pytest.approx(2 * 25)
    assert lm.usage.calls == 2


async def test_unpriced_models_cost_nothing() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        response = await lm.acomplete(ask())
    assert response.usage.cost_usd == 0.0
    assert response.usage.total_tokens == 18


async def test_n_choices_are_returned_and_counted() -> None:
    async with ScriptedLM() as server, client(server) as lm:
        response = await lm.acomplete(ask(), n=3)
    assert len(response.choices) == 3
    assert server.requests[0].json["n"] == 3
    assert response.usage.completion_tokens == 21
