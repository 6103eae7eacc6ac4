"""Signatures: class and string forms, validation, immutability, edits, JSON, coercion."""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import pickle
import re
from typing import Any, Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from dspex.errors import InputError, SignatureError
from dspex.programs.signature import (
    CoercionError,
    FieldSpec,
    InputField,
    OutputField,
    Signature,
    ensure_signature,
    make_signature,
)


class Sentiment(enum.Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    NEUTRAL = "neutral"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Citation(BaseModel):
    """Where a fact comes from."""

    source: str = Field(description="a URL or title")
    page: int | None = None


class QA(Signature):
    """Answer the question in a few words.

    Be precise.
    """

    question: str = InputField(desc="a trivia question")
    context: list[str] = InputField(desc="facts", prefix="Facts:")
    answer: str = OutputField()
    confidence: float = OutputField(desc="0..1")


class Everything(Signature):
    """Fill every field."""

    text: str = InputField()
    count: int = InputField()
    ratio: float = InputField()
    flag: bool = InputField()
    untyped = InputField()
    sentiment: Sentiment = OutputField()
    priority: Priority = OutputField()
    label: Literal["spam", "ham"] = OutputField()
    mixed: Literal["a", 1, True] = OutputField()
    citation: Citation = OutputField()
    citations: list[Citation] = OutputField()
    scores: dict[str, float] = OutputField()
    pair: tuple[int, str] = OutputField()
    many: tuple[int, ...] = OutputField()
    maybe: Optional[int] = OutputField()  # noqa: UP045
    maybe_too: list[Sentiment] | None = OutputField()
    maybe_text: str | None = OutputField()
    nested: dict[str, list[tuple[int, bool]]] = OutputField()
    anything: Any = OutputField()


# --- class form -----------------------------------------------------------------


def test_class_form_attributes() -> None:
    assert QA.signature_name == "QA"
    assert QA.instructions == "Answer the question in a few words.\n\nBe precise."
    assert list(QA.input_fields) == ["question", "context"]
    assert list(QA.output_fields) == ["answer", "confidence"]
    assert list(QA.fields) == ["question", "context", "answer", "confidence"]
    question = QA.fields["question"]
    assert question == FieldSpec("question", "input", str, "a trivia question", "Question:")
    assert QA.fields["context"].annotation == list[str]
    assert QA.fields["context"].prefix == "Facts:"
    assert QA.fields["confidence"].kind == "output"
    assert QA.signature == "question, context: list[str] -> answer, confidence: float"
    assert repr(QA) == "QA(question, context: list[str] -> answer, confidence: float)"


def test_every_supported_type_in_class_form() -> None:
    fields = Everything.fields
    assert fields["untyped"].annotation is str
    assert fields["sentiment"].annotation is Sentiment
    assert fields["maybe"].annotation == Optional[int]  # noqa: UP045
    assert fields["nested"].type_string == "dict[str, list[tuple[int, bool]]]"
    assert fields["maybe_too"].type_string == "list[Sentiment] | None"
    assert fields["mixed"].type_string == "Literal['a', 1, True]"
    assert fields["anything"].type_expr == {"type": "any"}
    assert list(Everything.input_fields) == ["text", "count", "ratio", "flag", "untyped"]


def test_inputs_come_first_whatever_the_declaration_order() -> None:
    class Mixed(Signature):
        out_one: str = OutputField()
        in_one: str = InputField()
        out_two: str = OutputField()
        in_two: str = InputField()

    assert list(Mixed.fields) == ["in_one", "in_two", "out_one", "out_two"]


def test_default_instructions_name_the_fields() -> None:
    class NoDoc(Signature):
        question: str = InputField()
        context: list[str] = InputField()
        answer: str = OutputField()
        confidence: float = OutputField()

    assert NoDoc.instructions == (
        "Given the fields `question`, `context`, produce the fields `answer`, `confidence`."
    )


def test_local_types_resolve_under_postponed_annotations() -> None:
    class Local(enum.Enum):
        A = "a"

    class UsesLocal(Signature):
        value: Local = InputField()
        result: list[Local] = OutputField()

    assert UsesLocal.fields["value"].annotation is Local
    assert UsesLocal.fields["result"].annotation == list[Local]


def test_inheritance_extends_the_parent_fields() -> None:
    class WithCitations(QA):
        citations: list[Citation] = OutputField()

    assert list(WithCitations.fields) == [
        "question",
        "context",
        "answer",
        "confidence",
        "citations",
    ]
    assert WithCitations.instructions == QA.instructions
    assert issubclass(WithCitations, QA)


@pytest.mark.parametrize(
    ("prefix_of", "expected"),
    [
        ("question", "Question:"),
        ("context_docs", "Context Docs:"),
        ("questionText", "Question Text:"),
        ("HTMLDoc", "HTML Doc:"),
        ("step2_result", "Step2 Result:"),
        ("a", "A:"),
    ],
)
def test_default_prefix_from_the_name(prefix_of: str, expected: str) -> None:
    assert FieldSpec(prefix_of, "input").prefix == expected


def test_bare_annotation_is_an_error_naming_the_field() -> None:
    with pytest.raises(SignatureError, match=r"`context`.*InputField"):

        class Bad(Signature):
            question: str = InputField()
            context: list[str]
            answer: str = OutputField()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"q": InputField()}, "signature Bad has no output fields"),
        ({"a": OutputField()}, "signature Bad has no input fields"),
        ({"q": InputField(), "fields": OutputField()}, "`fields`.*reserved"),
        ({"q": InputField(), "instructions": OutputField()}, "`instructions`.*reserved"),
        ({"q": InputField(), "a": OutputField(), "to_json": lambda: 1}, "'to_json'.*reserved"),
        ({"_q": InputField(), "a": OutputField()}, "'_q' must not start with '_'"),
    ],
)
def test_invalid_class_forms(body: dict[str, Any], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        type(Signature)("Bad", (Signature,), {"__module__": __name__, **body})


def test_unsupported_field_type_names_the_field() -> None:
    with pytest.raises(SignatureError, match=r"field `tags`.*unsupported type"):

        class Bad(Signature):
            question: str = InputField()
            tags: set[str] = OutputField()


def test_unresolvable_annotation_names_the_field() -> None:
    with pytest.raises(SignatureError, match=r"`answer`.*NoSuchType"):

        class Bad(Signature):
            question: str = InputField()
            answer: NoSuchType = OutputField()  # type: ignore[name-defined]  # noqa: F821


def test_reserved_names_cover_the_whole_public_surface() -> None:
    from dspex.programs.signature import RESERVED_NAMES

    public = {name for name in dir(Signature) if not name.startswith("_")}
    assert public <= RESERVED_NAMES
    assert {"instructions", "fields", "input_fields", "output_fields", "signature_name"} <= (
        RESERVED_NAMES
    )


# --- immutability ---------------------------------------------------------------


def test_signature_classes_cannot_be_modified() -> None:
    with pytest.raises(SignatureError, match="immutable"):
        QA.instructions = "other"
    with pytest.raises(SignatureError, match="immutable"):
        QA.new_attribute = 1  # type: ignore[attr-defined]
    with pytest.raises(SignatureError, match="immutable"):
        del QA.instructions
    with pytest.raises(TypeError):
        QA.fields["answer"] = FieldSpec("answer", "output")  # type: ignore[index]
    with pytest.raises(AttributeError):
        QA.fields["answer"].description = "x"  # type: ignore[misc]
    with pytest.raises(SignatureError, match="not instantiated"):
        QA()
    assert copy.deepcopy(QA) is QA


def test_dspy_spelling_builds_a_signature_from_the_base_class() -> None:
    built = Signature("question, context: list[str] -> answer", "Answer in one word.")
    assert built.equals(
        make_signature("question, context: list[str] -> answer", "Answer in one word.")
    )
    assert built.instructions == "Answer in one word."
    assert list(built.input_fields) == ["question", "context"]
    typed = Signature("q -> a: Level", custom_types={"Level": int})
    assert typed.output_fields["a"].annotation is int
    with pytest.raises(SignatureError, match="not both"):
        Signature("q -> a", types={"X": int}, custom_types={"X": int})
    with pytest.raises(SignatureError, match="'->'"):
        Signature("question answer")
    # A signature class itself is still not instantiated, with or without arguments.
    with pytest.raises(SignatureError, match="not instantiated; build one with"):
        QA("question -> answer")


# --- edits return new classes ----------------------------------------------------


def test_with_instructions() -> None:
    changed = QA.with_instructions("Be brief.")
    assert changed.instructions == "Be brief."
    assert QA.instructions.startswith("Answer")
    assert changed.signature_name == "QA"
    assert list(changed.fields) == list(QA.fields)
    with pytest.raises(SignatureError):
        QA.with_instructions("  ")


def test_append_prepend_insert_delete() -> None:
    appended = QA.append("source", InputField(desc="where"), str)
    assert list(appended.input_fields) == ["question", "context", "source"]
    assert appended.fields["source"].description == "where"
    prepended = QA.prepend("reasoning", OutputField(), str)
    assert list(prepended.output_fields) == ["reasoning", "answer", "confidence"]
    inserted = QA.insert(1, "hint", InputField(), Optional[str])  # noqa: UP045
    assert list(inserted.input_fields) == ["question", "hint", "context"]
    assert list(QA.insert(-1, "x", OutputField()).output_fields)[-1] == "x"
    assert list(QA.insert(-2, "x", OutputField()).output_fields) == ["answer", "x", "confidence"]
    deleted = QA.delete("confidence")
    assert list(deleted.fields) == ["question", "context", "answer"]
    assert list(QA.fields) == ["question", "context", "answer", "confidence"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda: QA.append("answer", OutputField()), "declared twice"),
        (lambda: QA.append("fields", OutputField()), "reserved"),
        (lambda: QA.append("bad name", OutputField()), "not a Python identifier"),
        (lambda: QA.append("x", "not a field"), "InputField"),
        (lambda: QA.append("x", OutputField(), set[int]), "unsupported type"),
        (lambda: QA.insert(5, "x", InputField()), "out of range"),
        (lambda: QA.insert(-4, "x", InputField()), "out of range"),
        (lambda: QA.delete("missing"), "no field `missing`"),
        (lambda: QA.delete("answer").delete("confidence"), "no output fields"),
        (lambda: QA.with_updated_field("missing", desc="x"), "no field `missing`"),
    ],
)
def test_invalid_edits(edit: Any, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        edit()


def test_with_updated_field() -> None:
    updated = QA.with_updated_field("answer", desc="short", prefix="Reply:", type_=list[str])
    spec = updated.fields["answer"]
    assert (spec.description, spec.prefix, spec.annotation) == ("short", "Reply:", list[str])
    assert QA.fields["answer"].annotation is str
    kept = QA.with_updated_field("context", desc="new")
    assert kept.fields["context"].prefix == "Facts:"


def test_default_instructions_follow_edits_but_written_ones_stay() -> None:
    plain = make_signature("question -> answer")
    assert "`confidence`" in plain.append("confidence", OutputField(), float).instructions
    written = make_signature("question -> answer", instructions="Reply.")
    assert written.append("confidence", OutputField(), float).instructions == "Reply."


def test_equals_compares_structure() -> None:
    same = make_signature(
        "question, context: list[str] -> answer, confidence: float",
        instructions=QA.instructions,
        name="Other",
    )
    same = same.with_updated_field("question", desc="a trivia question")
    same = same.with_updated_field("context", desc="facts", prefix="Facts:")
    same = same.with_updated_field("confidence", desc="0..1")
    assert QA.equals(same)
    assert same.equals(QA)
    assert not QA.equals(QA.with_instructions("x"))
    assert not QA.equals(QA.with_updated_field("answer", type_=int))
    assert not QA.equals(QA.with_updated_field("answer", prefix="A:"))
    assert not QA.equals("question -> answer")


# --- string form ----------------------------------------------------------------


def test_string_form() -> None:
    sig = make_signature("question, context: list[str] -> answer, confidence: float")
    assert sig.signature_name == "StringSignature"
    assert list(sig.input_fields) == ["question", "context"]
    assert sig.fields["context"].annotation == list[str]
    assert sig.fields["confidence"].annotation is float
    assert sig.instructions == (
        "Given the fields `question`, `context`, produce the fields `answer`, `confidence`."
    )
    assert Signature.parse("a -> b", "Do it.", "Named").instructions == "Do it."
    assert Signature.parse("a -> b", name="Named").signature_name == "Named"


def test_string_form_with_named_types() -> None:
    sig = make_signature(
        "text -> mood: Sentiment, cites: list[Citation] | None, kind: Literal['a', 'b']",
        types={"Sentiment": Sentiment, "Citation": Citation},
    )
    assert sig.fields["mood"].annotation is Sentiment
    assert sig.fields["cites"].annotation == Optional[list[Citation]]  # noqa: UP045
    assert sig.fields["kind"].annotation == Literal["a", "b"]


def test_string_form_round_trips_through_the_signature_property() -> None:
    types = {"Sentiment": Sentiment, "Priority": Priority, "Citation": Citation}
    again = make_signature(Everything.signature, Everything.instructions, "Everything", types)
    assert again.equals(Everything)


def test_mapping_form() -> None:
    sig = make_signature(
        {"question": InputField(), "n": (int, InputField(desc="how many")), "out": OutputField()},
        instructions="Count.",
    )
    assert sig.signature == "question, n: int -> out"
    assert sig.fields["n"].description == "how many"
    with pytest.raises(SignatureError, match="'n'"):
        make_signature({"q": InputField(), "n": (int, "nope"), "a": OutputField()})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("question answer", "no '->'"),
        ("question", "no '->'"),
        ("-> answer", "no input fields"),
        ("   -> answer", "no input fields"),
        ("question ->", "no output fields"),
        ("question ->   ", "no output fields"),
        ("a -> b -> c", "more than one '->'"),
        ("a, a -> b", "`a` appears twice"),
        ("a -> a", "`a` appears twice"),
        ("a, -> b", "expected an input field name"),
        ("a -> b,", "expected an output field name"),
        ("1a -> b", "expected an input field name"),
        ("a-b -> c", "expected"),
        ("_a -> b", "`_a` is not a valid field name"),
        ("class -> b", "`class` is not a valid field name"),
        ("a: list[str -> b", "expected ']'"),
        ("a: list[str]] -> b", "expected '->'"),
        ("a: Foo -> b", "unknown type name 'Foo'"),
        ("a: int | str -> b", "only `X | None`"),
        ("a: None -> b", "type None"),
        ("a -> b: set[int]", "unknown type name 'set'"),
        ("a -> b: dict[list[int], int]", "dict keys must be scalars"),
        ("a -> fields", "reserved"),
        ("a -> instructions: str", "reserved"),
        ("a -> b; c", "unexpected character ';'"),
        ("", "expected an input field name"),
    ],
)
def test_malformed_string_signatures(text: str, message: str) -> None:
    with pytest.raises(SignatureError, match=re.escape(message)) as info:
        make_signature(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("bad", [None, 3, ["a -> b"]])
def test_non_string_signature_is_an_error(bad: Any) -> None:
    with pytest.raises(SignatureError):
        make_signature(bad)


def test_bad_names_for_the_class() -> None:
    with pytest.raises(SignatureError, match="not a Python identifier"):
        make_signature("a -> b", name="two words")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_string_parser_raises_only_signature_error_on_any_text(text: str) -> None:
    try:
        sig = make_signature(text)
    except SignatureError:
        return
    assert sig.input_fields
    assert sig.output_fields


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab_,: ->[]|'Literal intstrNonedict.")), max_size=50))
def test_string_parser_raises_only_signature_error_on_signature_like_text(text: str) -> None:
    with contextlib.suppress(SignatureError):
        make_signature(text)


def test_ensure_signature() -> None:
    assert ensure_signature(QA) is QA
    assert ensure_signature("a -> b").signature == "a -> b"
    for bad in (Signature, 3, int, None):
        with pytest.raises(SignatureError, match="expected a signature"):
            ensure_signature(bad)  # type: ignore[arg-type]


# --- JSON -----------------------------------------------------------------------


def _wire(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data))  # type: ignore[no-any-return]


