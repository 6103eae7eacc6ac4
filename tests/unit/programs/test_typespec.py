"""Type expressions: Python type <-> JSON expression <-> string syntax, and model rebuilding."""

from __future__ import annotations

import contextlib
import enum
import json
import keyword
from typing import Annotated, Any, Literal, Optional

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from dspex.errors import SignatureError
from dspex.programs import _typespec
from dspex.programs._typespec import (
    expr_to_string,
    expr_to_type,
    parse_signature_text,
    parse_type,
    structural,
    type_to_expr,
)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(BaseModel):
    """A point."""

    x: int
    y: int = 0


class Shape(BaseModel):
    name: str = Field(description="what it is", min_length=1)
    color: Color = Color.RED
    points: list[Point] = []
    label: str | None = None
    size: Annotated[float, Field(ge=0, le=10)] = 1.0
    tags: dict[str, int] = {}
    pair: tuple[int, str] = (0, "")
    kind: Literal["flat", "solid"] = "flat"
    extra: dict[str, Any] = {}


def roundtrip(tp: Any) -> Any:
    return expr_to_type(json.loads(json.dumps(type_to_expr(tp))))


# --- type -> expression -------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "expected"),
    [
        (str, {"type": "str"}),
        (int, {"type": "int"}),
        (float, {"type": "float"}),
        (bool, {"type": "bool"}),
        (Any, {"type": "any"}),
        (list[int], {"type": "list", "items": {"type": "int"}}),
        (list, {"type": "list", "items": {"type": "any"}}),
        (dict, {"type": "dict", "keys": {"type": "str"}, "values": {"type": "any"}}),
        (
            dict[str, list[float]],
            {
                "type": "dict",
                "keys": {"type": "str"},
                "values": {"type": "list", "items": {"type": "float"}},
            },
        ),
        (tuple[int, str], {"type": "tuple", "items": [{"type": "int"}, {"type": "str"}]}),
        (tuple[int, ...], {"type": "tuple", "items": [{"type": "int"}], "variadic": True}),
        (Optional[int], {"type": "optional", "inner": {"type": "int"}}),  # noqa: UP045
        (int | None, {"type": "optional", "inner": {"type": "int"}}),
        (None | int, {"type": "optional", "inner": {"type": "int"}}),
        (Literal["a", 1, True, None], {"type": "literal", "values": ["a", 1, True, None]}),
        (
            list[Literal["x"]] | None,
            {
                "type": "optional",
                "inner": {"type": "list", "items": {"type": "literal", "values": ["x"]}},
            },
        ),
    ],
)
def test_type_to_expr(tp: Any, expected: dict[str, Any]) -> None:
    assert type_to_expr(tp) == expected
    assert structural(type_to_expr(roundtrip(tp))) == structural(expected)


def test_enum_expression_names_members_and_ref() -> None:
    assert type_to_expr(Color) == {
        "type": "enum",
        "name": "Color",
        "members": {"RED": "red", "GREEN": "green"},
        "ref": f"{__name__}:Color",
    }


def test_model_expression_carries_its_json_schema() -> None:
    expr = type_to_expr(Point)
    assert expr["type"] == "model"
    assert expr["ref"] == f"{__name__}:Point"
    assert expr["schema"] == Point.model_json_schema()


class _Opaque:
    pass


class _Empty(enum.Enum):
    pass


class _Tupled(enum.Enum):
    A = (1, 2)


@pytest.mark.parametrize(
    ("tp", "message"),
    [
        (set[int], "unsupported type"),
        (int | str, "only `X | None`"),
        (int | str | None, "only `X | None`"),
        (dict[list[int], int], "dict keys must be scalars"),
        (dict[Point, int], "dict keys must be scalars"),
        (_Opaque, "unsupported type _Opaque"),
        (bytes, "unsupported type bytes"),
        (_Empty, "has no members"),
        (_Tupled, "non-JSON value"),
        (list[set[int]], "unsupported type"),
        (type(None), "unsupported type"),
    ],
)
def test_unsupported_types_raise_signature_error(tp: Any, message: str) -> None:
    with pytest.raises(SignatureError, match=message.replace("|", r"\|")):
        type_to_expr(tp)


def test_literal_of_a_float_is_refused() -> None:
    with pytest.raises(SignatureError, match="Literal values"):
        type_to_expr(Literal[1.5])  # type: ignore[valid-type]


# --- expression -> type: enums and models -------------------------------------


def test_importable_enum_and_model_come_back_as_the_same_class() -> None:
    assert roundtrip(Color) is Color
    assert roundtrip(Level) is Level
    assert roundtrip(Point) is Point
    assert roundtrip(Shape) is Shape
    assert roundtrip(list[Color]) == list[Color]


