"""The string syntax of types and signatures, parsed by hand (never with ``eval``).

:func:`parse_type` reads a type written as in Python (``list[str]``,
``Literal['a', 1] | None``, names from ``types``); :func:`parse_signature_text`
splits ``"a, b: list[int] -> c"`` into typed input and output fields.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any, Literal, Optional

from dspex.errors import SignatureError
from dspex.programs._typebase import subscript

__all__ = ["parse_signature_text", "parse_type"]

_TOKEN = re.compile(
    r"""\s*(?:(?P<arrow>->)|(?P<num>-?\d+)|(?P<ellipsis>\.\.\.)
    |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<name>[^\W\d]\w*)|(?P<punct>[\[\],|:]))""",
    re.VERBOSE,
)
_ESCAPES = (("n", "\n"), ("t", "\t"), ("r", "\r"))
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_GENERIC_ALIASES = (("List", "list"), ("Dict", "dict"), ("Tuple", "tuple"))


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            rest = text[position:].lstrip()
            if not rest:
                break
            where = len(text) - len(rest)
            raise SignatureError(f"unexpected character {rest[0]!r} at {where} in {text!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind), match.start(kind)))
        position = match.end()
    tokens.append(("end", "", len(text)))
    return tokens


def _unquote(token: str) -> str:
    # The escapes repr() writes: \n \t \r \xNN \uNNNN \UNNNNNNNN and \<char>.
    def decode(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape[0] in "xuU" and len(escape) > 1:
            return chr(int(escape[1:], 16))
        return dict(_ESCAPES).get(escape, escape)

    return _ESCAPE.sub(decode, token[1:-1])


class _Parser:
    """Recursive-descent parser over the tokens of a type or a signature string."""

    def __init__(self, text: str, types: Mapping[str, Any] | None) -> None:
        self.text, self.types = text, dict(types or {})
        self.tokens, self.index = _tokenize(text), 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.index]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.index]
        self.index += min(1, len(self.tokens) - 1 - self.index)
        return token

    def fail(self, why: str, token: tuple[str, str, int] | None = None) -> SignatureError:
        _, value, position = token or self.peek()
        found = repr(value) if value else "end of text"
        return SignatureError(f"{why} at {position} in {self.text!r} (found {found})")

    def expect(self, value: str) -> None:
        if self.peek()[1] != value or self.peek()[0] in ("str", "end"):
            raise self.fail(f"expected {value!r}")
        self.take()

    def type_(self) -> Any:
        start = self.peek()
        alternatives = [self.primary()]
        while self.peek()[1] == "|" and self.peek()[0] == "punct":
            self.take()
            alternatives.append(self.primary())
        return self._union(alternatives, start)

    def _union(self, alternatives: list[Any], start: tuple[str, str, int]) -> Any:
        if len(alternatives) == 1:
            return alternatives[0]  # may be None: only a union or Union[...] may hold it
        rest = [alt for alt in alternatives if alt is not None]
        if len(rest) == 1 and len(alternatives) == 2:
            return subscript(Optional, rest[0])
        raise self.fail("only `X | None` unions are supported", start)

    def primary(self) -> Any:
        token = self.take()
        kind, name, _ = token
        if kind != "name":
            raise self.fail("expected a type name", token)
        name = dict(_GENERIC_ALIASES).get(name, name)
        has_args = self.peek()[1] == "[" and self.peek()[0] == "punct"
        if name in ("list", "dict", "tuple", "Optional", "Union", "Literal") and has_args:
            self.take()
            arguments = self.literal_values() if name == "Literal" else self.arguments()
            self.expect("]")
            return self._generic(name, arguments, token)
        # None stands for itself here; _union turns `X | None` into Optional[X].
        simple: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool}
        simple |= {"Any": Any, "list": list, "dict": dict, "tuple": tuple, "None": None}
        if name not in simple and name not in self.types:
            raise self.fail(f"unknown type name {name!r}", token)
        if has_args:
            raise self.fail(f"type {name!r} takes no arguments")
        return simple[name] if name in simple else self.types[name]

    def arguments(self) -> list[Any]:
        arguments = [self.type_()]
        while self.peek()[1] == "," and self.peek()[0] == "punct":
            self.take()
            if self.peek()[0] == "ellipsis":
                self.take()
                arguments.append(Ellipsis)
            else:
                arguments.append(self.type_())
        return arguments

    def literal_values(self) -> list[Any]:
        values: list[Any] = []
        while True:
            kind, value, _ = token = self.take()
            if kind == "str":
                values.append(_unquote(value))
            elif kind == "num":
                values.append(int(value))
            elif kind == "name" and value in ("True", "False", "None"):
                values.append({"True": True, "False": False, "None": None}[value])
            else:
                raise self.fail("expected a str, int, True, False or None literal", token)
            if self.peek()[1] != ",":
                return values
            self.take()

    def _generic(self, name: str, args: list[Any], token: tuple[str, str, int]) -> Any:
        if name == "Literal":
            return subscript(Literal, tuple(args))
        if Ellipsis in args and not (name == "tuple" and len(args) == 2 and args[1] is Ellipsis):
            raise self.fail("'...' is only allowed as tuple[T, ...]", token)
        if None in args and name != "Union":
            raise self.fail("None is only allowed in `X | None` or Optional[X]", token)
        wanted = {"list": 1, "dict": 2, "Optional": 1}.get(name)
        if wanted is not None and len(args) != wanted:
            raise self.fail(f"{name} takes {wanted} type argument(s), got {len(args)}", token)
        if name == "list":
            return subscript(list, args[0])
        if name == "dict":
            return subscript(dict, (args[0], args[1]))
        if name == "tuple":
            return subscript(tuple, tuple(args))
        if name == "Optional":
            return subscript(Optional, args[0])
        return self._union(args, token)

    def field_list(self, side: str) -> list[tuple[str, Any]]:
        fields: list[tuple[str, Any]] = []
        while True:
            kind, name, _ = token = self.take()
            if kind != "name":
                raise self.fail(f"expected an {side} field name", token)
            annotation: Any = str
            if self.peek()[1] == ":" and self.peek()[0] == "punct":
                self.take()
                annotation = self.type_()
            fields.append((name, annotation))
            if not (self.peek()[1] == "," and self.peek()[0] == "punct"):
                return fields
            self.take()


def parse_type(text: str, *, types: Mapping[str, Any] | None = None) -> Any:
    """Parse a type written as in Python, e.g. ``"dict[str, list[int]] | None"``.

    Args:
        text: The type expression.
        types: Extra type names (enums, pydantic models) the text may use.

    Raises:
        SignatureError: The text is malformed or names an unknown type.

    Example:
        >>> parse_type("list[int]")
        list[int]
    """
    parser = _Parser(text, types)
    result = parser.type_()
    if parser.peek()[0] != "end":
        raise parser.fail("unexpected text after the type")
    if result is None:
        raise parser.fail("None alone is not a field type")
    return result


def parse_signature_text(
    text: str, *, types: Mapping[str, Any] | None = None
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Split ``"a, b: list[int] -> c"`` into typed input and output fields.

    Raises:
        SignatureError: The string is malformed (no ``->``, an empty side, a bad name
            or type, a name used twice).
    """
    if not isinstance(text, str):
        raise SignatureError(f"a signature string must be a str, not {type(text).__name__}")
    parser = _Parser(text, types)
    if parser.peek()[0] == "arrow":
        raise SignatureError(f"signature {text!r} has no input fields")
    inputs = parser.field_list("input")
    if parser.peek()[0] != "arrow" and "->" not in text:
        raise SignatureError(f"signature {text!r} has no '->' between inputs and outputs")
    parser.expect("->")
    if parser.peek()[0] == "end":
        raise SignatureError(f"signature {text!r} has no output fields")
    outputs = parser.field_list("output")
    if parser.peek()[0] == "arrow":
        raise SignatureError(f"signature {text!r} has more than one '->'")
    if parser.peek()[0] != "end":
        raise parser.fail("unexpected text after the output fields")
    seen: set[str] = set()
    for name, annotation in inputs + outputs:
        if name in seen:
            raise SignatureError(f"field `{name}` appears twice in signature {text!r}")
        if name.startswith("_") or keyword.iskeyword(name):
            raise SignatureError(f"`{name}` is not a valid field name in signature {text!r}")
        if annotation is None:
            raise SignatureError(f"field `{name}` has type None in signature {text!r}")
        seen.add(name)
    return inputs, outputs
