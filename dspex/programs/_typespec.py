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

This module converts between Python types, expressions and a small string
syntax (``list[str]``, ``Literal['a', 1] | None``) parsed by hand, never with
``eval``. Enums and pydantic models are rebuilt from ``ref`` only when the module
is already imported (loading a saved program must not import arbitrary code)
and the class has the same shape; otherwise they are recreated from their
members or JSON schema. Lax coercion of LM-produced values (:func:`loosen`) is
at the bottom.
"""

from __future__ import annotations

import copy
import json
import keyword
import re
import sys
import types as pytypes
import warnings
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, Field, PydanticUserError, create_model

from dspex.errors import SignatureError

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

TypeExpr = dict[str, Any]

_SCALARS: tuple[tuple[type, str], ...] = (
    (str, "str"),
    (int, "int"),
    (float, "float"),
    (bool, "bool"),
)
_KEY_KINDS = frozenset({"str", "int", "float", "bool", "literal", "enum"})
_LITERAL_VALUE_TYPES = (str, int, bool)
_ENUM_VALUE_TYPES = (str, int, float, bool)


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
        if not isinstance(value, _ENUM_VALUE_TYPES):
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
    kind = _get(expr, "type", str)
    for scalar, name in _SCALARS:
        if kind == name:
            return scalar
    if kind == "any":
        return Any
    if kind == "list":
        return _subscript(list, expr_to_type(_get(expr, "items", dict), types=types))
    if kind == "dict":
        keys = expr_to_type(_get(expr, "keys", dict), types=types)
        return _subscript(dict, (keys, expr_to_type(_get(expr, "values", dict), types=types)))
    if kind == "tuple":
        items = [expr_to_type(item, types=types) for item in _get(expr, "items", list)]
        if expr.get("variadic"):
            if len(items) != 1:
                raise SignatureError(f"variadic tuple needs exactly one item type: {expr!r}")
            return _subscript(tuple, (items[0], ...))
        if not items:
            raise SignatureError(f"tuple needs item types: {expr!r}")
        return _subscript(tuple, tuple(items))
    if kind == "optional":
        return _subscript(Optional, expr_to_type(_get(expr, "inner", dict), types=types))
    if kind == "literal":
        return _subscript(Literal, tuple(_literal_values(_get(expr, "values", list), repr(expr))))
    if kind == "enum":
        return _rebuild_enum(expr, types or {})
    if kind == "model":
        return _rebuild_model(expr, types or {})
    raise SignatureError(f"unknown type expression {expr!r}")


def _subscript(generic: Any, arguments: Any) -> Any:
    """``generic[arguments]`` for types built at runtime (a checker cannot see them)."""
    return generic[arguments]


def _make_enum(name: str, members: dict[str, Any], module: str, qualname: str) -> Any:
    return Enum(name, members, module=module, qualname=qualname)


def _get(expr: Any, key: str, kind: type) -> Any:
    if not isinstance(expr, dict) or not isinstance(expr.get(key), kind):
        raise SignatureError(f"malformed type expression {expr!r}: needs {key!r} ({kind.__name__})")
    return expr[key]


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
    return __name__, expr["name"]


def _members_of(cls: type[Enum]) -> dict[str, Any]:
    return {member.name: member.value for member in cls}


def _rebuild_enum(expr: TypeExpr, types: Mapping[str, Any]) -> type[Enum]:
    name, members = _get(expr, "name", str), _get(expr, "members", dict)
    for cls in _candidates(expr, types):
        if issubclass(cls, Enum) and cls.__name__ == name and _members_of(cls) == members:
            found: type[Enum] = cls
            return found
    if not members or not all(isinstance(v, _ENUM_VALUE_TYPES) for v in members.values()):
        raise SignatureError(f"cannot rebuild enum {name}: members must be JSON scalars")
    module_name, qualname = _split_ref(expr)
    try:
        rebuilt: type[Enum] = _make_enum(name, members, module_name, qualname)
        return rebuilt
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"cannot rebuild enum {name}: {exc}") from exc


def _rebuild_model(expr: TypeExpr, types: Mapping[str, Any]) -> type[BaseModel]:
    name, schema = _get(expr, "name", str), _get(expr, "schema", dict)
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
            return _subscript(Union, tuple(alternatives))
        if "const" in schema:
            return _subscript(Literal, schema["const"])
        if "enum" in schema:
            return _subscript(Literal, tuple(schema["enum"]))
        kind = schema.get("type")
        for json_name, python_type in _SCHEMA_SCALARS:
            if kind == json_name:
                return python_type
        if kind == "null":
            return type(None)
        if kind == "array":
            if "prefixItems" in schema:
                return _subscript(tuple, tuple(self.type_of(i) for i in schema["prefixItems"]))
            return _subscript(list, self.type_of(schema.get("items", {})))
        if kind == "object":
            if "properties" in schema:
                return self.model(str(schema.get("title", "Object")), schema)
            values = schema.get("additionalProperties", True)
            return _subscript(dict, (str, Any if values is True else self.type_of(values)))
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
            built: Any = _make_enum(name, members, self.module, name)
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


# --- string syntax ---------------------------------------------------------------

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
            return _subscript(Optional, rest[0])
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
            return _subscript(Literal, tuple(args))
        if Ellipsis in args and not (name == "tuple" and len(args) == 2 and args[1] is Ellipsis):
            raise self.fail("'...' is only allowed as tuple[T, ...]", token)
        if None in args and name != "Union":
            raise self.fail("None is only allowed in `X | None` or Optional[X]", token)
        wanted = {"list": 1, "dict": 2, "Optional": 1}.get(name)
        if wanted is not None and len(args) != wanted:
            raise self.fail(f"{name} takes {wanted} type argument(s), got {len(args)}", token)
        if name == "list":
            return _subscript(list, args[0])
        if name == "dict":
            return _subscript(dict, (args[0], args[1]))
        if name == "tuple":
            return _subscript(tuple, tuple(args))
        if name == "Optional":
            return _subscript(Optional, args[0])
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


# --- lax coercion of LM output ----------------------------------------------------

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