def test_to_json_shape() -> None:
    data = QA.to_json()
    assert data["name"] == "QA"
    assert data["instructions"] == QA.instructions
    assert data["fields"][1] == {
        "name": "context",
        "kind": "input",
        "type": {"type": "list", "items": {"type": "str"}},
        "description": "facts",
        "prefix": "Facts:",
    }


@pytest.mark.parametrize("signature", [QA, Everything])
def test_json_round_trip_with_importable_types(signature: type[Signature]) -> None:
    rebuilt = Signature.from_json(_wire(signature.to_json()))
    assert rebuilt.equals(signature)
    assert rebuilt.to_json() == signature.to_json()
    for name, spec in signature.fields.items():
        assert rebuilt.fields[name].annotation == spec.annotation, name


def test_json_round_trip_when_enums_and_models_are_not_importable() -> None:
    class Mood(enum.Enum):
        UP = "up"
        DOWN = "down"

    class Note(BaseModel):
        text: str
        mood: Mood = Mood.UP
        weight: float = Field(default=1.0, ge=0)

    class Local(Signature):
        """Classify."""

        text: str = InputField()
        mood: Mood = OutputField()
        notes: list[Note] | None = OutputField()

    data = _wire(Local.to_json())
    rebuilt = Signature.from_json(data)
    assert rebuilt.equals(Local)
    assert rebuilt.to_json() == data
    mood_type = rebuilt.fields["mood"].annotation
    assert mood_type is not Mood
    assert rebuilt.fields["mood"].coerce("DOWN") is mood_type.DOWN
    notes = rebuilt.fields["notes"].coerce('[{"text": "hi", "mood": "down"}]')
    assert notes[0].text == "hi"
    assert notes[0].mood.value == "down"
    with pytest.raises(CoercionError, match="notes"):
        rebuilt.fields["notes"].coerce('[{"text": "hi", "weight": -1}]')


