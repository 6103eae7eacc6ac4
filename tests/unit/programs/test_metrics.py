"""String metrics: normalisation, lists of gold answers, the compared field."""

from __future__ import annotations

import pytest

from dspex.errors import InputError
from dspex.programs.example import Example, Prediction
from dspex.programs.metrics import contains, exact_match, f1, normalize_text


def qa(answer: object) -> Example:
    return Example(question="q", answer=answer).with_inputs("question")


def test_normalize_text_drops_case_punctuation_and_articles() -> None:
    assert normalize_text("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"


@pytest.mark.parametrize(
    ("gold", "predicted", "expected"),
    [
        ("Paris", "paris.", True),
        ("Paris", "Paris, France", False),
        (["Lyon", "Paris"], "paris", True),
    ],
)
def test_exact_match(gold: object, predicted: str, expected: bool) -> None:
    assert exact_match(qa(gold), Prediction(answer=predicted)) is expected


def test_contains_matches_whole_words_only() -> None:
    assert contains(qa("Paris"), Prediction(answer="It is Paris, of course"))
    assert not contains(qa("Par"), Prediction(answer="Paris"))


def test_f1_is_token_overlap() -> None:
    assert f1(qa("the big red dog"), Prediction(answer="a red dog")) == pytest.approx(0.8)
    assert f1(qa("cat"), Prediction(answer="dog")) == 0.0
    assert f1(qa(["cat", "red dog"]), Prediction(answer="red dog")) == 1.0


def test_field_defaults_to_the_only_label_and_can_be_named() -> None:
    example = Example(text="t", label="pos").with_inputs("text")
    assert exact_match(example, Prediction(label="POS"))
    with pytest.raises(InputError, match="prediction has no field `label`"):
        exact_match(example, Prediction(answer="pos"))
    assert exact_match(qa("x"), Prediction(answer="y", alt="x"), field=None) is False
    with pytest.raises(InputError, match="example has no field `alt`"):
        exact_match(qa("x"), Prediction(alt="x"), field="alt")
