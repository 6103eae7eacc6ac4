"""The shared pipeline of every LM client.

:meth:`LM.acomplete` builds an :class:`LMRequest` and runs it through::

    response cache ─hit─▶ answer (counted in ``cached_calls``, not in tokens)
        │ miss, or not cacheable (temperature > 0 without a rollout id)
        ▼
    ┌─ retries (backoff + full jitter, Retry-After: a 429 holds every call) ──┐
    │  circuit breaker (fail fast) → rate limiter → in-flight gate → ``send`` │
    └─────────────────────────────────────────────────────────────────────────┘
        ▼
    usage and cost accounting → cache store → answer

Breaker and limiter sit *inside* the retry loop on purpose: every retry is
one more request the provider meters, and a breaker that opens mid-retry must
stop the remaining attempts. Subclasses only implement :meth:`LM.send` (one
HTTP call in the provider's format); ``self._wire``, an
:class:`~dspex.programs.lm._http.HTTPBoundary`, posts it and maps failures to
:mod:`dspex.errors` types.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypedDict

import httpx
from pydantic import SecretStr

from dspex.errors import ConfigurationError, LMError, LMRateLimitError, error_type
from dspex.programs.lm._breaker import CircuitBreakerPolicy, CircuitBreakerRegistry
from dspex.programs.lm._cache import ResponseCache, ResponseCacheStore, is_cacheable
from dspex.programs.lm._http import HTTPBoundary, reject_credential_params, resolve_api_key
from dspex.programs.lm._observe import LMCallEvent, notify_lm_call
from dspex.programs.lm._pricing import PriceTable
from dspex.programs.lm._ratelimit import RateLimit, TokenBucketLimiter, estimate_request_tokens
from dspex.programs.lm._retry import Retrier, RetryPolicy
from dspex.programs.lm._transport import PooledClient
from dspex.programs.lm.types import LMRequest, LMResponse, Message, ResponseFormat, TokenUsage

__all__ = ["LM", "LMCallStats", "LMOptions"]

logger = logging.getLogger("dspex.programs.lm")

#: Defaults are frozen values, so sharing one instance between clients is safe.
DEFAULT_RETRY = RetryPolicy()
DEFAULT_BREAKER = CircuitBreakerPolicy()
DEFAULT_CACHE = ResponseCache()


class LMOptions(TypedDict, total=False):
    """The keyword arguments every client accepts besides ``model`` (see :class:`LM`)."""

    base_url: str | None
    api_key: str | SecretStr | None
    api_key_env: str | None
    api_key_file: str | Path | None
    temperature: float | None
    max_tokens: int | None
    stop: Sequence[str] | None
    params: Mapping[str, Any] | None
    timeout_s: float
    retry: RetryPolicy
    rate_limit: RateLimit | None
    circuit_breaker: CircuitBreakerPolicy | CircuitBreakerRegistry | None
    cache: ResponseCache | None
    pricing: PriceTable | None
    http_client: httpx.AsyncClient | None
    max_connections: int
    headers: Mapping[str, str] | None


@dataclass(slots=True)
class LMCallStats:
    """Counters of one client, for metrics. Tokens and cost are in :attr:`LM.usage`."""

    #: Attempts that were retried after a failure.
    retries: int = 0
    #: Failed ``acomplete`` calls by error class name (after retries).
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Attempts:
    """Retries made so far by one ``acomplete`` call."""

    retries: int = 0


class LM(ABC):
    """An async language-model client with retries, rate limits, a breaker and a cache.

    Args:
        model: The provider's model name.
        base_url: Endpoint root; each client has a sensible default.
        api_key: The key itself. Else the ``api_key_env`` environment variable,
            else the contents of ``api_key_file``. Kept as a ``SecretStr``.
        api_key_env: Environment variable holding the key (client-specific default).
        api_key_file: File holding the key (e.g. a mounted secret).
        temperature: Default temperature; None leaves it to the provider.
        max_tokens: Default completion budget; None leaves it to the provider.
        stop: Default stop sequences.
        params: Further default provider parameters (``top_p``, ``seed``, ...).
        timeout_s: Seconds to wait for connect, send and for the answer, per attempt.
        retry: Retry policy.
        rate_limit: Request/token budgets, or None for no client-side limit.
        circuit_breaker: A policy (the client makes its own breakers), a shared
            :class:`CircuitBreakerRegistry`, or None to disable.
        cache: Response cache settings, or None to disable caching.
        pricing: Prices for cost accounting (cost 0 for unpriced models).
        http_client: A shared ``httpx.AsyncClient``; the client makes (and
            closes) its own when None.
        max_connections: Most HTTP requests in flight at once; also the pool size
            of the client's own ``httpx`` client.
        headers: Extra HTTP headers for every call (never logged or saved).

    Example:
        >>> from dspex.programs.lm import OpenAIChat
        >>> lm = OpenAIChat(model="smollm2-135m-instruct", base_url="http://127.0.0.1:8080/v1")
        >>> lm.dump_state()["model"]
        'smollm2-135m-instruct'
    """

    #: Provider kind, e.g. ``"openai"``; used in errors, breakers and requests.
    provider: ClassVar[str]
    default_base_url: ClassVar[str]
    default_api_key_env: ClassVar[str]
    #: Completion budget assumed by the rate limiter when a call sets none.
    assumed_completion_tokens: ClassVar[int] = 256

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        api_key_env: str | None = None,
        api_key_file: str | Path | None = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        rate_limit: RateLimit | None = None,
        circuit_breaker: CircuitBreakerPolicy | CircuitBreakerRegistry | None = DEFAULT_BREAKER,
        cache: ResponseCache | None = DEFAULT_CACHE,
        pricing: PriceTable | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not model:
            raise ConfigurationError("model must be a non-empty string")
        if not timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be > 0, got {timeout_s}")
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be >= 1, got {max_connections}")
        # Read-only: the breaker, the boundary and the cache entries are keyed on them.
        self._model = model
        self._base_url = (base_url or self.default_base_url).rstrip("/")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.stop = tuple(stop) if stop is not None else None
        self.params: dict[str, Any] = dict(params or {})
        reject_credential_params(self.params)
        self.timeout_s = timeout_s
        # The key goes straight into the boundary, the only object that sees it.
        self._timeout = httpx.Timeout(timeout_s, pool=None)  # waiting for a pooled slot is ours
        self._wire = HTTPBoundary(
            provider=self.provider,
            model=model,
            base_url=self.base_url,
            api_key=resolve_api_key(
                api_key, env_var=api_key_env or self.default_api_key_env, key_file=api_key_file
            ),
            timeout=self._timeout,
            headers=headers or {},
        )
        self._retrier = Retrier(retry, on_retry=self._log_retry)
        #: No call goes out before this (monotonic) time: a 429's Retry-After
        #: speaks for the whole client, not only for the call that got it.
        self._held_until = 0.0
        self._limiter = TokenBucketLimiter(rate_limit) if rate_limit is not None else None
        if isinstance(circuit_breaker, CircuitBreakerPolicy):
            circuit_breaker = CircuitBreakerRegistry(circuit_breaker)
        self._breaker = circuit_breaker.get(self.provider, model) if circuit_breaker else None
        self._cache = ResponseCacheStore(cache) if cache is not None else None
        self._pricing = pricing if pricing is not None else PriceTable()
        self._max_connections = max_connections
        self._http = http_client
        self._owns_http = http_client is None
        self._gate: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._usage = TokenUsage()
        self.stats = LMCallStats()

    # -- public API ----------------------------------------------------------------

    @property
    def model(self) -> str:
        """The provider's model name."""
        return self._model

    @property
    def base_url(self) -> str:
        """The endpoint root, without a trailing slash."""
        return self._base_url

    @property
    def usage(self) -> TokenUsage:
        """Running total of this client's calls (cache hits in ``cached_calls``)."""
        return self._usage

    @property
    def breaker_state(self) -> str | None:
        """``closed``/``open``/``half_open``, or None when there is no breaker."""
        return None if self._breaker is None else self._breaker.state

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        n: int = 1,
        response_format: ResponseFormat | None = None,
        rollout_id: str | None = None,
        cache: bool = True,
        **extra: Any,
    ) -> LMResponse:
        """Complete a chat; None arguments take the client's defaults.

        Args:
            messages: The conversation.
            temperature: Sampling temperature.
            max_tokens: Completion budget.
            stop: Stop sequences.
            n: Number of choices.
            response_format: Ask for JSON matching a schema.
            rollout_id: Names one sample, making a sampled call cacheable.
            cache: False bypasses the response cache for this call (read and write).
            **extra: Further provider parameters, sent as given.

        Returns:
            The completion with its usage and cost.

        Raises:
            LMError: A subclass saying what failed, after retries where they help.
            ConfigurationError: ``extra`` tries to pass credentials.
        """
        reject_credential_params(extra)
        if not messages:
            raise ConfigurationError("acomplete needs at least one message")
        request = LMRequest(
            provider=self.provider,
            endpoint=self.base_url,
            model=self.model,
            messages=tuple(messages),
            temperature=temperature if temperature is not None else self.temperature,
            max_tokens=max_tokens if max_tokens is not None else self.max_tokens,
            stop=tuple(stop) if stop is not None else self.stop,
            n=n,
            response_format=response_format,
            extra={**self.params, **extra},
            rollout_id=rollout_id,
        )
        started = time.perf_counter()
        attempts = _Attempts()
        try:
            response = await self._complete(request, use_cache=cache, attempts=attempts)
        except LMError as exc:
            self.stats.errors[type(exc).__name__] += 1
            notify_lm_call(
                LMCallEvent(
                    provider=self.provider,
                    model=self.model,
                    status="error",
                    error_type=error_type(exc),
                    latency_s=time.perf_counter() - started,
                    retries=attempts.retries,
                )
            )
            raise
        notify_lm_call(
            LMCallEvent(
                provider=self.provider,
                model=self.model,
                status="ok",
                latency_s=response.latency_s,
                usage=response.usage,
                cached=response.cached,
                retries=attempts.retries,
            )
        )
        return response

    @abstractmethod
    async def send(self, request: LMRequest, client: httpx.AsyncClient) -> LMResponse:
        """Make one provider call. Return token counts in ``usage``; cost is added later.

        Raises:
            LMError: HTTP and transport failures, translated with ``self._wire``
                (:class:`~dspex.programs.lm._http.HTTPBoundary`).
        """

    def dump_state(self) -> dict[str, Any]:
        """Provider, model, endpoint and default parameters as JSON-ready data (no secrets)."""
        return {
            "provider": self.provider,
            "model": self.model,
            "base_url": self.base_url,
            "params": {
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "stop": list(self.stop) if self.stop is not None else None,
                **self.params,
            },
        }

    async def aclose(self) -> None:
        """Release connections (if the HTTP client is ours) and wake queued callers.

        The client stays usable: a later call opens a new connection pool.
        """
        if self._limiter is not None:
            self._limiter.close()
        if self._owns_http and self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, "
            f"temperature={self.temperature!r}, max_tokens={self.max_tokens!r})"
        )

    # -- the pipeline --------------------------------------------------------------

    async def _complete(
        self, request: LMRequest, *, use_cache: bool, attempts: _Attempts
    ) -> LMResponse:
        started = time.perf_counter()
        key = None
        if use_cache and self._cache is not None and is_cacheable(request):
            key = request.cache_key()
            hit = await self._cache.get(key)
            if hit is not None:
                usage = TokenUsage(cached_calls=1)
                self._usage += usage
                return hit.model_copy(
                    update={
                        "cached": True,
                        "usage": usage,
                        "latency_s": time.perf_counter() - started,
                    }
                )
        raw = await self._retrier.run(lambda attempt: self._attempt(request, attempt, attempts))
        usage = TokenUsage.model_construct(  # counts from a validated TokenUsage
            prompt_tokens=raw.usage.prompt_tokens,
            completion_tokens=raw.usage.completion_tokens,
            cost_usd=self._pricing.cost(
                self.model,
                prompt_tokens=raw.usage.prompt_tokens,
                completion_tokens=raw.usage.completion_tokens,
            ),
            calls=1,
        )
        self._usage += usage
        response = raw.model_copy(
            update={"usage": usage, "cached": False, "latency_s": time.perf_counter() - started}
        )
        if key is not None and self._cache is not None:
            await self._cache.put(key, response)
        return response

    async def _attempt(self, request: LMRequest, attempt: int, attempts: _Attempts) -> LMResponse:
        attempts.retries = attempt - 1
        held = self._held_until - time.monotonic()
        if held > 0:
            await asyncio.sleep(held)
        try:
            if self._breaker is None:
                return await self._limited_send(request)
            return await self._breaker.call(lambda: self._limited_send(request))
        except LMRateLimitError as exc:
            if exc.retry_after:
                # Every call of this client waits it out, not just this one: the
                # others would only collect 429s of their own meanwhile.
                wait = min(exc.retry_after, self._retrier.policy.max_retry_after_s)
                self._held_until = max(self._held_until, time.monotonic() + wait)
            raise

    async def _limited_send(self, request: LMRequest) -> LMResponse:
        estimate = 0
        if self._limiter is not None:
            estimate = estimate_request_tokens(request, self.assumed_completion_tokens)
            await self._limiter.acquire(estimate)
        client, gate = self._transport()
        try:
            # The gate keeps httpx's pool queue short: its wait queue is costly
            # when thousands of calls pile up, an asyncio.Semaphore is not.
            async with gate:
                response = await self.send(request, client)
        except LMError as exc:
            if self._limiter is not None and exc.status is not None:
                # The provider answered with an error: it metered the request, not the tokens.
                self._limiter.refund(estimate)
            raise
        if self._limiter is not None:
            self._limiter.settle(estimate, response.usage.total_tokens)
        return response

    def _transport(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._gate is None or self._loop is not loop:
            # Pooled connections and semaphores belong to the loop that made
            # them; a client reused from a new loop (asyncio.run per call in
            # scripts) needs fresh ones.
            self._gate = asyncio.Semaphore(self._max_connections)
            if self._owns_http:
                if isinstance(self._http, PooledClient):
                    self._http.abandon()  # its loop is gone; nothing can be awaited
                self._http = None
            self._loop = loop
        if self._http is None:
            # httpx's API over aiohttp's pool: httpx's own pool costs
            # milliseconds of CPU per call at high concurrency (see _transport).
            self._http = PooledClient(max_connections=self._max_connections, timeout=self._timeout)
        return self._http, self._gate

    def _log_retry(self, error: LMError, attempt: int, delay: float) -> None:
        self.stats.retries += 1
        # INFO, not WARNING: a retry is the client doing its job, and a worker
        # under a flaky provider would log thousands (they are counted in
        # stats and in the worker's dspex_lm_retries_total).
        logger.info(
            "LM call %s:%s failed (%s, status %s); retry %d in %.2fs: %s",
            self.provider,
            self.model,
            type(error).__name__,
            error.status,
            attempt,
            delay,
            error,
        )