def test_from_json_with_explicit_types() -> None:
    class Mood(enum.Enum):
        UP = "up"

    sig = make_signature("a -> m: Mood", types={"Mood": Mood})
    rebuilt = Signature.from_json(_wire(sig.to_json()), types={"Mood": Mood})
    assert rebuilt.fields["m"].annotation is Mood


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "'fields' list"),
        ({"name": "X"}, "'fields' list"),
        ({"name": "bad name", "fields": []}, "invalid name"),
        ({"name": "X", "instructions": 3, "fields": []}, "instructions"),
        ({"name": "X", "fields": []}, "no input fields"),
        ({"name": "X", "fields": ["q"]}, "malformed field"),
        ({"name": "X", "fields": [{"name": "q", "kind": "sideways"}]}, "kind 'sideways'"),
        (
            {"name": "X", "fields": [{"name": "q", "kind": "input", "type": {"type": "set"}}]},
            "field `q`.*unknown type expression",
        ),
        (
            {"name": "X", "fields": [{"name": "q", "kind": "input", "description": 3}]},
            "description must be a string",
        ),
    ],
)
def test_from_json_rejects_malformed_data(data: Any, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        Signature.from_json(data)


# --- FieldSpec helpers -------------------------------------------------------------


def test_json_schema_is_cached_and_copied() -> None:
    spec = Everything.fields["citation"]
    schema = spec.json_schema()
    assert schema["properties"]["source"]["description"] == "a URL or title"
    schema["mutated"] = True
    assert "mutated" not in spec.json_schema()
    assert Everything.fields["label"].json_schema() == {"enum": ["spam", "ham"], "type": "string"}


def test_type_expr_is_a_fresh_copy() -> None:
    spec = QA.fields["context"]
    spec.type_expr["items"] = {"type": "int"}
    assert spec.type_expr == {"type": "list", "items": {"type": "str"}}


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("text", 42, "42"),
        ("text", "  kept as is ", "  kept as is "),
        ("text", True, "true"),
        ("text", {"a": 1}, '{"a": 1}'),
        ("count", "3", 3),
        ("count", " 3. ", 3),
        ("count", '"7"', 7),
        ("count", 4.0, 4),
        ("ratio", "0.25", 0.25),
        ("ratio", 1, 1.0),
        ("flag", "yes", True),
        ("flag", " True. ", True),
        ("flag", "no", False),
        ("flag", "false", False),
        ("flag", 1, True),
        ("sentiment", "positive", Sentiment.POSITIVE),
        ("sentiment", " 'Negative'. ", Sentiment.NEGATIVE),
        ("sentiment", "NEUTRAL", Sentiment.NEUTRAL),
        ("sentiment", "Sentiment.POSITIVE", Sentiment.POSITIVE),
        ("sentiment", Sentiment.NEUTRAL, Sentiment.NEUTRAL),
        ("priority", "2", Priority.HIGH),
        ("priority", "low", Priority.LOW),
        ("label", "`SPAM`", "spam"),
        ("label", '"ham"\n', "ham"),
        ("mixed", "1", 1),
        ("mixed", "true", True),
        ("mixed", True, True),
        ("mixed", "A", "a"),
        ("citation", '{"source": "wiki", "page": "3"}', Citation(source="wiki", page=3)),
        ("citation", {"source": "wiki"}, Citation(source="wiki")),
        ("citations", '```json\n[{"source": "a"}]\n```', [Citation(source="a")]),
        ("scores", '{"a": "0.5", "b": 1}', {"a": 0.5, "b": 1.0}),
        ("pair", '[1, "x"]', (1, "x")),
        ("pair", ["2", 3], (2, "3")),
        ("many", "[1, 2, 3]", (1, 2, 3)),
        ("maybe", "null", None),
        ("maybe", " None ", None),
        ("maybe", "", None),
        ("maybe", None, None),
        ("maybe", "5", 5),
        ("maybe_too", '["positive", "NEGATIVE"]', [Sentiment.POSITIVE, Sentiment.NEGATIVE]),
        ("maybe_text", "null", None),
        ("maybe_text", " None ", None),
        ("maybe_text", "", ""),
        ("maybe_text", "n/a", "n/a"),
        ("maybe_text", "'null'", "'null'"),
        ("nested", '{"k": [[1, "yes"]]}', {"k": [(1, True)]}),
        ("anything", '{"raw": 1}', '{"raw": 1}'),
    ],
)
def test_coerce_accepts_what_lms_write(field: str, raw: Any, expected: Any) -> None:
    result = Everything.fields[field].coerce(raw)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("count", "three"),
        ("count", "3.5"),
        ("ratio", "high"),
        ("flag", "maybe"),
        ("sentiment", "angry"),
        ("label", "eggs"),
        ("mixed", 2),
        ("citation", "not json"),
        ("citation", '{"page": 1}'),
        ("citations", '{"source": "a"}'),
        ("pair", "[1]"),
        ("scores", "[1, 2]"),
        ("text", None),
        ("maybe", "many"),
    ],
)
def test_coerce_failures_name_the_field(field: str, raw: Any) -> None:
    spec = Everything.fields[field]
    with pytest.raises(CoercionError) as info:
        spec.coerce(raw)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert f"field `{field}`" in str(info.value)
    assert spec.type_string in str(info.value)


