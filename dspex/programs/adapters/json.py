"""JSONAdapter: the outputs as one JSON object, with structured output when available.

The LM is asked for a JSON object whose schema holds every output field (as a
:class:`~dspex.programs.lm.types.ResponseFormat`); each client sends it in the
form its endpoint enforces. On llama-cpp-python's server that constrains
decoding, so even a 135M-parameter model returns valid, typed fields and an
``enum`` yields only allowed labels.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dspex.errors import AdapterParseError
from dspex.programs.adapters.base import (
    Adapter,
    describe_fields,
    json_default,
    output_schema,
    render_sections,
)
from dspex.programs.lm.types import Message, ResponseFormat
from dspex.programs.signature import Signature

__all__ = ["JSONAdapter"]

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


class JSONAdapter(Adapter):
    """Ask for a JSON object of the output fields; parse and type-check it.

    Example:
        >>> JSONAdapter().parse(make_signature("q -> n: int"), '{"n": "3"}')  # doctest: +SKIP
        {'n': 3}
    """

    name = "json"

    def format(
        self,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        messages = [_system_message(signature)]
        for demo in demos:
            if not all(n in demo for n in signature.input_fields):
                continue
            answer = {n: demo[n] for n in signature.output_fields if n in demo}
            messages.append(Message(role="user", content=self._user_turn(signature, demo)))
            messages.append(
                Message(role="assistant", content=json.dumps(answer, default=json_default))
            )
        messages.append(Message(role="user", content=self._user_turn(signature, inputs)))
        return messages

    def _user_turn(self, signature: type[Signature], values: Mapping[str, Any]) -> str:
        sections = render_sections(values, list(signature.input_fields))
        return f"{sections}\n\nRespond with the JSON object."

    def response_format(self, signature: type[Signature]) -> ResponseFormat:
        return _response_format(signature)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        data = self._load_object(signature, completion)
        keys = str(sorted(data)).replace("{", "{{").replace("}", "}}")  # kept by .format
        return self.typed_outputs(
            signature, data, completion, missing=f"JSON object (keys: {keys})"
        )

    def _load_object(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        text = _FENCE.sub("", completion.strip())
        problem = "no JSON object found"
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # maybe prose around an object; look for the braces below
        else:
            if isinstance(whole, dict):
                return whole
            problem = f"expected a JSON object, got {type(whole).__name__}"
        start, end = text.find("{"), text.rfind("}")
        if whole is None and start != -1 and end > start:
            try:
                data = json.loads(text[start : end + 1])
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg} at char {exc.pos})"
            else:
                if isinstance(data, dict):
                    return data
                problem = f"expected a JSON object, got {type(data).__name__}"
        raise AdapterParseError(
            f"json adapter: completion for {signature.signature_name}: {problem}",
            adapter=self.name,
            completion=completion,
        )


# A signature is immutable (its class refuses new attributes), so what depends on
# it alone is built once per signature, not at every call.


@functools.lru_cache(maxsize=1024)
def _system_message(signature: type[Signature]) -> Message:
    keys = ", ".join(f'"{name}"' for name in signature.output_fields)
    system = "\n\n".join(
        [
            signature.instructions,
            "Input fields:\n" + describe_fields(signature.input_fields),
            "Output fields:\n" + describe_fields(signature.output_fields),
            f"Answer with a single JSON object with the keys {keys} and nothing else.",
        ]
    )
    return Message(role="system", content=system)


@functools.lru_cache(maxsize=1024)
def _response_format(signature: type[Signature]) -> ResponseFormat:
    return ResponseFormat(name=signature.signature_name, json_schema=output_schema(signature))
