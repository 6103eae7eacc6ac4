"""Example and Prediction: immutable records with inputs/labels, usage, trace and completions."""

from __future__ import annotations

import copy
import enum
import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from dspex.errors import InputError, StateError
from dspex.programs.example import Example, Prediction, TraceStep
from dspex.programs.lm.types import TokenUsage


class Mood(enum.Enum):
    UP = "up"


class Note(BaseModel):
    text: str


def qa() -> Example:
    return Example(question="What is 2+2?", context=["math"], answer="4")


# --- Example --------------------------------------------------------------------


def test_construction_forms_are_equivalent() -> None:
    from_kwargs = qa()
    from_mapping = Example({"question": "What is 2+2?", "context": ["math"], "answer": "4"})
    from_example = Example(from_kwargs)
    assert from_kwargs == from_mapping == from_example
    merged = Example({"a": 1, "b": 2}, b=3, c=4)
    assert merged.to_dict() == {"a": 1, "b": 3, "c": 4}
    assert Example().to_dict() == {}
    assert Example({"data": 1}, data=2).data == 2  # the positional name does not clash


def test_mapping_and_attribute_access() -> None:
    ex = qa()
    assert ex.question == ex["question"] == "What is 2+2?"
    assert list(ex) == ["question", "context", "answer"]
    assert list(ex.keys()) == ["question", "context", "answer"]
    assert list(ex.values()) == ["What is 2+2?", ["math"], "4"]
    assert dict(ex.items()) == ex.to_dict()
    assert len(ex) == 3
    assert "answer" in ex
    assert "missing" not in ex
    assert ex.get("missing", "default") == "default"
    assert ex.get("answer") == "4"
    with pytest.raises(KeyError):
        ex["missing"]
    with pytest.raises(AttributeError, match="no field `missing`"):
        _ = ex.missing
    assert "question" in dir(ex)


def test_example_is_immutable() -> None:
    ex = qa()
    with pytest.raises(AttributeError, match="immutable"):
        ex.answer = "5"
    with pytest.raises(AttributeError, match="immutable"):
        ex.new = 1
    with pytest.raises(AttributeError, match="immutable"):
        del ex.answer
    with pytest.raises(TypeError):
        ex["answer"] = "5"  # type: ignore[index]
    ex.to_dict()["answer"] = "5"
    assert ex.answer == "4"
    with pytest.raises(TypeError):
        hash(ex)


def test_keys_must_be_strings() -> None:
    with pytest.raises(InputError, match="keys must be strings"):
        Example({1: "a"})  # type: ignore[dict-item]
    with pytest.raises(InputError, match="mapping"):
        Example(["a"])  # type: ignore[arg-type]


def test_with_inputs_inputs_and_labels() -> None:
    ex = qa().with_inputs("question", "context")
    assert ex.input_keys == frozenset({"question", "context"})
    assert ex.inputs() == Example(question="What is 2+2?", context=["math"]).with_inputs(
        "question", "context"
    )
    assert ex.labels().to_dict() == {"answer": "4"}
    assert ex.labels().input_keys is None
    assert qa().input_keys is None
    assert qa().with_inputs("question").with_inputs("answer").input_keys == {"answer"}


def test_with_inputs_names_missing_keys() -> None:
    with pytest.raises(InputError, match="`nope`") as info:
        qa().with_inputs("question", "nope")
    assert info.value.fields == ("nope",)


@pytest.mark.parametrize("method", ["inputs", "labels"])
def test_inputs_and_labels_need_with_inputs(method: str) -> None:
    with pytest.raises(InputError, match="with_inputs"):
        getattr(qa(), method)()


def test_copy_and_without_keep_input_keys() -> None:
    ex = qa().with_inputs("question")
    changed = ex.copy(answer="four", extra=1)
    assert changed.answer == "four"
    assert changed.extra == 1
    assert changed.input_keys == {"question"}
    assert ex.answer == "4"
    trimmed = ex.without("question", "context")
    assert trimmed.to_dict() == {"answer": "4"}
    assert trimmed.input_keys == frozenset()
    with pytest.raises(InputError, match="`missing`"):
        ex.without("missing")