_lm_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=12),
        st.sampled_from(["null", "yes", "3", '["a"]', '{"source": 1}', "```json\n[1]\n```"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(Everything.output_fields)), _lm_values)
def test_coerce_raises_only_coercion_error(field: str, raw: Any) -> None:
    with contextlib.suppress(CoercionError):
        Everything.fields[field].coerce(raw)
    with contextlib.suppress(CoercionError):
        Everything.fields[field].coerce(json.dumps(raw))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("text", "hello", "hello"),
        ("text", 7, "7"),
        ("count", 3, 3),
        ("count", "3", 3),
        ("flag", True, True),
        ("sentiment", "positive", Sentiment.POSITIVE),
        ("citation", {"source": "s"}, Citation(source="s")),
        ("maybe", None, None),
        ("pair", (1, "a"), (1, "a")),
    ],
)
def test_validate_input_accepts_fitting_values(field: str, value: Any, expected: Any) -> None:
    assert Everything.fields[field].validate_input(value) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text", ["a list"]),
        ("text", None),
        ("text", {"a": 1}),
        ("count", "three"),
        ("count", [1]),
        ("citations", '[{"source": "a"}]'),
        ("citation", "text"),
        ("sentiment", "Positive"),
        ("pair", (1, 2, 3)),
    ],
)
def test_validate_input_rejects_clearly_wrong_values(field: str, value: Any) -> None:
    with pytest.raises(InputError, match=f"field `{field}`") as info:
        Everything.fields[field].validate_input(value)
    assert info.value.fields == (field,)


def test_field_spec_validation() -> None:
    with pytest.raises(SignatureError, match="kind"):
        FieldSpec("a", "sideways")  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="identifier"):
        FieldSpec("a b", "input")
    with pytest.raises(SignatureError, match="keyword"):
        FieldSpec("for", "input")
    assert FieldSpec.from_json(FieldSpec("a", "input", list[int]).to_json()) == FieldSpec(
        "a", "input", list[int]
    )


def test_field_spec_copies_and_pickles_without_its_caches() -> None:
    spec = Everything.fields["citations"]
    spec.coerce("[]")  # builds the cached TypeAdapter
    for clone in (copy.deepcopy(spec), pickle.loads(pickle.dumps(spec))):
        assert clone == spec
        assert clone.coerce('[{"source": "s"}]') == [Citation(source="s")]
