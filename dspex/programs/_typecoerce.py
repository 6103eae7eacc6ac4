"""Lax coercion of LM-produced values (:func:`loosen`) ahead of pydantic validation."""

from __future__ import annotations

import json
import re
import types as pytypes
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["loosen"]

_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_NULL_WORDS = frozenset({"", "none", "null", "n/a"})
_TEXT_NULL_WORDS = frozenset({"none", "null"})


def _clean_label(text: str) -> str:
    # LMs decorate labels: quotes, backticks, trailing full stops, stray whitespace.
    cleaned = ""
    while cleaned != text:
        cleaned, text = text, text.strip().strip("\"'`").rstrip(".")
    return text


def _parse_structured(text: str) -> Any:
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    try:
        return json.loads(stripped)
    except ValueError:
        return text


def loosen(tp: Any, value: Any) -> Any:
    """Make an LM-produced value acceptable to pydantic's lax validation of ``tp``.

    Parses JSON text for containers and models, cleans labels for Literal and
    Enum types, and strips decoration around scalars. Values it cannot improve
    are returned unchanged so that pydantic reports the precise problem.

    Example:
        >>> loosen(list[bool], '["Yes.", "no"]')  # pydantic then reads these as bools
        ['yes', 'no']
    """
    origin, args = get_origin(tp), get_args(tp)
    if tp is str:
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
        if isinstance(value, bool):
            return json.dumps(value)
        return str(value) if isinstance(value, (int, float)) else value
    if tp in (int, float):
        return _clean_label(value) if isinstance(value, str) else value
    if tp is bool:
        return _clean_label(value).lower() if isinstance(value, str) else value
    if origin in (Union, pytypes.UnionType):
        if len(args) != 2 or type(None) not in args:
            return value  # a general union inside a model: leave it to pydantic
        inner = next(arg for arg in args if arg is not type(None))
        if value is None or (isinstance(value, str) and _is_null(value, text=inner is str)):
            return None
        return loosen(inner, value)
    if origin is Literal:
        return _match_label(list(args), value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _match_enum(tp, value)
    structured = tp in (list, dict, tuple) or origin in (list, dict, tuple)
    if structured or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        if isinstance(value, str):
            value = _parse_structured(value)
        return _loosen_items(tp, value)
    return value


def _is_null(value: str, *, text: bool) -> bool:
    # For optional text only an explicit null counts: "" or "n/a" may be the answer.
    cleaned = value.strip().lower() if text else _clean_label(value).lower()
    return cleaned in (_TEXT_NULL_WORDS if text else _NULL_WORDS)


def _loosen_items(tp: Any, value: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin is list and isinstance(value, (list, tuple)):
        return [loosen(args[0], item) for item in value]
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return [loosen(args[0], item) for item in value]
        if len(args) == len(value):
            return [loosen(arg, item) for arg, item in zip(args, value, strict=True)]
    if origin is dict and isinstance(value, dict):
        return {loosen(args[0], k): loosen(args[1], v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(value, dict):
        fields = tp.model_fields
        return {
            key: loosen(fields[key].annotation, item) if key in fields else item
            for key, item in value.items()
        }
    return value


def _same(a: Any, b: Any) -> bool:
    # Literal[1] must not accept True (and vice versa), although 1 == True.
    return type(a) is type(b) and bool(a == b)


def _match_label(allowed: list[Any], value: Any) -> Any:
    for option in allowed:
        if _same(option, value):
            return option
    if not isinstance(value, str):
        return value
    label = _clean_label(value)
    for rule in (str, lambda text: str(text).lower()):
        for option in allowed:
            text = json.dumps(option) if isinstance(option, bool) or option is None else option
            if rule(text) == rule(label):
                return option
    return value


def _match_enum(tp: type[Enum], value: Any) -> Any:
    if isinstance(value, tp):
        return value
    members = list(tp)
    matched = _match_label([m.value for m in members], value)
    for member in members:
        if _same(member.value, matched):
            return member
    if isinstance(value, str):
        label = _clean_label(value).removeprefix(f"{tp.__name__}.").lower()
        for member in members:
            if member.name.lower() == label:
                return member
    return value
