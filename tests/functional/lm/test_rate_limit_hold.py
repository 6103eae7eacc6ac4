"""A 429's Retry-After holds every call of the client, not only the one that got it."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.scripted_lm import Reply, ScriptedLM
from dspex.errors import LMRateLimitError
from dspex.programs.lm import Message, OpenAIChat, RetryPolicy


def ask(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


async def test_calls_after_a_429_wait_out_its_retry_after() -> None:
    async with ScriptedLM(default=Reply.completion("ok")) as server:
        server.script(Reply.error(429, "slow down", headers={"Retry-After": "1"}))
        lm = OpenAIChat(
            model="scripted",
            base_url=server.openai_url,
            retry=RetryPolicy(max_attempts=1),
            cache=None,
        )
        async with lm:
            with pytest.raises(LMRateLimitError):
                await lm.acomplete(ask("first"))
            refused_at = time.monotonic()
            # Others that start now do not go out (to collect 429s of their own)
            # until the provider's second has passed.
            await asyncio.gather(*(lm.acomplete(ask(f"next {i}")) for i in range(3)))
    later = [request.arrived_at for request in server.requests[1:]]
    assert len(later) == 3
    assert min(later) - refused_at >= 0.9
