"""What carries an LM call's bytes: the direct path over aiohttp's pool, and the others."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from bench.scripted_lm import Reply, ScriptedLM
from dspex.errors import LMServerError
from dspex.programs.lm import Message, OpenAIChat, RetryPolicy

ASK = [Message(role="user", content="Hi")]
NO_RETRY = RetryPolicy(max_attempts=1)


def completion_body(text: str) -> bytes:
    return json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    ).encode()


async def test_a_compressed_answer_is_decoded_on_every_path() -> None:
    packed = gzip.compress(completion_body("unpacked"))
    async with ScriptedLM() as server:
        server.default = Reply(body=packed, headers={"Content-Encoding": "gzip"})
        async with (
            OpenAIChat(model="m", base_url=server.openai_url, cache=None) as direct,
            httpx.AsyncClient() as http,
            OpenAIChat(model="m", base_url=server.openai_url, cache=None, http_client=http) as own,
        ):
            assert (await direct.acomplete(ASK)).text == "unpacked"
            assert (await own.acomplete(ASK)).text == "unpacked"
        assert all("gzip" in r.headers["accept-encoding"] for r in server.requests)


async def test_an_error_body_reaches_the_message_on_every_path() -> None:
    async with ScriptedLM() as server:
        server.default = Reply.error(503, "the model is warming up")
        async with (
            OpenAIChat(model="m", base_url=server.openai_url, cache=None, retry=NO_RETRY) as a,
            httpx.AsyncClient() as http,
            OpenAIChat(
                model="m", base_url=server.openai_url, cache=None, retry=NO_RETRY, http_client=http
            ) as b,
        ):
            for lm in (a, b):
                with pytest.raises(LMServerError, match="HTTP 503: the model is warming up"):
                    await lm.acomplete(ASK)


async def test_a_proxy_in_the_environment_carries_the_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    async with ScriptedLM() as upstream, ScriptedLM() as proxy:
        proxy.default = Reply.completion("through the proxy")
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with OpenAIChat(model="m", base_url=upstream.openai_url, cache=None) as lm:
            answer = await lm.acomplete(ASK)
        assert answer.text == "through the proxy"
        assert upstream.requests == []
        # A proxy is sent the absolute URL of the upstream endpoint.
        assert [r.path for r in proxy.requests] == [f"{upstream.openai_url}/chat/completions"]
