"""The HTTP boundary of a client: its credentials and the translation of failures.

Everything that touches the API key lives here, so it is easy to audit that
the key only ever reaches request headers: it is resolved into a
``pydantic.SecretStr`` (masked ``repr``), and every text that may carry a
provider's words (error bodies, transport messages) is redacted before it
goes into an exception or a log line. httpx errors are translated here, with
``raise ... from exc``.

Key order: the ``api_key`` argument, else the environment variable, else the
secret file. No key at all is valid (local servers need none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from pydantic_core import from_json, to_json

from dspex.errors import (
    ConfigurationError,
    LMAuthError,
    LMBadRequestError,
    LMConnectionError,
    LMError,
    LMRateLimitError,
    LMResponseError,
    LMServerError,
    LMTimeoutError,
)
from dspex.programs.lm._retry import parse_retry_after
from dspex.programs.lm._transport import HTTPAnswer, PooledClient

__all__ = ["HTTPBoundary", "reject_credential_params", "resolve_api_key"]

_MAX_DETAIL_CHARS = 300
try:
    _VERSION = version("dspex")
except PackageNotFoundError:  # run from a source tree that is not installed
    _VERSION = "0"
# Parameters that would smuggle credentials into requests, cache keys or saved state.
_CREDENTIAL_PARAMS = frozenset({"api_key", "authorization", "x-api-key", "headers"})


def reject_credential_params(params: Mapping[str, Any]) -> None:
    """Refuse provider parameters named like credentials (they would be cached and saved).

    Raises:
        ConfigurationError: Naming the offending parameters (never their values).
    """
    bad = sorted(name for name in params if name.lower() in _CREDENTIAL_PARAMS)
    if bad:
        raise ConfigurationError(
            f"parameters {bad} would put credentials into requests or saved state; "
            "pass api_key=/api_key_env=/api_key_file= or headers= to the client instead"
        )


def resolve_api_key(
    api_key: str | SecretStr | None, *, env_var: str, key_file: str | Path | None
) -> SecretStr | None:
    """The API key from the argument, the environment or a file, or None.

    Raises:
        ConfigurationError: ``key_file`` is needed but cannot be read (the
            message names the file, never its contents).

    Example:
        >>> resolve_api_key("sk-x", env_var="UNSET_VAR", key_file=None)
        SecretStr('**********')
    """
    if isinstance(api_key, SecretStr):
        return api_key if api_key.get_secret_value() else None
    if api_key:
        return SecretStr(api_key)
    from_env = os.environ.get(env_var, "").strip()
    if from_env:
        return SecretStr(from_env)
    if key_file is None:
        return None
    path = Path(key_file)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # Not chained: a UnicodeDecodeError carries the file's bytes, i.e. the key.
        raise ConfigurationError(
            f"cannot read the API key file {path}: {type(exc).__name__}"
        ) from None
    if not text:
        raise ConfigurationError(f"the API key file {path} is empty")
    return SecretStr(text)


class HTTPBoundary:
    """Posts JSON for one client and turns every failure into an :class:`LMError`.

    Args:
        provider: Provider kind for error fields.
        model: Model name for error fields.
        base_url: Endpoint root (for messages).
        api_key: The key, or None.
        timeout: Per-attempt httpx timeout.
        headers: Extra headers sent with every call.
    """

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        base_url: str,
        api_key: SecretStr | None,
        timeout: httpx.Timeout,
        headers: Mapping[str, str],
    ) -> None:
        self.provider = provider
        self.model = model
        self.base_url = base_url
        self.timeout = timeout
        self._api_key = api_key
        self._headers = dict(headers)
        for name, value in self._headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0") or ":" in name:
                # The name only: a header's value may be a credential.
                raise ConfigurationError(
                    f"header {name.splitlines()[0]!r} would break the HTTP request "
                    "(a line break, NUL or ':' in it)"
                )
        # What httpx's client would add, for the direct path that skips it.
        self._default_headers = {
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
            "user-agent": f"dspex/{_VERSION}",
            **self._headers,
        }

    def secret(self) -> str | None:
        """The key's value, for request headers only."""
        return None if self._api_key is None else self._api_key.get_secret_value()

    def redact(self, text: str) -> str:
        """``text`` made safe for messages and logs: one line, short, key removed."""
        secret = self.secret()
        if secret:
            text = text.replace(secret, "[redacted]")
        text = " ".join(text.split())
        return text if len(text) <= _MAX_DETAIL_CHARS else text[:_MAX_DETAIL_CHARS] + "..."

    async def post(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        json_body: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> HTTPAnswer:
        """POST JSON and read the answer, mapping transport failures to LM errors."""
        content = to_json(json_body)
        merged = {**self._default_headers, **headers} if headers else self._default_headers
        try:
            if isinstance(client, PooledClient):
                return await client.post_answer(url, content, merged, self.timeout)
            response = await client.post(url, content=content, headers=merged, timeout=self.timeout)
            return HTTPAnswer.from_httpx(response)
        except httpx.TimeoutException as exc:
            raise LMTimeoutError(
                f"{self.provider} {self.model}: no answer within the timeout "
                f"({type(exc).__name__})",
                provider=self.provider,
                model=self.model,
            ) from exc
        except httpx.TransportError as exc:
            raise LMConnectionError(
                f"{self.provider} {self.model}: cannot reach {self.base_url} "
                f"({type(exc).__name__}: {self.redact(str(exc))})",
                provider=self.provider,
                model=self.model,
            ) from exc

    def status_error(self, response: HTTPAnswer, detail: str) -> LMError:
        """The LM error for a non-2xx answer; ``detail`` is the provider's message."""
        status = response.status_code
        kind: type[LMError]
        if status == 429:
            kind = LMRateLimitError
        elif status in (401, 403):
            kind = LMAuthError
        elif status == 408:
            kind = LMTimeoutError
        elif 400 <= status < 500:
            kind = LMBadRequestError
        elif status >= 500:
            kind = LMServerError
        else:
            kind = LMResponseError
        return kind(
            f"{self.provider} {self.model}: HTTP {status}: {self.redact(detail) or '(no detail)'}",
            provider=self.provider,
            model=self.model,
            status=status,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    def response_error(self, problem: str, response: HTTPAnswer) -> LMResponseError:
        """The error for a 2xx answer that is not a usable completion."""
        return LMResponseError(
            f"{self.provider} {self.model}: unusable answer: {self.redact(problem)}",
            provider=self.provider,
            model=self.model,
            status=response.status_code,
        )

    def json_object(self, response: HTTPAnswer) -> dict[str, Any]:
        """The body of a 2xx answer as a JSON object, or LMResponseError."""
        try:
            body = from_json(response.content)
        except ValueError as exc:  # not JSON, or not UTF-8
            raise self.response_error(f"body is not JSON ({exc})", response) from exc
        if not isinstance(body, dict):
            raise self.response_error(f"body is a JSON {type(body).__name__}", response)
        return body


def token_count(value: Any) -> int:
    """A token count from a usage object; anything but a non-negative int is 0."""
    return value if isinstance(value, int) and value >= 0 else 0


def json_body(response: HTTPAnswer) -> Any | None:
    """The response body as JSON, or None when it is not JSON."""
    try:
        return from_json(response.content)
    except ValueError:  # not JSON, or not UTF-8
        return None