def test_equality_includes_input_keys() -> None:
    assert qa() == qa()
    assert qa() != qa().copy(answer="5")
    assert qa().with_inputs("question") != qa()
    assert qa().with_inputs("question") == qa().with_inputs("question")
    assert qa() != qa().to_dict()


def test_repr_is_readable() -> None:
    assert repr(Example(a=1, b="x").with_inputs("b")) == "Example(a=1, b='x').with_inputs('b')"
    long = repr(Example(text="y" * 200))
    assert len(long) < 100
    assert long.endswith("...)")
    assert "'two words'" in repr(Example({"two words": 1}))


def test_json_round_trip_keeps_input_keys() -> None:
    ex = qa().with_inputs("context", "question")
    data = json.loads(json.dumps(ex.to_json()))
    assert data == {
        "fields": {"question": "What is 2+2?", "context": ["math"], "answer": "4"},
        "input_keys": ["question", "context"],
    }
    assert Example.from_json(data) == ex
    assert Example.from_json(qa().to_json()).input_keys is None


def test_json_makes_values_json_ready() -> None:
    ex = Example(mood=Mood.UP, note=Note(text="hi"), pair=(1, 2))
    assert ex.to_json()["fields"] == {"mood": "up", "note": {"text": "hi"}, "pair": [1, 2]}
    with pytest.raises(InputError, match="`thing`"):
        Example(thing=object()).to_json()


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"fields": []},
        {"fields": {}, "input_keys": "a"},
        {"fields": {"a": 1}, "input_keys": ["b"]},
    ],
)
def test_from_json_rejects_malformed_data(data: Any) -> None:
    with pytest.raises(StateError):
        Example.from_json(data)


def test_copy_and_pickle() -> None:
    ex = qa().with_inputs("question")
    assert copy.copy(ex) == ex
    deep = copy.deepcopy(ex)
    assert deep == ex
    assert deep.context is not ex.context
    assert pickle.loads(pickle.dumps(ex)) == ex


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=5), st.data())
def test_json_round_trip_property(fields: dict[str, Any], data: st.DataObject) -> None:
    ex = Example(fields)
    if fields and data.draw(st.booleans()):
        ex = ex.with_inputs(*data.draw(st.lists(st.sampled_from(sorted(fields)), unique=True)))
    assert Example.from_json(json.loads(json.dumps(ex.to_json()))) == ex


# --- Prediction ------------------------------------------------------------------


def _usage(prompt: int, completion: int = 0) -> TokenUsage:
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion, calls=1)


def test_prediction_fields_and_defaults() -> None:
    pred = Prediction({"answer": "4"}, confidence=0.9)
    assert pred.answer == pred["answer"] == "4"
    assert pred.to_dict() == {"answer": "4", "confidence": 0.9}
    assert pred.usage == TokenUsage()
    assert pred.trace == ()
    assert pred.completions == ({"answer": "4", "confidence": 0.9},)
    assert Prediction(answer="4") == Prediction({"answer": "4"})
    assert repr(pred) == "Prediction(answer='4', confidence=0.9)"


def test_prediction_is_immutable() -> None:
    pred = Prediction(answer="4")
    with pytest.raises(AttributeError, match="immutable"):
        pred.answer = "5"
    with pytest.raises(AttributeError):
        pred.usage = TokenUsage()  # type: ignore[misc]
    pred.completions[0]["answer"] = "changed"
    assert pred.completions[0]["answer"] == "4"


def test_fields_named_like_keywords_go_through_the_mapping() -> None:
    pred = Prediction({"usage": "field", "outputs": 1})
    assert pred["usage"] == "field"
    assert pred.usage == TokenUsage()
    assert pred["outputs"] == 1


def test_field_given_twice_is_an_error() -> None:
    with pytest.raises(InputError, match="given twice: answer"):
        Prediction({"answer": "a"}, answer="b")


