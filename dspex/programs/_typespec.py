"""Type expressions: the JSON-friendly form of a signature field's Python type.

A *type expression* is a small JSON object that names a supported type::

    {"type": "str"}                                  also int, float, bool, any
    {"type": "list", "items": T}
    {"type": "dict", "keys": K, "values": V}
    {"type": "tuple", "items": [T, ...]}             fixed length
    {"type": "tuple", "items": [T], "variadic": true}  tuple[T, ...]
    {"type": "optional", "inner": T}
    {"type": "literal", "values": ["a", 1, true]}
    {"type": "enum", "name": ..., "members": {NAME: value}, "ref": "module:QualName"}
    {"type": "model", "name": ..., "ref": "module:QualName", "schema": {JSON schema}}

This module converts between Python types and expressions, renders expressions
in a small string syntax (``list[str]``, ``Literal['a', 1] | None``) and defines
:class:`CoercionError`. It is also the one import point of the type layer, whose
other parts live in sibling modules and are re-exported here:

* ``_typeparse``: the string syntax, parsed by hand, never with ``eval``
  (:func:`parse_type`, :func:`parse_signature_text`);
* ``_typeschema``: rebuilding enums and pydantic models. They are taken from
  ``ref`` only when the module is already imported (loading a saved program must
  not import arbitrary code) and the class has the same shape; otherwise they are
  recreated from their members or JSON schema;
* ``_typecoerce``: lax coercion of LM-produced values (:func:`loosen`);
* ``_typebase``: the :data:`TypeExpr` alias and helpers the others share.
"""

from __future__ import annotations

import copy
import json
import types as pytypes
from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, PydanticUserError

from dspex.errors import SignatureError
from dspex.programs._typebase import ENUM_VALUE_TYPES, TypeExpr, expr_get, subscript
from dspex.programs._typecoerce import loosen
from dspex.programs._typeparse import parse_signature_text, parse_type
from dspex.programs._typeschema import rebuild_enum, rebuild_model

__all__ = [
    "CoercionError",
    "TypeExpr",
    "expr_to_string",
    "expr_to_type",
    "loosen",
    "parse_signature_text",
    "parse_type",
    "structural",
    "type_to_expr",
]

_SCALARS: tuple[tuple[type, str], ...] = (
    (str, "str"),
    (int, "int"),
    (float, "float"),
    (bool, "bool"),
)
_KEY_KINDS = frozenset({"str", "int", "float", "bool", "literal", "enum"})
_LITERAL_VALUE_TYPES = (str, int, bool)


class CoercionError(ValueError):
    """An LM-produced value cannot be turned into its field's type.

    Attributes:
        field: The field's name.
        value: The value that was given.
    """

    def __init__(self, message: str, *, field: str, value: Any) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


# --- Python type -> expression ---------------------------------------------------


