"""``AnthropicChat``: Anthropic's Messages API (``POST /v1/messages``).

Differences from the OpenAI format that matter here:

* System messages are not turns: they are joined into the ``system`` field.
* ``max_tokens`` is required, so the client always sends one (default 1024).
* There is no ``n``: ``n > 1`` makes ``n`` concurrent calls and merges them.
* There is no schema-enforcing JSON mode in this API. A :class:`ResponseFormat`
  becomes an instruction appended to the system prompt: the JSON schema and
  "answer with one JSON object only". Adapters must still validate the output.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Unpack

import httpx

from dspex.errors import LMError
from dspex.programs.lm._http import json_body, token_count
from dspex.programs.lm._transport import HTTPAnswer
from dspex.programs.lm.base import LM, LMOptions
from dspex.programs.lm.types import LMRequest, LMResponse, ResponseFormat, TokenUsage

__all__ = ["AnthropicChat"]

DEFAULT_MAX_TOKENS = 1024
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"


def json_instruction(fmt: ResponseFormat) -> str:
    """The system-prompt text that asks for JSON matching ``fmt``'s schema."""
    schema = json.dumps(fmt.json_schema, separators=(",", ":"), sort_keys=True)
    return (
        "Answer with a single JSON object that conforms to this JSON schema, "
        "and nothing else: no prose, no code fences.\n"
        f"JSON schema: {schema}"
    )


class AnthropicChat(LM):
    """Client for Anthropic's Messages API.

    Args:
        model: Model name, e.g. ``"claude-3-5-haiku-latest"``.
        anthropic_version: Value of the ``anthropic-version`` header.
        **options: Everything :class:`~dspex.programs.lm.base.LM` takes;
            ``base_url`` defaults to ``https://api.anthropic.com``, the key to
            ``$ANTHROPIC_API_KEY`` and ``max_tokens`` to 1024.

    Example:
        >>> lm = AnthropicChat(model="claude-3-5-haiku-latest", api_key="sk-ant-...")
        >>> lm.dump_state()["params"]["max_tokens"]
        1024
    """

    provider = "anthropic"
    default_base_url = "https://api.anthropic.com"
    default_api_key_env = "ANTHROPIC_API_KEY"

    def __init__(
        self,
        *,
        model: str,
        anthropic_version: str = DEFAULT_ANTHROPIC_VERSION,
        **options: Unpack[LMOptions],
    ) -> None:
        if options.get("max_tokens") is None:
            options["max_tokens"] = DEFAULT_MAX_TOKENS
        super().__init__(model=model, **options)
        self.anthropic_version = anthropic_version

    def dump_state(self) -> dict[str, Any]:
        state = super().dump_state()
        state["anthropic_version"] = self.anthropic_version
        return state

    async def send(self, request: LMRequest, client: httpx.AsyncClient) -> LMResponse:
        if request.n == 1:
            return await self._call(request, client)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._call(request, client)) for _ in range(request.n)]
        except* LMError as failures:
            # One failure cancels the siblings; report it as a plain LM error.
            raise failures.exceptions[0] from None
        parts = [task.result() for task in tasks]
        return parts[0].model_copy(
            update={
                "choices": tuple(part.text for part in parts),
                "usage": TokenUsage(
                    prompt_tokens=sum(part.usage.prompt_tokens for part in parts),
                    completion_tokens=sum(part.usage.completion_tokens for part in parts),
                ),
            }
        )

    async def _call(self, request: LMRequest, client: httpx.AsyncClient) -> LMResponse:
        headers = {"anthropic-version": self.anthropic_version}
        secret = self._wire.secret()
        if secret:
            headers["x-api-key"] = secret
        response = await self._wire.post(
            client, f"{self.base_url}/v1/messages", json_body=self._body(request), headers=headers
        )
        if not response.is_success:
            raise self._wire.status_error(response, _error_detail(response))
        return self._parse(request, response)

    def _body(self, request: LMRequest) -> dict[str, Any]:
        system = [message.content for message in request.messages if message.role == "system"]
        if request.response_format is not None:
            system.append(json_instruction(request.response_format))
        body: dict[str, Any] = dict(request.extra)
        body["model"] = request.model
        body["max_tokens"] = (
            request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS
        )
        body["messages"] = [
            {"role": message.role, "content": message.content}
            for message in request.messages
            if message.role != "system"
        ]
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        return body

    def _parse(self, request: LMRequest, response: HTTPAnswer) -> LMResponse:
        body = self._wire.json_object(response)
        blocks = body.get("content")
        if not isinstance(blocks, list):
            raise self._wire.response_error("no content in the answer", response)
        text = "".join(
            block["text"]
            for block in blocks
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        stop_reason = body.get("stop_reason")
        if not text.strip():
            raise self._wire.response_error(
                f"empty completion (stop_reason={stop_reason})", response
            )
        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        # Prompt-cache reads and writes are prompt tokens too, reported apart.
        prompt_tokens = sum(
            token_count(usage.get(name))
            for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        return LMResponse(
            text=text,
            choices=(text,),
            finish_reason=stop_reason if isinstance(stop_reason, str) else None,
            provider=self.provider,
            model=request.model,
            usage=TokenUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=token_count(usage.get("output_tokens")),
            ),
        )


def _error_detail(response: HTTPAnswer) -> str:
    """``error.message`` of an Anthropic error body, with its type (or the raw text)."""
    body = json_body(response)
    if body is None:
        return response.text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return f"{kind}: {error['message']}" if isinstance(kind, str) else str(error["message"])
    return response.text