def test_completions() -> None:
    candidates = [{"answer": "4"}, {"answer": "5"}]
    pred = Prediction(completions=candidates)
    assert pred.answer == "4"
    assert pred.completions == tuple(candidates)
    assert repr(pred).endswith("# +1 more completion(s)")
    with pytest.raises(InputError, match="must not be empty"):
        Prediction({"answer": "4"}, completions=[])


def test_the_first_completion_is_always_the_prediction() -> None:
    chosen = Prediction(
        {"answer": "5"}, completions=[{"answer": "4"}, {"answer": "5"}, {"answer": "6"}]
    )
    assert chosen.completions == ({"answer": "5"}, {"answer": "4"}, {"answer": "6"})
    outside = Prediction({"answer": "7"}, completions=[{"answer": "4"}])
    assert outside.completions == ({"answer": "7"}, {"answer": "4"})


def test_usage_trace_and_merge_usage() -> None:
    step = TraceStep(
        predictor="generate_answer.predict",
        signature_name="QA",
        inputs={"question": "2+2?"},
        outputs={"answer": "4"},
        usage=_usage(10, 2),
        latency_s=0.5,
    )
    first = Prediction(answer="4", usage=_usage(10, 2), trace=[step])
    second = Prediction(answer="5", usage=_usage(5, 1))
    assert first.trace == (step,)
    total = Prediction.merge_usage(first, second)
    assert (total.prompt_tokens, total.completion_tokens, total.calls) == (15, 3, 2)
    assert Prediction.merge_usage() == TokenUsage()


def test_trace_step_is_frozen_and_round_trips() -> None:
    step = TraceStep("p", "Sig", {"q": Mood.UP}, {"a": Note(text="x")})
    with pytest.raises(AttributeError):
        step.predictor = "other"  # type: ignore[misc]
    data = json.loads(json.dumps(step.to_json()))
    assert data["inputs"] == {"q": "up"}
    again = TraceStep.from_json(data)
    assert again.outputs == {"a": {"text": "x"}}
    assert again.usage == TokenUsage()
    for bad in (None, {"predictor": "p"}, {"predictor": 1, "signature_name": "S"}):
        with pytest.raises(StateError):
            TraceStep.from_json(bad)


def test_prediction_copy_keeps_accounting_and_updates_the_first_completion() -> None:
    pred = Prediction(
        {"answer": "4"}, usage=_usage(3), completions=[{"answer": "4"}, {"answer": "5"}]
    )
    changed = pred.copy(answer="four")
    assert changed.answer == "four"
    assert changed.usage == pred.usage
    assert changed.completions == ({"answer": "four"}, {"answer": "5"})
    assert pred.without("answer").to_dict() == {}


def test_prediction_equality_includes_accounting() -> None:
    assert Prediction(answer="4") == Prediction(answer="4")
    assert Prediction(answer="4") != Prediction(answer="4", usage=_usage(1))
    assert Prediction(answer="4") != Example(answer="4")


def test_prediction_json_and_pickle_round_trips() -> None:
    step = TraceStep("p", "Sig", {"q": "2+2?"}, {"answer": "4"}, _usage(2, 1), 0.1)
    pred = Prediction(
        {"answer": "4"},
        usage=_usage(2, 1),
        trace=[step],
        completions=[{"answer": "4"}, {"answer": "5"}],
    )
    data = json.loads(json.dumps(pred.to_json()))
    assert Prediction.from_json(data) == pred
    assert pickle.loads(pickle.dumps(pred)) == pred
    assert copy.deepcopy(pred) == pred
    for bad in (
        None,
        {},
        {"outputs": {}, "usage": {"prompt_tokens": "x"}},
        {"outputs": {}, "trace": [3]},
    ):
        with pytest.raises(StateError):
            Prediction.from_json(bad)


def test_example_from_prediction() -> None:
    pred = Prediction(answer="4")
    assert Example(pred, question="2+2?").to_dict() == {"answer": "4", "question": "2+2?"}
