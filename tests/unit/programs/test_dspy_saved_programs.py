"""Programs saved by DSPy 3.4 itself load into the equivalent dspex programs.

The files in fixtures/dspy were written by ``program.save(...)`` in DSPy's own
interpreter (fixtures/dspy/generate.py says how and with what). DSPy's file
holds instructions, demos and each field's prefix and description, not field
types: the types come from the dspex program's signature.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest

from dspex.errors import StateError
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict
from dspex.programs.react import ReAct
from dspex.programs.signature import InputField, OutputField, Signature
from dspex.programs.state import load_dspy_state

SAVED = Path(__file__).parent / "fixtures" / "dspy"


def saved(name: str) -> Path:
    return SAVED / f"{name}.json"


def test_the_fixtures_were_written_by_dspy_3_4() -> None:
    for path in SAVED.glob("*.json"):
        metadata = json.loads(path.read_text())["metadata"]
        assert metadata["dependency_versions"]["dspy"].startswith("3.4"), path.name


def test_a_lone_predict_whose_state_is_the_files_top_level() -> None:
    program = load_dspy_state(Predict("question -> answer"), saved("bare_predict"))
    assert program.signature.instructions == "Answer with one word."
    assert [dict(demo) for demo in program.demos] == [
        {"question": "Capital of France?", "answer": "Paris"},
        {"question": "2 + 2?", "answer": "4"},
    ]
    assert program.signature.fields["answer"].prefix == "Answer:"


def test_a_lone_predict_state_refuses_a_program_with_several_predictors() -> None:
    with pytest.raises(StateError, match="lone Predict's") as caught:
        load_dspy_state(TwoStep(), saved("bare_predict"))
    assert "['answer.predict', 'summarize']" in str(caught.value)


def test_chain_of_thought_keeps_its_reasoning_demos() -> None:
    program = load_dspy_state(ChainOfThought("question -> answer"), saved("chain_of_thought"))
    assert program.predict.signature.instructions == "Think, then answer briefly."
    (demo,) = program.predict.demos
    assert dict(demo) == {
        "question": "Legs of a spider?",
        "reasoning": "Spiders are arachnids.",
        "answer": "8",
    }


class Classify(Signature):
    """A different docstring: the saved instructions replace it."""

    ticket: str = InputField()
    labels: list[str] = InputField()
    label: Literal["billing", "technical", "other"] = OutputField()
    confidence: float = OutputField()


def test_a_typed_signature_takes_the_saved_descriptions_and_keeps_its_types() -> None:
    program = load_dspy_state(Predict(Classify), saved("typed_predict"))
    fields = program.signature.fields
    assert program.signature.instructions == "Classify the support ticket."
    assert fields["ticket"].description == "the customer's message"
    assert fields["confidence"].description == "between 0 and 1"
    assert fields["labels"].annotation == list[str]
    assert fields["label"].annotation == Literal["billing", "technical", "other"]
    (demo,) = program.demos
    assert demo["labels"] == ["billing", "technical", "other"]
    assert demo["confidence"] == 0.9


class TwoStep(Module):
    def __init__(self) -> None:
        super().__init__()
        self.summarize = Predict("document -> summary")
        self.answer = ChainOfThought("summary, question -> answer")


def test_a_custom_module_with_several_predictors() -> None:
    program = load_dspy_state(TwoStep(), saved("two_step"))
    assert program.summarize.signature.instructions == "Summarize in one sentence."
    assert program.summarize.demos == []
    (demo,) = program.answer.predict.demos
    assert demo["answer"] == "Kafka"


def lookup(term: str) -> str:
    """Look a term up."""
    return term


def test_react_loads_its_agent_and_extraction_predictors() -> None:
    program = load_dspy_state(
        ReAct("question -> answer", tools=[lookup], max_iters=3), saved("react")
    )
    predictors = dict(program.named_predictors())
    assert predictors["react"].signature.instructions.endswith("Prefer one lookup.")
    assert predictors["extract.predict"].signature.fields["answer"].prefix == "Answer:"
