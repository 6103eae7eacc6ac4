"""``OpenAIChat``: any server speaking OpenAI's ``/chat/completions``.

OpenAI, vLLM, llama.cpp's and llama-cpp-python's servers, Ollama, LiteLLM,
OpenRouter, ... They agree on the chat format but not on structured output,
so :class:`ResponseFormat` is sent in one of three forms (``json_mode``):

``json_schema``
    OpenAI's ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``.
``json_object_schema``
    ``{"type": "json_object", "schema": {...}}``: what llama-cpp-python accepts,
    and enforces by grammar-constrained decoding. It answers the first form
    with HTTP 500 and a validation error.
``json_object``
    ``{"type": "json_object"}`` alone: valid JSON, shape not enforced (describe
    the schema in the prompt).

``auto`` tries them in that order until the endpoint stops rejecting the
``response_format`` and remembers the winner for the life of the client. The
detection runs once even under concurrency: calls with a response format wait
for the first one to find out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Literal, Unpack

import httpx

from dspex.programs.lm._http import json_body, token_count
from dspex.programs.lm._transport import HTTPAnswer
from dspex.programs.lm.base import LM, LMOptions
from dspex.programs.lm.types import LMRequest, LMResponse, ResponseFormat, TokenUsage

__all__ = ["JsonMode", "OpenAIChat"]

logger = logging.getLogger("dspex.programs.lm")

JsonMode = Literal["auto", "json_schema", "json_object_schema", "json_object"]
ConcreteJsonMode = Literal["json_schema", "json_object_schema", "json_object"]

_AUTO_ORDER: tuple[ConcreteJsonMode, ...] = ("json_schema", "json_object_schema", "json_object")
# Statuses and wording with which servers refuse a response_format they do not support.
_REJECTION_STATUSES = frozenset({400, 422, 500})
_REJECTION_WORDS = re.compile(r"response_format|json_schema|validation|schema", re.IGNORECASE)


class _FormatRejected(Exception):
    """The endpoint refused this form of response_format (internal to detection)."""


class OpenAIChat(LM):
    """Client for OpenAI-compatible chat completion servers.

    Args:
        model: Model name as the server knows it.
        json_mode: How a :class:`ResponseFormat` is sent (see the module docs).
        strict_json_schema: ``strict`` flag of the ``json_schema`` form. OpenAI's
            strict mode demands every property be required and
            ``additionalProperties: false``; off by default so ordinary schemas pass.
        **options: Everything :class:`~dspex.programs.lm.base.LM` takes;
            ``base_url`` defaults to ``https://api.openai.com/v1`` and the key
            to ``$OPENAI_API_KEY``. No key means no ``Authorization`` header.

    Example:
        >>> import asyncio
        >>> from dspex.programs.lm import Message, OpenAIChat
        >>> async def ask(url: str) -> str:
        ...     async with OpenAIChat(model="smollm2-135m-instruct", base_url=url) as lm:
        ...         response = await lm.acomplete([Message(role="user", content="Hi!")])
        ...         return response.text
    """

    provider = "openai"
    default_base_url = "https://api.openai.com/v1"
    default_api_key_env = "OPENAI_API_KEY"

    def __init__(
        self,
        *,
        model: str,
        json_mode: JsonMode = "auto",
        strict_json_schema: bool = False,
        **options: Unpack[LMOptions],
    ) -> None:
        super().__init__(model=model, **options)
        self.json_mode: JsonMode = json_mode
        self.strict_json_schema = strict_json_schema
        self._detected_mode: ConcreteJsonMode | None = None if json_mode == "auto" else json_mode
        self._detect_lock = asyncio.Lock()

    @property
    def detected_json_mode(self) -> ConcreteJsonMode | None:
        """The form in use for response formats (None while ``auto`` has not detected yet)."""
        return self._detected_mode

    def dump_state(self) -> dict[str, Any]:
        state = super().dump_state()
        state["json_mode"] = self.json_mode
        state["strict_json_schema"] = self.strict_json_schema
        return state

    async def send(self, request: LMRequest, client: httpx.AsyncClient) -> LMResponse:
        if request.response_format is None:
            return await self._call(request, client, None)
        if self._detected_mode is not None:
            return await self._call(request, client, self._detected_mode)
        async with self._detect_lock:
            # Another call may have finished detecting while this one waited;
            # then it makes its call outside the lock, or every call that queued
            # behind the detection would wait for all those before it.
            known = self.detected_json_mode
            if known is None:
                return await self._detect(request, client)
        return await self._call(request, client, known)

    async def _detect(self, request: LMRequest, client: httpx.AsyncClient) -> LMResponse:
        *candidates, last_resort = _AUTO_ORDER
        for mode in candidates:
            try:
                response = await self._call(request, client, mode, probing=True)
            except _FormatRejected:
                logger.info(
                    "%s at %s rejects response_format %s; trying the next form",
                    self.model,
                    self.base_url,
                    mode,
                )
                continue
            return self._remember(mode, response)
        # Plain JSON mode is the floor: whatever it fails with is the caller's error.
        return self._remember(last_resort, await self._call(request, client, last_resort))

    def _remember(self, mode: ConcreteJsonMode, response: LMResponse) -> LMResponse:
        self._detected_mode = mode
        logger.info("%s at %s: structured output uses %s", self.model, self.base_url, mode)
        return response

    async def _call(
        self,
        request: LMRequest,
        client: httpx.AsyncClient,
        mode: ConcreteJsonMode | None,
        *,
        probing: bool = False,
    ) -> LMResponse:
        headers = {}
        secret = self._wire.secret()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        response = await self._wire.post(
            client,
            f"{self.base_url}/chat/completions",
            json_body=self._body(request, mode),
            headers=headers,
        )
        if not response.is_success:
            error = self._wire.status_error(response, _error_detail(response))
            if (
                probing
                and response.status_code in _REJECTION_STATUSES
                and _REJECTION_WORDS.search(response.text)
            ):
                raise _FormatRejected from error
            raise error
        return self._parse(request, response)

    def _body(self, request: LMRequest, mode: ConcreteJsonMode | None) -> dict[str, Any]:
        body: dict[str, Any] = dict(request.extra)
        body["model"] = request.model
        body["messages"] = [
            {"role": message.role, "content": message.content} for message in request.messages
        ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.n != 1:
            body["n"] = request.n
        if request.response_format is not None and mode is not None:
            body["response_format"] = self._response_format(request.response_format, mode)
        return body

    def _response_format(self, fmt: ResponseFormat, mode: ConcreteJsonMode) -> dict[str, Any]:
        if mode == "json_schema":
            return {
                "type": "json_schema",
                "json_schema": {
                    "name": fmt.name,
                    "schema": fmt.json_schema,
                    "strict": self.strict_json_schema,
                },
            }
        if mode == "json_object_schema":
            return {"type": "json_object", "schema": fmt.json_schema}
        return {"type": "json_object"}

    def _parse(self, request: LMRequest, response: HTTPAnswer) -> LMResponse:
        body = self._wire.json_object(response)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self._wire.response_error("no choices in the answer", response)
        texts: list[str] = []
        for index, choice in enumerate(choices):
            message = choice.get("message") if isinstance(choice, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str) or not content.strip():
                reason = choice.get("finish_reason") if isinstance(choice, dict) else None
                raise self._wire.response_error(
                    f"choice {index} is an empty completion (finish_reason={reason})", response
                )
            texts.append(content)
        first = choices[0]
        finish_reason = first.get("finish_reason") if isinstance(first, dict) else None
        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return LMResponse(
            text=texts[0],
            choices=tuple(texts),
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            provider=self.provider,
            model=request.model,
            usage=TokenUsage(
                prompt_tokens=token_count(usage.get("prompt_tokens")),
                completion_tokens=token_count(usage.get("completion_tokens")),
            ),
        )


def _error_detail(response: HTTPAnswer) -> str:
    """The human part of an OpenAI-style error body (or the raw text)."""
    body = json_body(response)
    if body is None:
        return response.text
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("detail", "message"):
            if key in body:
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)
    return response.text
