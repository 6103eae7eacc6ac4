"""Adapters: signature + demos + inputs → chat messages; completion → typed fields.

An adapter owns the prompt format. :meth:`Adapter.acall` is the whole round
trip: format, ask the LM, parse every returned choice into the signature's
output fields (coerced to their Python types). A completion that does not
parse raises :class:`~dspex.errors.AdapterParseError` with the raw text and
the field at fault; it is never turned into a silent ``None``.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from dspex.errors import AdapterParseError
from dspex.programs.lm.base import LM
from dspex.programs.lm.types import LMResponse, Message, ResponseFormat, TokenUsage
from dspex.programs.signature import FieldSpec, Signature

__all__ = ["Adapter", "AdapterResult", "format_value", "json_default"]


@dataclass(frozen=True)
class AdapterResult:
    """Parsed outputs of every choice, plus the LM accounting of the round trip."""

    outputs: list[dict[str, Any]]
    usage: TokenUsage
    responses: tuple[LMResponse, ...]


def format_value(value: Any) -> str:
    """Render an input or demo value for a prompt."""
    if isinstance(value, str):
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return "\n".join(f"[{i}] {item}" for i, item in enumerate(value, start=1))
    try:
        return json.dumps(value, ensure_ascii=False, default=json_default)
    except (TypeError, ValueError):
        return str(value)


def marker(name: str) -> str:
    """The line that opens a field's section: ``[[ ## name ## ]]``."""
    return f"[[ ## {name} ## ]]"


def render_sections(values: Mapping[str, Any], names: Sequence[str]) -> str:
    """The given fields' values, each under its marker, in ``names`` order."""
    return "\n\n".join(f"{marker(n)}\n{format_value(values[n])}" for n in names if n in values)


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for pydantic models and enums."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(type(value).__name__)


def type_hint(spec: FieldSpec) -> str:
    """A short description of what a field's value must look like."""
    schema = spec.json_schema()
    if spec.annotation is str:
        return ""
    if "enum" in schema:
        return "must be exactly one of: " + ", ".join(json.dumps(v) for v in schema["enum"])
    return "must be valid JSON matching the schema " + json.dumps(schema, separators=(",", ":"))


def describe_fields(fields: Mapping[str, FieldSpec]) -> str:
    lines = []
    for index, (name, spec) in enumerate(fields.items(), start=1):
        type_name = _type_name(spec)
        line = f"{index}. `{name}` ({type_name})"
        if spec.description:
            line += f": {spec.description}"
        lines.append(line)
    return "\n".join(lines)


def _type_name(spec: FieldSpec) -> str:
    annotation = spec.annotation
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def output_schema(signature: type[Signature]) -> dict[str, Any]:
    """JSON Schema of an object holding every output field."""
    return {
        "type": "object",
        "properties": {name: spec.json_schema() for name, spec in signature.output_fields.items()},
        "required": list(signature.output_fields),
        "additionalProperties": False,
    }


class Adapter(ABC):
    """Turns a signature call into an LM request and the completion back into fields."""

    #: Short name used in errors and telemetry.
    name: ClassVar[str]

    @abstractmethod
    def format(
        self,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        """The chat messages for one call."""

    @abstractmethod
    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        """The output fields of one completion, coerced to their types.

        Raises:
            AdapterParseError: A field is missing or its value does not fit its type.
        """

    def response_format(self, signature: type[Signature]) -> ResponseFormat | None:
        """Structured-output request for the LM, if this adapter uses one."""
        return None

    async def acall(
        self,
        lm: LM,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
        lm_kwargs: Mapping[str, Any],
    ) -> AdapterResult:
        """Format, call the LM, and parse every choice.

        Raises:
            AdapterParseError: A choice could not be parsed.
            LMError: The LM call failed (after the client's retries).
        """
        response = await self.request(lm, signature, demos, inputs, lm_kwargs)
        outputs = self.parse_response(signature, response)
        return AdapterResult(outputs=outputs, usage=response.usage, responses=(response,))

    async def request(
        self,
        lm: LM,
        signature: type[Signature],
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
        lm_kwargs: Mapping[str, Any],
    ) -> LMResponse:
        """Format the call and send it to the LM."""
        messages = self.format(signature, demos, inputs)
        return await lm.acomplete(
            messages, response_format=self.response_format(signature), **lm_kwargs
        )

    def parse_response(
        self, signature: type[Signature], response: LMResponse
    ) -> list[dict[str, Any]]:
        """The parsed output fields of every choice of ``response``."""
        return [self._parse_choice(signature, text, response) for text in response.choices]

    def _parse_choice(
        self, signature: type[Signature], text: str, response: LMResponse
    ) -> dict[str, Any]:
        try:
            return self.parse(signature, text)
        except AdapterParseError as exc:
            if response.finish_reason == "length":
                raise AdapterParseError(
                    f"{exc} (the completion was cut off at max_tokens; raise max_tokens)",
                    adapter=exc.adapter,
                    completion=exc.completion,
                    field=exc.field,
                ) from exc
            raise

    def typed_outputs(
        self,
        signature: type[Signature],
        raw: Mapping[str, Any],
        completion: str,
        *,
        missing: str,
    ) -> dict[str, Any]:
        """Every output field from ``raw``, coerced; ``missing`` says what was expected.

        Raises:
            AdapterParseError: A field is absent from ``raw`` or does not fit its type.
        """
        outputs: dict[str, Any] = {}
        for name in signature.output_fields:
            if name not in raw:
                raise AdapterParseError(
                    f"{self.name} adapter: output field `{name}` of {signature.signature_name} "
                    f"is missing from the {missing.format(name=name)}",
                    adapter=self.name,
                    completion=completion,
                    field=name,
                )
            outputs[name] = self.coerce_field(signature, name, raw[name], completion)
        return outputs

    def coerce_field(self, signature: type[Signature], name: str, raw: Any, completion: str) -> Any:
        """Coerce one raw value into its field's type, as an AdapterParseError on failure."""
        spec = signature.output_fields[name]
        try:
            return spec.coerce(raw)
        except (ValueError, TypeError) as exc:
            shown = raw if isinstance(raw, str) else json.dumps(raw, default=str)
            raise AdapterParseError(
                f"{self.name} adapter: output field `{name}` of {signature.signature_name}: "
                f"{shown[:200]!r} is not a valid {_type_name(spec)} ({exc})",
                adapter=self.name,
                completion=completion,
                field=name,
            ) from exc