def test_enum_with_changed_shape_is_recreated_not_reused() -> None:
    expr = type_to_expr(Color)
    expr["members"]["BLUE"] = "blue"
    rebuilt = expr_to_type(expr)
    assert rebuilt is not Color
    assert [m.value for m in rebuilt] == ["red", "green", "blue"]
    assert rebuilt.__qualname__ == "Color"  # it keeps its original identity for re-saving
    assert type_to_expr(rebuilt) == expr


def test_local_enum_is_recreated_from_members_with_the_same_expression() -> None:
    class Mood(enum.Enum):
        HAPPY = "happy"
        LEVEL = 3

    expr = type_to_expr(Mood)
    assert "<locals>" in expr["ref"]
    rebuilt = expr_to_type(json.loads(json.dumps(expr)))
    assert rebuilt is not Mood
    assert rebuilt.HAPPY.value == "happy"
    assert rebuilt.LEVEL.value == 3
    assert type_to_expr(rebuilt) == expr


def test_types_mapping_is_tried_before_the_ref() -> None:
    class Mood(enum.Enum):
        HAPPY = "happy"

    expr = type_to_expr(Mood)
    assert expr_to_type(expr, types={"Mood": Mood}) is Mood
    assert expr_to_type(expr, types={"Mood": Color}) is not Color


def test_ref_in_a_module_not_imported_is_not_imported() -> None:
    expr = type_to_expr(Color) | {"ref": "antigravity_is_not_loaded:Color"}
    rebuilt = expr_to_type(expr)
    assert rebuilt is not Color
    assert rebuilt.__module__ == "antigravity_is_not_loaded"


def test_local_model_is_recreated_from_its_schema() -> None:
    class Inner(BaseModel):
        value: int = Field(ge=0)

    class Outer(BaseModel):
        """Outer doc."""

        name: str = Field(description="the name", min_length=2, max_length=5)
        inner: Inner
        maybe: Inner | None = None
        color: Color = Color.GREEN
        items: list[int] = Field(default=[], max_length=3)
        mapping: dict[str, float] = {}
        pair: tuple[int, str] = (1, "a")
        anything: Any = None
        either: int | str = 1

    expr = type_to_expr(Outer)
    rebuilt = expr_to_type(json.loads(json.dumps(expr)))
    assert rebuilt is not Outer
    assert rebuilt.__doc__ == "Outer doc."
    assert rebuilt.model_json_schema() == Outer.model_json_schema()
    assert type_to_expr(rebuilt) == expr
    made = rebuilt.model_validate({"name": "abc", "inner": {"value": 1}, "color": "red"})
    assert made.inner.value == 1
    with pytest.raises(ValueError, match="at least 2"):
        rebuilt.model_validate({"name": "a", "inner": {"value": 1}})
    with pytest.raises(ValueError, match="greater than or equal"):
        rebuilt.model_validate({"name": "abc", "inner": {"value": -1}})


def test_model_with_changed_schema_is_recreated() -> None:
    expr = type_to_expr(Point)
    expr["schema"]["properties"]["z"] = {"title": "Z", "type": "integer", "default": 0}
    rebuilt = expr_to_type(expr)
    assert rebuilt is not Point
    assert set(rebuilt.model_fields) == {"x", "y", "z"}


def test_model_with_an_unsupported_field_type_cannot_be_recreated() -> None:
    expr = {
        "type": "model",
        "name": "Stamp",
        "ref": "nowhere:Stamp",
        "schema": {
            "type": "object",
            "title": "Stamp",
            "properties": {"at": {"type": "string", "format": "date-time"}},
        },
    }
    with pytest.raises(SignatureError, match=r"Stamp.*'format'"):
        expr_to_type(expr)


def test_recursive_model_cannot_be_recreated() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "title": "Node",
                "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
            }
        },
        "type": "object",
        "title": "Tree",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
    }
    with pytest.raises(SignatureError, match="recursive model Node"):
        expr_to_type({"type": "model", "name": "Tree", "ref": "x:Tree", "schema": schema})


@pytest.mark.parametrize(
    "expr",
    [
        None,
        "str",
        {},
        {"type": "complex"},
        {"type": "list"},
        {"type": "list", "items": "int"},
        {"type": "dict", "keys": {"type": "str"}},
        {"type": "tuple", "items": []},
        {"type": "tuple", "items": [{"type": "int"}, {"type": "int"}], "variadic": True},
        {"type": "optional"},
        {"type": "literal", "values": []},
        {"type": "literal", "values": [1.5]},
        {"type": "enum", "name": "E", "members": {}},
        {"type": "enum", "name": "E", "members": {"A": [1]}},
        {"type": "enum", "members": {"A": 1}},
        {"type": "model", "name": "M", "schema": {"type": "string"}},
        {"type": "model", "name": "M", "schema": {"type": "object", "$defs": 3}},
        {
            "type": "model",
            "name": "M",
            "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}},
        },
    ],
)
def test_malformed_expressions_raise_signature_error(expr: Any) -> None:
    with pytest.raises(SignatureError):
        expr_to_type(expr)


