"""OpenAIChat against the real local model (llama-cpp-python serving SmolLM2-135M).

The model is tiny and often wrong: these tests check types and formats, never
whether an answer is correct.
"""

from __future__ import annotations

import json

import pytest

from dspex._local.lm import DEFAULT_MODEL_ALIAS
from dspex.programs.lm import Message, OpenAIChat, ResponseFormat

pytestmark = pytest.mark.lm

LABELS = ["positive", "negative", "neutral"]
SENTIMENT = ResponseFormat(
    name="sentiment",
    json_schema={
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": LABELS}},
        "required": ["sentiment"],
    },
)


def client(url: str) -> OpenAIChat:
    # A 135M model on CPU answers in seconds; leave room on a busy machine.
    return OpenAIChat(model=DEFAULT_MODEL_ALIAS, base_url=url, timeout_s=120, cache=None)


async def test_completion_is_non_empty_with_usage(local_lm_url: str) -> None:
    async with client(local_lm_url) as lm:
        response = await lm.acomplete(
            [Message(role="user", content="Say hello in one short sentence.")], max_tokens=24
        )
    assert response.text.strip()
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0
    assert response.usage.calls == 1
    assert lm.usage.total_tokens == response.usage.total_tokens


async def test_auto_json_mode_yields_schema_valid_json(local_lm_url: str) -> None:
    messages = [
        Message(role="system", content="Classify the sentiment of the user's text. Reply in JSON."),
        Message(role="user", content="I really enjoyed this film, it was wonderful."),
    ]
    async with client(local_lm_url) as lm:
        first = await lm.acomplete(messages, response_format=SENTIMENT, max_tokens=32)
        # llama-cpp-python rejects OpenAI's json_schema form; the client must
        # have found the form it accepts (and enforces by grammar) and kept it.
        assert lm.detected_json_mode == "json_object_schema"
        second = await lm.acomplete(
            [messages[0], Message(role="user", content="Terrible, boring, a waste of time.")],
            response_format=SENTIMENT,
            max_tokens=32,
        )
    for response in (first, second):
        parsed = json.loads(response.text)
        assert isinstance(parsed, dict)
        assert parsed["sentiment"] in LABELS
