"""KNNFewShot and OpenAIEmbedder against the scripted server's embeddings endpoint.

The server embeds a text as its letter counts (26 numbers), so the nearest
trainset examples of a query can be worked out by hand.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

import dspex
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM, letter_counts
from dspex.errors import LMAuthError, LMRateLimitError, LMResponseError, LMServerError
from dspex.optimizers.embeddings import OpenAIEmbedder
from dspex.optimizers.knn import KNNFewShot
from dspex.programs.lm import RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


def word_answerer(request: RecordedRequest) -> Reply | None:
    if not request.path.endswith("/chat/completions"):
        return None  # embeddings: the server's default letter counts
    last = request.json["messages"][-1]["content"]
    word = re.search(r"\[\[ ## word ## \]\]\n(\w+)", last)
    answer = word.group(1).upper() if word else "?"
    return Reply.completion(f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]")


def demo_words(request: RecordedRequest) -> list[str]:
    users = request.json["messages"][1:-1:2]
    return [re.search(r"\[\[ ## word ## \]\]\n(\w+)", u["content"]).group(1) for u in users]  # type: ignore[union-attr]


TRAIN = [
    dspex.Example(word=w, answer=w.upper()).with_inputs("word")
    for w in ["aaaa", "bbbb", "cccc", "abab", "abcc", "zzzz"]
]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLM]:
    async with ScriptedLM(responder=word_answerer) as scripted:
        yield scripted


@pytest.fixture
async def embedder(server: ScriptedLM) -> AsyncIterator[OpenAIEmbedder]:
    async with OpenAIEmbedder(
        model="letters", base_url=server.openai_url, retry=FAST_RETRY
    ) as client:
        yield client


async def test_each_call_gets_the_nearest_examples_as_demos(
    server: ScriptedLM, embedder: OpenAIEmbedder
) -> None:
    knn = KNNFewShot(2, TRAIN, embedder)
    program = await knn.acompile(dspex.Predict("word -> answer"))
    async with dspex.OpenAIChat(model="m", base_url=server.openai_url) as lm:
        with dspex.context(lm=lm):
            first = await program.acall(word="aaab")
            second = await program.acall(word="ccca")
    chats = [r for r in server.requests if r.path.endswith("/chat/completions")]
    # "aaab" is (3, 1, 0): cos with aaaa (1,0,0) is 0.95, with abab (1,1,0) 0.89, then abcc.
    assert demo_words(chats[0]) == ["aaaa", "abab"]
    # "ccca" is (1, 0, 3): cccc 0.95, then abcc (1, 1, 2) 0.90.
    assert demo_words(chats[1]) == ["cccc", "abcc"]
    assert first.answer == "AAAB"
    assert second.answer == "CCCA"
    assert [step.predictor for step in first.trace] == ["self"]
    # The calls' demos never stick to the program.
    assert dict(program.named_predictors())["self"].demos == []
    assert await program.nearest(word="bbbz") == [TRAIN[1], TRAIN[3]]


async def test_trainset_embeddings_are_computed_once(
    server: ScriptedLM, embedder: OpenAIEmbedder
) -> None:
    knn = KNNFewShot(3, TRAIN, embedder)
    await knn.acompile(dspex.Predict("word -> answer"))
    embedding_requests = [r for r in server.requests if r.path.endswith("/embeddings")]
    assert len(embedding_requests) == 1
    assert sorted(embedding_requests[0].json["input"]) == sorted(f"word: {e.word}" for e in TRAIN)
    await knn.acompile(dspex.ChainOfThought("word -> answer"))
    assert server.count("/embeddings") == 1  # nothing new to embed
    await knn.acompile(dspex.Predict("word -> answer"), trainset=[*TRAIN, TRAIN[0].copy(word="q")])
    assert server.count("/embeddings") == 2
    assert server.requests[-1].json["input"] == ["word: q"]


async def test_the_embedder_batches_and_keeps_the_order(server: ScriptedLM) -> None:
    texts = ["abc", "zzz", "hello", "b", "", "q" * 5]
    async with OpenAIEmbedder(model="m", base_url=server.openai_url, batch_size=4) as embedder:
        vectors = await embedder.embed(texts)
    assert vectors == [letter_counts(text) for text in texts]
    assert [len(r.json["input"]) for r in server.requests] == [4, 2]
    assert embedder.usage.prompt_tokens == 22


async def test_embedding_failures_are_lm_errors_without_the_key(server: ScriptedLM) -> None:
    secret = "sk-very-secret-key"
    async with OpenAIEmbedder(
        model="m", base_url=server.openai_url, api_key=secret, retry=FAST_RETRY
    ) as embedder:
        server.responder = None
        server.script(Reply.error(401, f"bad key {secret}"))
        with pytest.raises(LMAuthError) as auth:
            await embedder.embed(["a"])
        assert secret not in str(auth.value)
        assert "[redacted]" in str(auth.value)
        assert server.requests[-1].headers["authorization"] == f"Bearer {secret}"

        server.script(Reply.error(500), Reply.error(500), Reply.error(500))
        with pytest.raises(LMServerError):
            await embedder.embed(["a"])

        server.script(Reply.error(429, headers={"Retry-After": "0"}), Reply())
        assert await embedder.embed(["ab"]) == [letter_counts("ab")]  # retried

        server.script(*[Reply.error(429, headers={"Retry-After": "0"})] * 3)
        with pytest.raises(LMRateLimitError):
            await embedder.embed(["a"])

        # Malformed answers are retried like other transient failures.
        server.script(*[Reply.malformed()] * 3)
        with pytest.raises(LMResponseError, match="not JSON"):
            await embedder.embed(["a"])

        server.script(*[Reply(body={"data": [{"embedding": [1.0]}]})] * 3)
        with pytest.raises(LMResponseError, match="1 embeddings in the answer for 2 texts"):
            await embedder.embed(["a", "b"])

        server.script(*[Reply(body={"data": [{"embedding": "nope", "index": 0}]})] * 3)
        with pytest.raises(LMResponseError, match="no numeric embedding"):
            await embedder.embed(["a"])


async def test_unreachable_endpoint_is_a_connection_error() -> None:
    from dspex.errors import LMConnectionError

    async with OpenAIEmbedder(
        model="m", base_url="http://127.0.0.1:9/v1", retry=RetryPolicy(max_attempts=1)
    ) as embedder:
        with pytest.raises(LMConnectionError, match="cannot reach"):
            await embedder.embed(["a"])