# --- string syntax ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("str", str),
        (" int ", int),
        ("float", float),
        ("bool", bool),
        ("Any", Any),
        ("list", list),
        ("list[str]", list[str]),
        ("List[int]", list[int]),
        ("dict[str, list[int]]", dict[str, list[int]]),
        ("Dict[str,int]", dict[str, int]),
        ("tuple[int, str, bool]", tuple[int, str, bool]),
        ("tuple[int, ...]", tuple[int, ...]),
        ("Optional[int]", Optional[int]),  # noqa: UP045
        ("int | None", Optional[int]),  # noqa: UP045
        ("None | list[str]", Optional[list[str]]),  # noqa: UP045
        ("Union[int, None]", Optional[int]),  # noqa: UP045
        (
            "Literal['a', \"b\", 1, -2, True, False, None]",
            Literal["a", "b", 1, -2, True, False, None],
        ),
        ("Literal['it\\'s']", Literal["it's"]),
        ("Literal['a'] | None", Optional[Literal["a"]]),  # noqa: UP045
        ("Color", Color),
        ("list[Point] | None", Optional[list[Point]]),  # noqa: UP045
    ],
)
def test_parse_type(text: str, expected: Any) -> None:
    assert parse_type(text, types={"Color": Color, "Point": Point}) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a type name"),
        ("list[str", "expected ']'"),
        ("list[str]]", "unexpected text after the type"),
        ("list[]", "expected a type name"),
        ("dict[str]", "dict takes 2 type argument"),
        ("list[int, str]", "list takes 1 type argument"),
        ("Foo", "unknown type name 'Foo'"),
        ("list[Foo]", "unknown type name 'Foo'"),
        ("int | str", r"only `X \| None`"),
        ("None", "None alone"),
        ("list[None]", "None is only allowed"),
        ("Literal[]", "expected a str, int"),
        ("Literal[1.5]", "unexpected character '.'"),
        ("Literal[str]", "expected a str, int"),
        ("list[...]", "expected a type name"),
        ("dict[str, ...]", r"'\.\.\.' is only allowed"),
        ("str[int]", "takes no arguments"),
        ("int?", "unexpected character '\\?'"),
        ("'str'", "expected a type name"),
    ],
)
def test_malformed_type_strings(text: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message) as info:
        parse_type(text)
    assert repr(text) in str(info.value) or text == ""


def test_parse_type_never_evaluates_python() -> None:
    with pytest.raises(SignatureError):
        parse_type("__import__('os').system('true')")


def test_parse_signature_text_splits_typed_fields() -> None:
    inputs, outputs = parse_signature_text("a, b: list[Literal['x,y', 'z']] -> c: dict[str, int]")
    assert inputs == [("a", str), ("b", list[Literal["x,y", "z"]])]
    assert outputs == [("c", dict[str, int])]


def test_builtin_names_win_over_the_types_mapping() -> None:
    assert parse_type("str", types={"str": int}) is str


@pytest.mark.parametrize(
    "tp",
    [
        str,
        list[int],
        dict[str, list[float]],
        tuple[int, ...],
        tuple[int, str],
        Optional[Literal["a", 1, True]],  # noqa: UP045
        Color,
        list[Point] | None,
        Any,
    ],
)
def test_expr_to_string_is_read_back_by_parse_type(tp: Any) -> None:
    text = expr_to_string(type_to_expr(tp))
    assert parse_type(text, types={"Color": Color, "Point": Point}) == tp


# --- properties ---------------------------------------------------------------

_names = st.from_regex(r"[A-Z][A-Z0-9]{0,6}", fullmatch=True).filter(
    lambda name: not keyword.iskeyword(name)
)
_scalar_values = st.one_of(st.text(max_size=8), st.integers(-1000, 1000), st.booleans())


