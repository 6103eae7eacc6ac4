"""Signature fields: :class:`FieldSpec` and the ``InputField`` / ``OutputField`` markers.

A :class:`FieldSpec` is one typed field of a signature; it validates caller
inputs, coerces LM outputs and round-trips through JSON. ``InputField()`` and
``OutputField()`` are the values that declare fields in a class-form signature
(:mod:`dspex.programs.signature` turns them into FieldSpecs).
"""

from __future__ import annotations

import copy
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from dspex.errors import InputError, SignatureError
from dspex.programs import _typespec
from dspex.programs._typespec import CoercionError, TypeExpr

__all__ = ["FieldKind", "FieldMarker", "FieldSpec", "InputField", "OutputField"]

FieldKind = Literal["input", "output"]


def _default_prefix(name: str) -> str:
    # "context_docs" -> "Context Docs:", "questionText" -> "Question Text:",
    # "HTMLDoc" -> "HTML Doc:"
    words = re.sub(r"([a-z0-9])([A-Z])|([A-Z]+)([A-Z][a-z])", r"\1\3 \2\4", name)
    parts = [part for part in words.replace("_", " ").split(" ") if part]
    return " ".join(part if part.isupper() else part[:1].upper() + part[1:] for part in parts) + ":"


@dataclass(frozen=True)
class FieldSpec:
    """One field of a signature: its name, kind, Python type, description and prefix.

    Args:
        name: A Python identifier not starting with ``_``.
        kind: ``"input"`` or ``"output"``.
        annotation: The field's type (str, int, float, bool, list, dict, tuple,
            Literal, Enum, pydantic model, Optional, Any, nested).
        description: Shown to the LM next to the field.
        prefix: The field's label in prompts; derived from the name when empty.

    Raises:
        SignatureError: The name, kind or type is not acceptable.

    Example:
        >>> spec = FieldSpec("confidence", "output", float)
        >>> spec.prefix, spec.coerce(" 0.8 ")
        ('Confidence:', 0.8)
    """

    name: str
    kind: FieldKind
    annotation: Any = str
    description: str = ""
    prefix: str = ""
    _expr: TypeExpr = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise SignatureError(f"field name {self.name!r} is not a Python identifier")
        if self.name.startswith("_") or keyword.iskeyword(self.name):
            raise SignatureError(
                f"field name {self.name!r} must not start with '_' or be a keyword"
            )
        if self.kind not in ("input", "output"):
            raise SignatureError(f"field {self.name!r} has kind {self.kind!r}, not input/output")
        try:
            expr = _typespec.type_to_expr(self.annotation)
        except SignatureError as exc:
            raise SignatureError(f"field `{self.name}`: {exc}") from None
        object.__setattr__(self, "_expr", expr)
        if not self.prefix:
            object.__setattr__(self, "prefix", _default_prefix(self.name))

    def __getstate__(self) -> dict[str, Any]:
        # The cached TypeAdapter and schema are rebuilt on demand, not copied or pickled.
        return {k: v for k, v in self.__dict__.items() if k not in ("_adapter", "_schema")}

    @property
    def type_expr(self) -> TypeExpr:
        """The field's type as a JSON-friendly type expression (a fresh copy)."""
        return copy.deepcopy(self._expr)

    @property
    def type_string(self) -> str:
        """The type in string-signature syntax, e.g. ``"list[str]"`` or ``"int | None"``."""
        return _typespec.expr_to_string(self._expr)

    @cached_property
    def _adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.annotation)

    @cached_property
    def _schema(self) -> dict[str, Any]:
        return self._adapter.json_schema()

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of the field's type (computed once, returned as a copy)."""
        return copy.deepcopy(self._schema)

    def coerce(self, value: Any) -> Any:
        """Leniently turn an LM-produced value into the field's type.

        Accepts JSON text for containers and models, ``"yes"``/``"true"`` for
        booleans, numbers in strings, and Literal or Enum labels with stray quotes,
        whitespace, case differences or a trailing full stop.

        Raises:
            CoercionError: The value cannot be read as the field's type; the message
                names the field and the expected type.
        """
        try:
            return self._adapter.validate_python(_typespec.loosen(self.annotation, value))
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise CoercionError(
                f"field `{self.name}` expects {self.type_string}; "
                f"cannot read {_short(value)}: {reason}",
                field=self.name,
                value=value,
            ) from exc

    def validate_input(self, value: Any) -> Any:
        """Check a caller-supplied value against the type and return it validated.

        Lax like pydantic (``"3"`` is accepted for int, dicts become models), but
        without the LM leniency of :meth:`coerce`: a list for a str field, text for
        a list field or a missing value for a non-optional field is rejected.

        Raises:
            InputError: The value does not fit the type; ``fields`` names this field.
        """
        if (
            self.annotation is str
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            value = str(value)
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise InputError(
                f"field `{self.name}` expects {self.type_string}, got {_short(value)}: {reason}",
                fields=[self.name],
            ) from exc

    def to_json(self) -> dict[str, Any]:
        """The field as JSON (see :meth:`Signature.to_json`)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "type": self.type_expr,
            "description": self.description,
            "prefix": self.prefix,
        }

    @classmethod
    def from_json(cls, data: Any, *, types: Mapping[str, Any] | None = None) -> FieldSpec:
        """Rebuild a field from :meth:`to_json` output.

        Raises:
            SignatureError: The data is malformed or its type cannot be rebuilt.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise SignatureError(f"malformed field JSON {data!r}")
        name = data["name"]
        try:
            annotation = _typespec.expr_to_type(data.get("type", {"type": "str"}), types=types)
        except SignatureError as exc:
            raise SignatureError(f"field `{name}`: {exc}") from None
        for key in ("description", "prefix"):
            if not isinstance(data.get(key, ""), str):
                raise SignatureError(f"field `{name}`: {key} must be a string")
        return cls(
            name,
            data.get("kind"),  # type: ignore[arg-type]  # checked in __post_init__
            annotation,
            data.get("description", ""),
            data.get("prefix", ""),
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class FieldMarker:
    """What ``InputField()`` / ``OutputField()`` return: a field waiting for its name and type."""

    kind: FieldKind
    desc: str
    prefix: str | None


def InputField(*, desc: str = "", prefix: str | None = None) -> Any:
    """Declare an input field in a class-form signature.

    Typed as ``Any`` so ``question: str = InputField()`` type-checks.

    Example:
        >>> class Echo(Signature):
        ...     text: str = InputField(desc="anything")
        ...     same: str = OutputField()
    """
    return FieldMarker("input", desc, prefix)


def OutputField(*, desc: str = "", prefix: str | None = None) -> Any:
    """Declare an output field in a class-form signature (see :func:`InputField`)."""
    return FieldMarker("output", desc, prefix)
