"""An LM request's cache key: equal for equal requests, different for any difference."""

from __future__ import annotations

from typing import Any

from dspex.programs.lm.types import LMRequest, Message, ResponseFormat


def request(**changes: Any) -> LMRequest:
    fields: dict[str, Any] = {
        "provider": "openai",
        "endpoint": "http://127.0.0.1:8080/v1",
        "model": "m",
        "messages": (Message(role="user", content="Hi"),),
        "temperature": 0.0,
        "extra": {"seed": 1, "top_p": 0.9},
    }
    return LMRequest(**{**fields, **changes})


def test_the_order_parameters_were_given_in_does_not_change_the_key() -> None:
    assert request().cache_key() == request(extra={"top_p": 0.9, "seed": 1}).cache_key()


def test_every_field_is_part_of_the_key() -> None:
    variants = [
        request(provider="anthropic"),
        request(endpoint="http://127.0.0.1:8081/v1"),
        request(model="m2"),
        request(messages=(Message(role="user", content="Hi!"),)),
        request(messages=(Message(role="system", content="Hi"),)),
        request(temperature=0.5),
        request(max_tokens=10),
        request(stop=("\n",)),
        request(n=2),
        request(response_format=ResponseFormat(json_schema={"type": "object"})),
        request(extra={"seed": 2, "top_p": 0.9}),
        request(rollout_id="r1"),
    ]
    keys = {variant.cache_key() for variant in variants}
    assert len(keys) == len(variants)
    assert request().cache_key() not in keys