def type_to_expr(tp: Any) -> TypeExpr:
    """The type expression of a supported Python type.

    Raises:
        SignatureError: The type (or a part of it) is not supported.

    Example:
        >>> type_to_expr(list[int])
        {'type': 'list', 'items': {'type': 'int'}}
    """
    if tp is Any:
        return {"type": "any"}
    for scalar, name in _SCALARS:
        if tp is scalar:
            return {"type": name}
    if tp is list:
        return {"type": "list", "items": {"type": "any"}}
    if tp is dict:
        return {"type": "dict", "keys": {"type": "str"}, "values": {"type": "any"}}
    if tp is tuple:
        return {"type": "tuple", "items": [{"type": "any"}], "variadic": True}
    origin, args = get_origin(tp), get_args(tp)
    if origin is list and len(args) == 1:
        return {"type": "list", "items": type_to_expr(args[0])}
    if origin is dict and len(args) == 2:
        keys = type_to_expr(args[0])
        if keys["type"] not in _KEY_KINDS:
            raise SignatureError(f"dict keys must be scalars, not {_describe(args[0])}")
        return {"type": "dict", "keys": keys, "values": type_to_expr(args[1])}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "tuple", "items": [type_to_expr(args[0])], "variadic": True}
    if origin is tuple and args and Ellipsis not in args:
        return {"type": "tuple", "items": [type_to_expr(arg) for arg in args]}
    if origin in (Union, pytypes.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return {"type": "optional", "inner": type_to_expr(rest[0])}
        raise SignatureError(f"unsupported union {_describe(tp)}: only `X | None` is allowed")
    if origin is Literal:
        return {"type": "literal", "values": _literal_values(list(args), _describe(tp))}
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _enum_expr(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        try:
            schema = tp.model_json_schema()
        except PydanticUserError as exc:
            raise SignatureError(f"model {tp.__name__} has no JSON schema: {exc}") from exc
        return {"type": "model", "name": tp.__name__, "ref": _ref_of(tp), "schema": schema}
    raise SignatureError(f"unsupported type {_describe(tp)}")


def _enum_expr(tp: type[Enum]) -> TypeExpr:
    members = {member.name: member.value for member in tp}
    if not members:
        raise SignatureError(f"enum {tp.__name__} has no members")
    for value in members.values():
        if not isinstance(value, ENUM_VALUE_TYPES):
            raise SignatureError(f"enum {tp.__name__} has a non-JSON value {value!r}")
    return {"type": "enum", "name": tp.__name__, "members": members, "ref": _ref_of(tp)}


def _literal_values(values: list[Any], where: str) -> list[Any]:
    if not values:
        raise SignatureError(f"empty Literal in {where}")
    for value in values:
        if value is not None and not isinstance(value, _LITERAL_VALUE_TYPES):
            raise SignatureError(f"Literal values must be str, int, bool or None in {where}")
    return values


def _ref_of(tp: type) -> str:
    return f"{tp.__module__}:{tp.__qualname__}"


def _describe(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not get_args(tp) else repr(tp)


# --- expression -> Python type ---------------------------------------------------


def expr_to_type(expr: Any, *, types: Mapping[str, Any] | None = None) -> Any:
    """The Python type of a type expression (inverse of :func:`type_to_expr`).

    Args:
        expr: A type expression.
        types: Enums and models by name, tried before ``ref`` when rebuilding.

    Raises:
        SignatureError: The expression is malformed or names an unsupported type.

    Example:
        >>> expr_to_type({"type": "optional", "inner": {"type": "int"}})
        typing.Optional[int]
    """
    kind = expr_get(expr, "type", str)
    for scalar, name in _SCALARS:
        if kind == name:
            return scalar
    if kind == "any":
        return Any
    if kind == "list":
        return subscript(list, expr_to_type(expr_get(expr, "items", dict), types=types))
    if kind == "dict":
        keys = expr_to_type(expr_get(expr, "keys", dict), types=types)
        return subscript(dict, (keys, expr_to_type(expr_get(expr, "values", dict), types=types)))
    if kind == "tuple":
        items = [expr_to_type(item, types=types) for item in expr_get(expr, "items", list)]
        if expr.get("variadic"):
            if len(items) != 1:
                raise SignatureError(f"variadic tuple needs exactly one item type: {expr!r}")
            return subscript(tuple, (items[0], ...))
        if not items:
            raise SignatureError(f"tuple needs item types: {expr!r}")
        return subscript(tuple, tuple(items))
    if kind == "optional":
        return subscript(Optional, expr_to_type(expr_get(expr, "inner", dict), types=types))
    if kind == "literal":
        return subscript(
            Literal, tuple(_literal_values(expr_get(expr, "values", list), repr(expr)))
        )
    if kind == "enum":
        return rebuild_enum(expr, types or {})
    if kind == "model":
        return rebuild_model(expr, types or {})
    raise SignatureError(f"unknown type expression {expr!r}")


# --- shape and string form of an expression ---------------------------------------


def structural(expr: TypeExpr) -> TypeExpr:
    """The expression reduced to its shape, for comparing types rather than origins.

    ``ref`` entries are dropped, and Literal values are sorted: Python treats
    ``Literal['a', 'b']`` and ``Literal['b', 'a']`` as one type (its caches may hand
    back either order), so the order is not part of the shape.
    """
    out = copy.deepcopy(expr)
    kind = out.get("type")
    if kind in ("enum", "model"):
        out.pop("ref", None)
    if kind == "literal":
        out["values"] = sorted(out["values"], key=lambda v: (type(v).__name__, json.dumps(v)))
        return out
    for key in ("items", "keys", "values", "inner"):
        value = out.get(key)
        if isinstance(value, dict):
            out[key] = structural(value)
        elif isinstance(value, list):
            out[key] = [structural(item) for item in value]
    return out


def expr_to_string(expr: TypeExpr) -> str:
    """Render a type expression in the string syntax :func:`parse_type` reads.

    Example:
        >>> expr_to_string({"type": "optional", "inner": {"type": "int"}})
        'int | None'
    """
    kind = expr["type"]
    if kind == "any":
        return "Any"
    if kind == "list":
        return f"list[{expr_to_string(expr['items'])}]"
    if kind == "dict":
        return f"dict[{expr_to_string(expr['keys'])}, {expr_to_string(expr['values'])}]"
    if kind == "tuple":
        items = [expr_to_string(item) for item in expr["items"]]
        return f"tuple[{items[0]}, ...]" if expr.get("variadic") else f"tuple[{', '.join(items)}]"
    if kind == "optional":
        return f"{expr_to_string(expr['inner'])} | None"
    if kind == "literal":
        return f"Literal[{', '.join(repr(value) for value in expr['values'])}]"
    if kind in ("enum", "model"):
        return str(expr["name"])
    return str(kind)
