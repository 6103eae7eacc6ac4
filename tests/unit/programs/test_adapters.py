"""ChatAdapter and JSONAdapter: prompts, demos, typed parsing and clear failures."""

from __future__ import annotations

import enum
import json
from typing import Literal

import pytest
from pydantic import BaseModel

from dspex.errors import AdapterParseError
from dspex.programs.adapters import ChatAdapter, JSONAdapter
from dspex.programs.adapters.base import output_schema
from dspex.programs.signature import InputField, OutputField, Signature, make_signature


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Person(BaseModel):
    name: str
    age: int


class Everything(Signature):
    """Fill every field."""

    text: str = InputField(desc="some text")
    label: Literal["pos", "neg"] = OutputField()
    count: int = OutputField()
    score: float = OutputField()
    flag: bool = OutputField()
    tags: list[str] = OutputField()
    mood: Mood = OutputField()
    person: Person = OutputField()
    notes: str | None = OutputField()


EVERYTHING_VALUES = {
    "label": "pos",
    "count": 3,
    "score": 0.5,
    "flag": True,
    "tags": ["a", "b"],
    "mood": Mood.SAD,
    "person": Person(name="Ada", age=36),
    "notes": None,
}


def _chat_completion(values: dict[str, str]) -> str:
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in values.items())
    return f"{body}\n\n[[ ## completed ## ]]"


def test_chat_parses_every_field_type() -> None:
    completion = _chat_completion(
        {
            "label": "pos",
            "count": "3",
            "score": "0.5",
            "flag": "true",
            "tags": '["a", "b"]',
            "mood": "sad",
            "person": '{"name": "Ada", "age": 36}',
            "notes": "null",
        }
    )
    assert ChatAdapter().parse(Everything, completion) == EVERYTHING_VALUES


def test_json_parses_every_field_type_even_in_a_code_fence() -> None:
    payload = {
        "label": "pos",
        "count": 3,
        "score": 0.5,
        "flag": True,
        "tags": ["a", "b"],
        "mood": "sad",
        "person": {"name": "Ada", "age": 36},
        "notes": None,
    }
    completion = "```json\n" + json.dumps(payload) + "\n```"
    assert JSONAdapter().parse(Everything, completion) == EVERYTHING_VALUES


def test_chat_missing_field_names_it() -> None:
    sig = make_signature("question -> answer, confidence: float")
    with pytest.raises(AdapterParseError, match="`confidence`") as info:
        ChatAdapter().parse(sig, _chat_completion({"answer": "Paris"}))
    assert info.value.field == "confidence"
    assert info.value.adapter == "chat"
    assert "Paris" in info.value.completion


def test_chat_wrong_type_names_field_and_value() -> None:
    sig = make_signature("question -> n: int")
    with pytest.raises(AdapterParseError, match=r"`n`.*'many'") as info:
        ChatAdapter().parse(sig, _chat_completion({"n": "many"}))
    assert info.value.field == "n"


def test_literal_outside_the_allowed_labels_is_rejected() -> None:
    sig = make_signature("text -> label: Literal['pos', 'neg']")
    with pytest.raises(AdapterParseError) as info:
        JSONAdapter().parse(sig, '{"label": "neutral"}')
    assert info.value.field == "label"


@pytest.mark.parametrize(
    ("completion", "problem"),
    [
        ("", "no JSON object"),
        ("I think the answer is Paris", "no JSON object"),
        ('{"answer": "Paris"', "no JSON object"),
        ('{"answer": Paris}', "invalid JSON"),
        ('[{"answer": "Paris"}]', "invalid JSON|expected a JSON object"),
    ],
)
def test_json_malformed_completions(completion: str, problem: str) -> None:
    sig = make_signature("question -> answer")
    with pytest.raises(AdapterParseError, match=problem) as info:
        JSONAdapter().parse(sig, completion)
    assert info.value.completion == completion


def test_json_missing_key_names_it() -> None:
    sig = make_signature("question -> answer, source")
    with pytest.raises(AdapterParseError, match="`source`") as info:
        JSONAdapter().parse(sig, '{"answer": "Paris"}')
    assert info.value.field == "source"


def test_chat_format_has_instructions_fields_and_demos_as_turns() -> None:
    sig = make_signature("question -> answer", instructions="Answer tersely.")
    demos = [{"question": "2+2?", "answer": "4"}, {"answer": "no inputs: skipped"}]
    messages = ChatAdapter().format(sig, demos, {"question": "3+3?"})
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert "Answer tersely." in messages[0].content
    assert "`question`" in messages[0].content
    assert "[[ ## answer ## ]]" in messages[0].content
    assert "[[ ## question ## ]]\n2+2?" in messages[1].content
    assert messages[2].content.startswith("[[ ## answer ## ]]\n4")
    assert "3+3?" in messages[3].content


def test_chat_round_trip_of_its_own_demo_rendering() -> None:
    sig = make_signature("question -> answer, n: int")
    messages = ChatAdapter().format(
        sig, [{"question": "q", "answer": "a", "n": 7}], {"question": "x"}
    )
    assert ChatAdapter().parse(sig, messages[2].content) == {"answer": "a", "n": 7}


def test_json_format_asks_for_a_schema_with_every_output() -> None:
    response_format = JSONAdapter().response_format(Everything)
    schema = response_format.json_schema
    assert schema == output_schema(Everything)
    assert schema["required"] == list(Everything.output_fields)
    assert schema["properties"]["label"]["enum"] == ["pos", "neg"]
    assert schema["additionalProperties"] is False


def test_json_demo_rendering_round_trips() -> None:
    sig = make_signature("question -> answer, n: int")
    messages = JSONAdapter().format(
        sig, [{"question": "q", "answer": "a", "n": 7}], {"question": "x"}
    )
    assert JSONAdapter().parse(sig, messages[2].content) == {"answer": "a", "n": 7}