def _literal_expr() -> st.SearchStrategy[dict[str, Any]]:
    def unique(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if not any(type(value) is type(seen) and value == seen for seen in out):
                out.append(value)
        return out

    return st.lists(_scalar_values, min_size=1, max_size=4).map(
        lambda values: {"type": "literal", "values": unique(values)}
    )


def _enum_expr() -> st.SearchStrategy[dict[str, Any]]:
    members = st.dictionaries(_names, st.one_of(st.text(max_size=5), st.integers()), min_size=1)
    return st.builds(
        lambda name, members: {
            "type": "enum",
            "name": name,
            "members": members,
            "ref": f"hypothesis_generated:{name}",
        },
        _names,
        members.filter(lambda m: len({json.dumps(v) for v in m.values()}) == len(m)),
    )


_leaves = st.one_of(
    st.sampled_from([{"type": name} for name in ("str", "int", "float", "bool", "any")]),
    _literal_expr(),
    _enum_expr(),
)
_key_exprs = st.one_of(st.sampled_from([{"type": "str"}, {"type": "int"}]), _literal_expr())


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        children.map(lambda item: {"type": "list", "items": item}),
        st.builds(lambda k, v: {"type": "dict", "keys": k, "values": v}, _key_exprs, children),
        st.lists(children, min_size=1, max_size=3).map(
            lambda items: {"type": "tuple", "items": items}
        ),
        children.map(lambda item: {"type": "tuple", "items": [item], "variadic": True}),
        children.filter(lambda c: c["type"] not in ("optional", "any")).map(
            lambda inner: {"type": "optional", "inner": inner}
        ),
    )


type_exprs = st.recursive(_leaves, _extend, max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(type_exprs)
def test_generated_expressions_survive_json_and_python_round_trips(expr: dict[str, Any]) -> None:
    wire = json.loads(json.dumps(expr))
    tp = expr_to_type(wire)
    # Literal order may come back permuted: typing caches Literal-bearing unions by
    # set equality, so only the shape is compared.
    assert structural(type_to_expr(tp)) == structural(expr)


def _enums_in(expr: dict[str, Any]) -> list[dict[str, Any]]:
    kind = expr["type"]
    if kind == "enum":
        return [expr]
    children = [expr[key] for key in ("items", "keys", "values", "inner") if key in expr]
    if kind == "literal":
        children = []
    flat = [c for child in children for c in (child if isinstance(child, list) else [child])]
    return [found for child in flat for found in _enums_in(child)]


@settings(max_examples=150, deadline=None)
@given(type_exprs)
def test_generated_expressions_survive_the_string_syntax(expr: dict[str, Any]) -> None:
    enums = _enums_in(expr)
    # The string syntax names an enum; two different enums with one name are ambiguous.
    assume(
        all(e["members"] == f["members"] for e in enums for f in enums if e["name"] == f["name"])
    )
    types = {e["name"]: expr_to_type(e) for e in enums}
    parsed = parse_type(expr_to_string(expr), types=types)
    assert structural(type_to_expr(parsed)) == structural(expr)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab_1 ,:|[]'\".-><NoneListrdict")), max_size=40))
def test_parse_type_raises_only_signature_error(text: str) -> None:
    with contextlib.suppress(SignatureError):
        parse_type(text)


def test_structural_drops_refs_but_keeps_model_schemas() -> None:
    expr = type_to_expr(list[Shape])
    stripped = structural(expr)
    assert "ref" not in stripped["items"]
    assert stripped["items"]["schema"] == Shape.model_json_schema()
    assert "ref" in expr["items"]  # the input is not modified


_junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(["str", "list", "dict", "tuple", "optional", "literal", "enum", "model"]),
        st.sampled_from(["object", "array", "string", "#/$defs/A", "A"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "items",
                    "keys",
                    "values",
                    "inner",
                    "name",
                    "members",
                    "schema",
                    "properties",
                    "$defs",
                    "$ref",
                    "anyOf",
                    "required",
                    "enum",
                    "A",
                    "variadic",
                ]
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_junk)
def test_expr_to_type_raises_only_signature_error_on_junk(expr: Any) -> None:
    with contextlib.suppress(SignatureError):
        expr_to_type(expr)


def test_enum_values_that_map_to_one_name_stay_distinct() -> None:
    schema = {
        "$defs": {"Odd": {"enum": ["a b", "a_b", "_", 1], "title": "Odd", "type": "string"}},
        "type": "object",
        "title": "M",
        "properties": {"odd": {"$ref": "#/$defs/Odd"}},
    }
    model = expr_to_type({"type": "model", "name": "M", "ref": "x:M", "schema": schema})
    odd = model.model_fields["odd"].annotation
    assert [member.value for member in odd] == ["a b", "a_b", "_", 1]


def test_structural_ignores_literal_order_like_python_does() -> None:
    forward = {"type": "literal", "values": ["b", 1, True, "a"]}
    backward = {"type": "literal", "values": ["a", True, 1, "b"]}
    assert structural(forward) == structural(backward)
    assert structural(forward) != structural({"type": "literal", "values": ["a", "b", 1]})
    assert Literal["a", "b"] == Literal["b", "a"]


def test_loosen_leaves_unknown_shapes_to_pydantic() -> None:
    assert _typespec.loosen(list[int], "not json") == "not json"
    assert _typespec.loosen(int | str, " 'x' ") == " 'x' "
