"""Async language-model clients with production policies built in.

``OpenAIChat`` (any OpenAI-compatible server) and ``AnthropicChat`` share one
pipeline (:class:`LM`): response cache, circuit breaker, token-bucket rate
limiter, retries with backoff, and usage/cost accounting. Policies are frozen,
keyword-only configuration objects.

Example:
    >>> from dspex.programs.lm import Message, OpenAIChat, RateLimit, RetryPolicy
    >>> lm = OpenAIChat(
    ...     model="smollm2-135m-instruct",
    ...     base_url="http://127.0.0.1:8080/v1",
    ...     retry=RetryPolicy(max_attempts=3),
    ...     rate_limit=RateLimit(requests_per_minute=600),
    ... )
    >>> # response = await lm.acomplete([Message(role="user", content="Hello")])
"""

from dspex.programs.lm._breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitBreakerPolicy,
    CircuitBreakerRegistry,
)
from dspex.programs.lm._cache import ResponseCache
from dspex.programs.lm._observe import LMCallEvent, LMCallObserver, observe_lm_calls
from dspex.programs.lm._pricing import ModelPrice, PriceTable
from dspex.programs.lm._ratelimit import RateLimit
from dspex.programs.lm._retry import RetryPolicy
from dspex.programs.lm.anthropic import AnthropicChat
from dspex.programs.lm.base import LM, LMCallStats, LMOptions
from dspex.programs.lm.openai import JsonMode, OpenAIChat
from dspex.programs.lm.types import LMRequest, LMResponse, Message, ResponseFormat, TokenUsage

__all__ = [
    "LM",
    "AnthropicChat",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerPolicy",
    "CircuitBreakerRegistry",
    "JsonMode",
    "LMCallEvent",
    "LMCallObserver",
    "LMCallStats",
    "LMOptions",
    "LMRequest",
    "LMResponse",
    "Message",
    "ModelPrice",
    "OpenAIChat",
    "PriceTable",
    "RateLimit",
    "ResponseCache",
    "ResponseFormat",
    "RetryPolicy",
    "TokenUsage",
    "observe_lm_calls",
]
