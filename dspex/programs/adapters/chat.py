"""ChatAdapter: fields delimited by ``[[ ## name ## ]]`` markers.

The format DSPy users know: the system message states the instructions and
the fields, each input arrives under its marker, and the model answers with
one marker per output field, then ``[[ ## completed ## ]]``. Demos are prior
user/assistant turns. When a completion does not parse, the call is retried
once through :class:`~dspex.programs.adapters.json.JSONAdapter` (structured
output), whose usage is added to the result.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dspex.errors import AdapterParseError
from dspex.programs.adapters.base import (
    Adapter,
    AdapterResult,
    describe_fields,
    marker,
    render_sections,
    type_hint,
)
from dspex.programs.adapters.json import JSONAdapter
from dspex.programs.lm.base import LM
from dspex.programs.lm.types import Message
from dspex.programs.signature import Signature

__all__ = ["ChatAdapter"]

_COMPLETED = "completed"
_HEADER = re.compile(r"^\[\[ ## (\w+) ## \]\][ \t]*$", re.MULTILINE)


class ChatAdapter(Adapter):
    """Delimited-field prompts, with fallback to JSON on a parse failure.

    Args:
        fallback: The adapter tried when a completion does not parse; None to
            fail at once. Defaults to a JSONAdapter.

    Example:
        >>> adapter = ChatAdapter()
        >>> adapter.parse(make_signature("q -> a"), "[[ ## a ## ]]\\n42")  # doctest: +SKIP
        {'a': '42'}
    """

    name = "chat"

    def __init__(self, *, fallback: Adapter | str | None = "json") -> None:
        if fallback == "json":
            fallback = JSONAdapter()
        self.fallback: Adapter | None = fallback if isinstance(fallback, Adapter) else None

    def format(
        self,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        messages = [Message(role="system", content=_system_prompt(signature))]
        inputs_order = list(signature.input_fields)
        outputs_order = list(signature.output_fields)
        for demo in demos:
            if not all(name in demo for name in inputs_order):
                continue  # a demo without its inputs teaches nothing
            messages.append(Message(role="user", content=self._user_turn(signature, demo)))
            answer = render_sections(demo, outputs_order)
            messages.append(Message(role="assistant", content=f"{answer}\n\n{marker(_COMPLETED)}"))
        messages.append(Message(role="user", content=self._user_turn(signature, inputs)))
        return messages

    def _user_turn(self, signature: type[Signature], values: Mapping[str, Any]) -> str:
        sections = render_sections(values, list(signature.input_fields))
        order = ", ".join(f"`{marker(n)}`" for n in signature.output_fields)
        return f"{sections}\n\nRespond with the output fields {order}, then `{marker(_COMPLETED)}`."

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        sections: dict[str, str] = {}
        headers = list(_HEADER.finditer(completion))
        for index, header in enumerate(headers):
            end = headers[index + 1].start() if index + 1 < len(headers) else len(completion)
            name = header.group(1)
            if name not in sections:  # the first occurrence wins
                sections[name] = completion[header.end() : end].strip()
        return self.typed_outputs(
            signature,
            sections,
            completion,
            missing="completion (expected a `[[ ## {name} ## ]]` line)",
        )

    async def acall(
        self,
        lm: LM,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
        lm_kwargs: Mapping[str, Any],
    ) -> AdapterResult:
        response = await self.request(lm, signature, demos, inputs, lm_kwargs)
        try:
            outputs = self.parse_response(signature, response)
        except AdapterParseError:
            if self.fallback is None:
                raise
            retry = await self.fallback.acall(lm, signature, demos, inputs, lm_kwargs)
            return AdapterResult(
                outputs=retry.outputs,
                usage=response.usage + retry.usage,
                responses=(response, *retry.responses),
            )
        return AdapterResult(outputs=outputs, usage=response.usage, responses=(response,))


@functools.lru_cache(maxsize=1024)  # a signature is immutable
def _system_prompt(signature: type[Signature]) -> str:
    skeleton = []
    for name, spec in signature.output_fields.items():
        hint = type_hint(spec)
        skeleton.append(f"{marker(name)}\n{{{name}}}" + (f"  ({hint})" if hint else ""))
    skeleton.append(marker(_COMPLETED))
    return "\n\n".join(
        [
            signature.instructions,
            "Input fields:\n" + describe_fields(signature.input_fields),
            "Output fields:\n" + describe_fields(signature.output_fields),
            "Reply in exactly this format, replacing each {placeholder}:\n\n"
            + "\n\n".join(skeleton),
        ]
    )
