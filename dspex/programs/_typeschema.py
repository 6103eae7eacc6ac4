"""Rebuilding the enums and pydantic models named by ``enum`` and ``model`` type expressions.

A class is reused when ``types`` or ``ref`` names one with the same name and shape;
``ref`` is only looked up among modules that are already imported (loading a saved
program must not import arbitrary code). Otherwise an enum is recreated from its
stored members and a model (with the enums and models it uses) from its JSON schema.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, PydanticUserError, create_model

from dspex.errors import SignatureError
from dspex.programs._typebase import ENUM_VALUE_TYPES, TypeExpr, expr_get, make_enum, subscript

__all__ = ["rebuild_enum", "rebuild_model"]

# The module of types rebuilt from an expression without a ``ref``: the type layer's
# public face. It ends up in the refs of re-saved signatures, so it must not change.
_FALLBACK_MODULE = "dspex.programs._typespec"


def _candidates(expr: TypeExpr, types: Mapping[str, Any]) -> list[Any]:
    found = [types.get(expr["name"])]
    ref = expr.get("ref")
    if isinstance(ref, str) and ":" in ref:
        module_name, _, qualname = ref.partition(":")
        target: Any = sys.modules.get(module_name)
        for part in qualname.split("."):
            target = getattr(target, part, None)
        found.append(target)
    return [item for item in found if isinstance(item, type)]


def _split_ref(expr: TypeExpr) -> tuple[str, str]:
    ref = expr.get("ref")
    if isinstance(ref, str) and ":" in ref:
        module_name, _, qualname = ref.partition(":")
        return module_name, qualname
    return _FALLBACK_MODULE, expr["name"]


def _members_of(cls: type[Enum]) -> dict[str, Any]:
    return {member.name: member.value for member in cls}


def rebuild_enum(expr: TypeExpr, types: Mapping[str, Any]) -> type[Enum]:
    name, members = expr_get(expr, "name", str), expr_get(expr, "members", dict)
    for cls in _candidates(expr, types):
        if issubclass(cls, Enum) and cls.__name__ == name and _members_of(cls) == members:
            found: type[Enum] = cls
            return found
    if not members or not all(isinstance(v, ENUM_VALUE_TYPES) for v in members.values()):
        raise SignatureError(f"cannot rebuild enum {name}: members must be JSON scalars")
    module_name, qualname = _split_ref(expr)
    try:
        rebuilt: type[Enum] = make_enum(name, members, module_name, qualname)
        return rebuilt
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"cannot rebuild enum {name}: {exc}") from exc


def rebuild_model(expr: TypeExpr, types: Mapping[str, Any]) -> type[BaseModel]:
    name, schema = expr_get(expr, "name", str), expr_get(expr, "schema", dict)
    for cls in _candidates(expr, types):
        if issubclass(cls, BaseModel) and cls.__name__ == name and _schema_of(cls) == schema:
            found: type[BaseModel] = cls
            return found
    module_name, qualname = _split_ref(expr)
    builder = _SchemaBuilder(name, schema.get("$defs", {}), module_name)
    try:
        model = builder.model(name, schema)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # A hand-edited or foreign schema can be wrong in more ways than are worth naming.
        raise builder.fail(f"malformed schema ({exc})") from exc
    model.__qualname__ = qualname
    return model


def _schema_of(cls: type[BaseModel]) -> dict[str, Any] | None:
    try:
        return cls.model_json_schema()
    except PydanticUserError:
        return None


# JSON schema keywords that map onto pydantic Field constraints; anything else
# that is not an annotation would be silently dropped, so it is refused.
_CONSTRAINTS = (
    ("minimum", "ge"),
    ("maximum", "le"),
    ("exclusiveMinimum", "gt"),
    ("exclusiveMaximum", "lt"),
    ("minLength", "min_length"),
    ("maxLength", "max_length"),
    ("minItems", "min_length"),
    ("maxItems", "max_length"),
    ("pattern", "pattern"),
    ("multipleOf", "multiple_of"),
)
_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})
_SCHEMA_SCALARS = (("string", str), ("integer", int), ("number", float), ("boolean", bool))


class _SchemaBuilder:
    """Recreates pydantic models (and the enums they use) from a JSON schema."""

    def __init__(self, root: str, defs: Any, module: str) -> None:
        if not isinstance(defs, dict):
            raise SignatureError(f"cannot rebuild model {root}: malformed $defs")
        self.root, self.defs, self.module = root, defs, module
        self.built: dict[str, Any] = {}
        self.building: set[str] = set()

    def fail(self, why: str) -> SignatureError:
        return SignatureError(f"cannot rebuild model {self.root} from its JSON schema: {why}")

    def model(self, name: str, schema: dict[str, Any]) -> type[BaseModel]:
        properties = schema.get("properties", {})
        if schema.get("type") != "object" or not isinstance(properties, dict):
            raise self.fail(f"{name} is not an object schema")
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {}
        for field_name, prop in properties.items():
            if not isinstance(prop, dict):
                raise self.fail(f"property {field_name!r} is not a schema")
            kwargs = {key: prop[key] for key in ("title", "description", "examples") if key in prop}
            if "default" in prop:
                kwargs["default"] = prop["default"]
            elif field_name not in required:
                kwargs["default"] = None
            fields[field_name] = (self.type_of(prop), Field(**kwargs))
        try:
            with warnings.catch_warnings():
                # The original model had these field names too and warned where it was defined.
                warnings.filterwarnings("ignore", "Field name .* shadows", UserWarning)
                return create_model(
                    name, __module__=self.module, __doc__=schema.get("description"), **fields
                )
        except (PydanticUserError, TypeError, ValueError) as exc:
            raise self.fail(str(exc)) from exc

    def type_of(self, schema: Any) -> Any:
        if not isinstance(schema, dict):
            raise self.fail(f"{schema!r} is not a schema")
        tp = self._bare_type(schema)
        constraints: dict[str, Any] = {}
        prefix_items = "prefixItems" in schema
        for word, argument in _CONSTRAINTS:
            if word in schema and not (prefix_items and word in ("minItems", "maxItems")):
                constraints[argument] = schema[word]
        if constraints:
            return Annotated[tp, Field(**constraints)]
        return tp

    def _bare_type(self, schema: dict[str, Any]) -> Any:
        known = _ANNOTATIONS | {kw for kw, _ in _CONSTRAINTS}
        known |= {"type", "items", "prefixItems", "additionalProperties", "$ref", "anyOf"}
        unknown = sorted(set(schema) - known - {"enum", "const", "properties", "required"})
        if unknown:
            raise self.fail(f"unsupported JSON schema keyword {unknown[0]!r}")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "anyOf" in schema:
            alternatives = [self.type_of(option) for option in schema["anyOf"]]
            return subscript(Union, tuple(alternatives))
        if "const" in schema:
            return subscript(Literal, schema["const"])
        if "enum" in schema:
            return subscript(Literal, tuple(schema["enum"]))
        kind = schema.get("type")
        for json_name, python_type in _SCHEMA_SCALARS:
            if kind == json_name:
                return python_type
        if kind == "null":
            return type(None)
        if kind == "array":
            if "prefixItems" in schema:
                return subscript(tuple, tuple(self.type_of(i) for i in schema["prefixItems"]))
            return subscript(list, self.type_of(schema.get("items", {})))
        if kind == "object":
            if "properties" in schema:
                return self.model(str(schema.get("title", "Object")), schema)
            values = schema.get("additionalProperties", True)
            return subscript(dict, (str, Any if values is True else self.type_of(values)))
        if kind is None:
            return Any
        raise self.fail(f"unsupported JSON schema type {kind!r}")

    def _ref(self, ref: Any) -> Any:
        name = str(ref).rsplit("/", 1)[-1]
        if name in self.built:
            return self.built[name]
        if not str(ref).startswith("#/$defs/") or not isinstance(self.defs.get(name), dict):
            raise self.fail(f"unresolvable reference {ref!r}")
        if name in self.building:
            raise self.fail(f"recursive model {name} is not supported")
        self.building.add(name)
        definition = self.defs[name]
        if "enum" in definition:
            values = definition["enum"]
            members: dict[str, Any] = {}
            for index, value in enumerate(values):
                member = _member_name(value, index)
                members[f"{member}_{index}" if member in members else member] = value
            built: Any = make_enum(name, members, self.module, name)
            built.__doc__ = definition.get("description")
        elif definition.get("type") == "object":
            built = self.model(name, definition)
        else:
            built = self.type_of(definition)
        self.building.discard(name)
        self.built[name] = built
        return built


def _member_name(value: Any, index: int) -> str:
    # A JSON schema keeps enum values only; names are derived so that they stay valid.
    name = re.sub(r"\W+", "_", str(value)).strip("_").upper()
    return name if name.isidentifier() and not name.startswith("_") else f"MEMBER_{index}"
