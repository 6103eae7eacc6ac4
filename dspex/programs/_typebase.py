"""Shared pieces of the type layer: the type expression alias and runtime type building.

Used by the expression converters (:mod:`dspex.programs._typespec`), the string
parser (:mod:`dspex.programs._typeparse`) and the JSON schema rebuilder
(:mod:`dspex.programs._typeschema`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from dspex.errors import SignatureError

__all__ = ["ENUM_VALUE_TYPES", "TypeExpr", "expr_get", "make_enum", "subscript"]

TypeExpr = dict[str, Any]

ENUM_VALUE_TYPES = (str, int, float, bool)


def subscript(generic: Any, arguments: Any) -> Any:
    """``generic[arguments]`` for types built at runtime (a checker cannot see them)."""
    return generic[arguments]


def make_enum(name: str, members: dict[str, Any], module: str, qualname: str) -> Any:
    """A new Enum class (untyped: its members are only known at runtime)."""
    return Enum(name, members, module=module, qualname=qualname)


def expr_get(expr: Any, key: str, kind: type) -> Any:
    """``expr[key]``, required to be of ``kind``; a SignatureError names the malformed part."""
    if not isinstance(expr, dict) or not isinstance(expr.get(key), kind):
        raise SignatureError(f"malformed type expression {expr!r}: needs {key!r} ({kind.__name__})")
    return expr[key]
