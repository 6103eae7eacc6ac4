"""The contract between programs and language-model clients.

Adapters turn a signature and inputs into :class:`Message` lists; an
:class:`LM` turns an :class:`LMRequest` into an :class:`LMResponse`. Clients
(``OpenAIChat``, ``AnthropicChat``) implement :meth:`LM.send`; everything a
production call needs around it (cache, circuit breaker, rate limiter,
retries, usage and cost) is the shared pipeline in :class:`LM.acomplete`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

__all__ = ["LMRequest", "LMResponse", "Message", "ResponseFormat", "TokenUsage"]

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class ResponseFormat(BaseModel):
    """Ask for a JSON object matching ``json_schema`` (provider-neutral).

    Each client maps it to what its endpoint supports: OpenAI's
    ``{"type": "json_schema", ...}``, llama.cpp's ``{"type": "json_object",
    "schema": ...}``, or plain JSON mode plus the schema in the prompt.
    """

    model_config = ConfigDict(frozen=True)

    name: str = "output"
    json_schema: dict[str, Any]


class TokenUsage(BaseModel):
    """Tokens and cost of one or more LM calls. Cache hits are counted apart."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    #: Calls that reached the provider.
    calls: int = 0
    #: Calls answered from the response cache (their tokens are not counted above).
    cached_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        # Validating five numbers costs less than pydantic's model_construct.
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            calls=self.calls + other.calls,
            cached_calls=self.cached_calls + other.cached_calls,
        )


class LMRequest(BaseModel):
    """Everything that determines a completion (and so its cache key). No credentials."""

    model_config = ConfigDict(frozen=True)

    provider: str
    #: The API root the request goes to: two servers serving the same model
    #: name must not share cache entries.
    endpoint: str | None = None
    model: str
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    n: int = Field(1, ge=1)
    response_format: ResponseFormat | None = None
    #: Further provider parameters (top_p, seed, ...), sent as given.
    extra: dict[str, Any] = Field(default_factory=dict)
    #: Distinguishes otherwise identical sampled calls; a request with a
    #: rollout id is cacheable even at temperature > 0.
    rollout_id: str | None = None

    def cache_key(self) -> str:
        """A stable hash of the whole request.

        The JSON of the fields in their declared order, with the free-form
        ``extra`` parameters sorted by name, so the order they were given in
        does not matter.
        """
        request = self
        if list(self.extra) != sorted(self.extra):
            request = self.model_copy(update={"extra": dict(sorted(self.extra.items()))})
        return hashlib.sha256(to_json(request)).hexdigest()


class LMResponse(BaseModel):
    """A completion with its accounting."""

    model_config = ConfigDict(frozen=True)

    #: The first choice's text.
    text: str
    #: Every choice's text (``n`` of them).
    choices: tuple[str, ...]
    finish_reason: str | None = None
    provider: str
    model: str
    usage: TokenUsage
    cached: bool = False
    latency_s: float = 0.0
