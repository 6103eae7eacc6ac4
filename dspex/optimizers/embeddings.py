"""Embedders: texts in, vectors out, for KNNFewShot and semantic metrics.

:class:`Embedder` is the interface. :class:`OpenAIEmbedder` speaks OpenAI's
``/embeddings`` API (OpenAI, vLLM, llama.cpp and llama-cpp-python servers,
Ollama, ...), with the LM clients' retries and error translation: every
failure is a :mod:`dspex.errors` LM error and no message carries the API key.
:class:`CallableEmbedder` wraps a local function, such as a
sentence-transformers model's ``encode``.

Embedders hold connections: they are shared by program copies
(``deepcopy`` returns the same embedder), like LM clients.

Example:
    >>> async with OpenAIEmbedder(model="all-minilm", base_url=url) as embedder:  # doctest: +SKIP
    ...     vectors = await embedder.embed(["a cat", "a dog"])
"""

from __future__ import annotations

import asyncio
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx
from pydantic import SecretStr

from dspex.errors import ConfigurationError
from dspex.programs.lm._http import HTTPBoundary, json_body, resolve_api_key, token_count
from dspex.programs.lm._retry import Retrier, RetryPolicy
from dspex.programs.lm._transport import HTTPAnswer
from dspex.programs.lm.types import TokenUsage

__all__ = ["CallableEmbedder", "Embedder", "OpenAIEmbedder"]

_DEFAULT_RETRY = RetryPolicy()


class Embedder(ABC):
    """Turns texts into vectors; one vector per text, in order, all of one length."""

    @abstractmethod
    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``.

        Raises:
            LMError: The embedding service failed (for remote embedders).
        """

    async def aclose(self) -> None:
        """Release connections; the default holds none."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        # A shared resource, like an LM client: copies of a program use the same one.
        return self


#: A local embedding function, sync or async.
EmbedFunction = Callable[
    [Sequence[str]], Sequence[Sequence[float]] | Awaitable[Sequence[Sequence[float]]]
]


class CallableEmbedder(Embedder):
    """An embedder around a function ``texts -> vectors``.

    A synchronous function runs in a worker thread so a model's ``encode``
    does not stall the event loop.

    Args:
        function: Returns one vector per text.

    Example:
        >>> import asyncio
        >>> embedder = CallableEmbedder(lambda texts: [[float(len(t))] for t in texts])
        >>> asyncio.run(embedder.embed(["ab", "abc"]))
        [[2.0], [3.0]]
    """

    def __init__(self, function: EmbedFunction) -> None:
        self.function = function

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if inspect.iscoroutinefunction(self.function):
            result = await self.function(texts)
        else:
            result = await asyncio.to_thread(self.function, texts)
            if inspect.isawaitable(result):
                result = await result
        vectors = [[float(value) for value in vector] for vector in result]
        if len(vectors) != len(texts):
            raise ConfigurationError(
                f"the embedding function returned {len(vectors)} vectors for {len(texts)} texts"
            )
        return vectors


class OpenAIEmbedder(Embedder):
    """Client of an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.

    Args:
        model: The embedding model's name on the server.
        base_url: Endpoint root, e.g. ``http://127.0.0.1:8080/v1``.
        api_key: The key; else ``$api_key_env``, else the file ``api_key_file``;
            none at all is fine for local servers.
        api_key_env: Environment variable holding the key.
        api_key_file: File holding the key.
        dimensions: Ask for vectors of this length (models that support it).
        batch_size: Most texts per request.
        timeout_s: Seconds per attempt.
        retry: Retry policy for 429, 5xx, timeouts and connection errors.
        http_client: A shared ``httpx.AsyncClient``; default: one of its own.
        headers: Extra HTTP headers (never logged).

    Raises:
        ConfigurationError: A setting is out of range, or the key file cannot be read.
    """

    provider: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | SecretStr | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key_file: str | Path | None = None,
        dimensions: int | None = None,
        batch_size: int = 128,
        timeout_s: float = 60.0,
        retry: RetryPolicy = _DEFAULT_RETRY,
        http_client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not model:
            raise ConfigurationError("model must be a non-empty string")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        if not timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be > 0, got {timeout_s}")
        if dimensions is not None and dimensions < 1:
            raise ConfigurationError(f"dimensions must be >= 1, got {dimensions}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.dimensions = dimensions
        self.batch_size = batch_size
        self._timeout = httpx.Timeout(timeout_s)
        self._wire = HTTPBoundary(
            provider=self.provider,
            model=model,
            base_url=self.base_url,
            api_key=resolve_api_key(api_key, env_var=api_key_env, key_file=api_key_file),
            timeout=self._timeout,
            headers=headers or {},
        )
        self._retrier = Retrier(retry)
        self._http = http_client
        self._owns_http = http_client is None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Tokens counted by the server over this client's life.
        self.usage = TokenUsage()

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, base_url={self.base_url!r})"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``, ``batch_size`` per request.

        Raises:
            LMError: A subclass saying what failed (after retries where they help).
        """
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(await self._embed_batch(list(texts[start : start + self.batch_size])))
        return vectors

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        return await self._retrier.run(lambda _attempt: self._post(batch))

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._owns_http and self._loop is not loop:
            # A pool belongs to the loop that opened it (asyncio.run per call in scripts).
            self._http = None
            self._loop = loop
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout)
        return self._http

    async def _post(self, batch: list[str]) -> list[list[float]]:
        headers = {}
        secret = self._wire.secret()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        body: dict[str, Any] = {"model": self.model, "input": batch}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        response = await self._wire.post(
            self._client(), f"{self.base_url}/embeddings", json_body=body, headers=headers
        )
        if not response.is_success:
            raise self._wire.status_error(response, _error_detail(response))
        return self._parse(response, len(batch))

    def _parse(self, response: HTTPAnswer, expected: int) -> list[list[float]]:
        document = self._wire.json_object(response)
        items = document.get("data")
        if not isinstance(items, list) or len(items) != expected:
            count = len(items) if isinstance(items, list) else "no"
            raise self._wire.response_error(
                f"{count} embeddings in the answer for {expected} texts", response
            )
        vectors: dict[int, list[float]] = {}
        for position, item in enumerate(items):
            embedding = item.get("embedding") if isinstance(item, dict) else None
            index = item.get("index", position) if isinstance(item, dict) else position
            if (
                not isinstance(embedding, list)
                or not embedding
                or not all(isinstance(v, int | float) for v in embedding)
            ):
                raise self._wire.response_error(
                    f"item {position} has no numeric embedding", response
                )
            if not isinstance(index, int) or not 0 <= index < expected or index in vectors:
                raise self._wire.response_error(f"item {position} has a bad index", response)
            vectors[index] = [float(v) for v in embedding]
        usage = document.get("usage")
        if isinstance(usage, dict):
            self.usage += TokenUsage(prompt_tokens=token_count(usage.get("prompt_tokens")), calls=1)
        return [vectors[index] for index in range(expected)]


def _error_detail(response: HTTPAnswer) -> str:
    """The message of an OpenAI-style error body, or the raw text."""
    body = json_body(response)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return response.text
