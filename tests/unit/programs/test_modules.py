"""Module structure, input checks, state, specs and DSPy import — no LM needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dspex.errors import ConfigurationError, InputError, StateError
from dspex.programs.compose import majority
from dspex.programs.example import Example, Prediction
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict
from dspex.programs.react import ReAct, Tool
from dspex.programs.state import ProgramRegistry, ProgramSpec, load_dspy_state

FIXTURES = Path(__file__).parent / "fixtures"


class QAProgram(Module):
    def __init__(self) -> None:
        self.generate_answer = ChainOfThought("question -> answer")
        self.checks = [Predict("answer -> ok: bool"), Predict("answer -> score: float")]

    async def aforward(self, question: str) -> Prediction:
        return await self.generate_answer.acall(question=question)


def test_named_predictors_walk_attributes_lists_in_order() -> None:
    names = [name for name, _ in QAProgram().named_predictors()]
    assert names == ["generate_answer.predict", "checks[0]", "checks[1]"]
    assert [n for n, _ in Predict("a -> b").named_predictors()] == ["self"]
    assert [n for n, _ in ChainOfThought("a -> b").named_predictors()] == ["predict"]


def test_chain_of_thought_prepends_reasoning() -> None:
    cot = ChainOfThought("question -> answer")
    assert list(cot.predict.signature.output_fields) == ["reasoning", "answer"]
    assert list(cot.signature.output_fields) == ["answer"]


def test_deepcopy_copies_demos_but_shares_lm() -> None:
    lm: Any = object.__new__(type("FakeLMHandle", (), {}))  # identity only; never called
    program = QAProgram()
    program.generate_answer.predict.lm = lm
    program.generate_answer.predict.demos = [Example(question="q", answer="a")]
    copy = program.deepcopy()
    assert copy.generate_answer.predict.lm is lm
    assert copy.generate_answer.predict is not program.generate_answer.predict
    copy.generate_answer.predict.demos.append(Example(question="q2", answer="b"))
    assert len(program.generate_answer.predict.demos) == 1
    copy.reset()
    assert copy.generate_answer.predict.demos == []


def test_forward_instead_of_aforward_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="async def aforward"):

        class Old(Module):  # pragma: no cover - the class statement raises
            def forward(self, question: str) -> Prediction:
                return Prediction(answer=question)


async def test_missing_and_unexpected_inputs_are_named_before_any_lm_call() -> None:
    predict = Predict("question, context: list[str] -> answer")
    with pytest.raises(InputError, match="missing input field.*`context`") as info:
        await predict.acall(question="q")
    assert info.value.fields == ("context",)
    with pytest.raises(InputError, match="unexpected input field.*`extra`") as info:
        await predict.acall(question="q", context=[], extra=1)
    assert info.value.fields == ("extra",)
    with pytest.raises(InputError, match="`context`"):
        await predict.acall(question="q", context=42)


async def test_no_lm_configured_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no LM configured"):
        await Predict("question -> answer").acall(question="q")


def test_state_round_trip_keeps_instructions_demos_and_parameters() -> None:
    program = QAProgram()
    predictor = program.generate_answer.predict
    predictor.signature = predictor.signature.with_instructions("Be brief.")
    predictor.demos = [Example(question="q", reasoning="r", answer="a")]
    predictor.lm_kwargs = {"temperature": 0.3, "max_tokens": 64, "api_key": "sk-nope"}
    state = json.loads(json.dumps(program.dump_state()))
    assert "sk-nope" not in json.dumps(state)

    fresh = QAProgram().load_state(state)
    loaded = fresh.generate_answer.predict
    assert loaded.signature.instructions == "Be brief."
    assert loaded.demos == [Example(question="q", reasoning="r", answer="a")]
    assert loaded.lm_kwargs == {"temperature": 0.3, "max_tokens": 64}


def test_state_for_another_structure_is_rejected() -> None:
    state = QAProgram().dump_state()
    with pytest.raises(StateError, match="missing predictors"):
        QAProgram().load_state({k: v for k, v in state.items() if k != "checks[0]"})
    with pytest.raises(StateError, match="fields"):
        Predict("question -> answer").load_state({"self": state["checks[0]"]})


@pytest.mark.parametrize("make", [lambda: Predict("q -> a: int"), lambda: ChainOfThought("q -> a")])
def test_program_spec_rebuilds_builtin_kinds_from_json(make: Any) -> None:
    program = make()
    program.predictors()[0].demos = [Example(q="x", a=1)]
    spec = ProgramSpec.from_program(program)
    rebuilt = ProgramSpec.model_validate_json(spec.model_dump_json(by_alias=True)).build()
    assert type(rebuilt) is type(program)
    assert rebuilt.dump_state() == program.dump_state()
    assert json.loads(spec.model_dump_json(by_alias=True))["schema"] == "dspex.program_spec/v1"


def lookup(term: str) -> str:
    """Look a term up."""
    return term.upper()


def test_program_spec_for_react_names_registered_tools() -> None:
    agent = ReAct("question -> answer", tools=[lookup], max_iters=3)
    spec = ProgramSpec.from_program(agent)
    assert spec.config["tools"] == ["lookup"]
    with pytest.raises(StateError, match="tool 'lookup' is not registered"):
        spec.build()
    registry = ProgramRegistry()
    registry.register_tool(lookup)
    rebuilt = spec.build(registry=registry)
    assert isinstance(rebuilt, ReAct)
    assert rebuilt.max_iters == 3
    assert list(rebuilt.tools) == ["lookup"]


def test_program_spec_for_registered_class() -> None:
    with pytest.raises(StateError, match="register it"):
        ProgramSpec.from_program(QAProgram())
    registry = ProgramRegistry()
    registry.register("qa", QAProgram)
    spec = ProgramSpec.from_program(QAProgram(), registry=registry)
    assert spec.kind == "qa"
    assert isinstance(spec.build(registry=registry), QAProgram)
    with pytest.raises(StateError, match="needs a ProgramRegistry"):
        spec.build()


def test_load_dspy_state_applies_instructions_prefixes_and_demos() -> None:
    program = QAProgram()
    load_dspy_state(program, FIXTURES / "dspy_cot_program.json")
    predictor = program.generate_answer.predict
    assert predictor.signature.instructions == "Answer questions with short factoid answers."
    assert predictor.signature.output_fields["answer"].description == "often between 1 and 5 words"
    assert predictor.signature.output_fields["answer"].prefix == "Answer:"
    assert len(predictor.demos) == 2
    assert "augmented" not in predictor.demos[0]
    assert predictor.demos[0]["reasoning"] == "France's capital city is Paris."


def test_load_dspy_state_rejects_other_structures(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not have"):
        load_dspy_state(Predict("question -> answer"), FIXTURES / "dspy_cot_program.json")
    data = json.loads((FIXTURES / "dspy_cot_program.json").read_text())
    data["generate_answer.predict"]["signature"]["fields"].pop()
    with pytest.raises(StateError, match="has 2 fields"):
        load_dspy_state(QAProgram(), data)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(StateError, match="cannot read"):
        load_dspy_state(QAProgram(), broken)


def test_tool_validates_arguments_against_its_signature() -> None:
    tool = Tool(lookup)
    assert tool.schema()["required"] == ["term"]
    assert "Look a term up." in tool.describe()


async def test_tool_bad_arguments_and_raising_tools_name_the_tool() -> None:
    from dspex.errors import ToolError

    def divide(a: int, b: int) -> float:
        return a / b

    tool = Tool(divide)
    assert await tool.acall({"a": 6, "b": "3"}) == 2.0
    with pytest.raises(ToolError, match="tool `divide`: bad arguments: b:") as info:
        await tool.acall({"a": 1})
    assert info.value.tool == "divide"
    with pytest.raises(ToolError, match="c: Extra inputs are not permitted"):
        await tool.acall({"a": 1, "b": 2, "c": 3})
    with pytest.raises(ToolError, match="raised ZeroDivisionError"):
        await tool.acall({"a": 1, "b": 0})

    async def fetch(url: str) -> str:
        return f"<{url}>"

    assert await Tool(fetch).acall({"url": "x"}) == "<x>"


def test_majority_votes_on_the_last_field_with_normalisation() -> None:
    completions = [{"answer": "Paris"}, {"answer": "paris "}, {"answer": "Lyon"}]
    winner = majority(completions, normalize=lambda v: str(v).strip().lower())
    assert winner.answer == "Paris"
    assert len(winner.completions) == 3
    with pytest.raises(InputError):
        majority([])


def test_the_adapter_choice_is_part_of_the_state() -> None:
    from dspex.programs.adapters import JSONAdapter

    program = Predict("question -> answer", adapter=JSONAdapter())
    spec = ProgramSpec.from_program(program)
    rebuilt = ProgramSpec.model_validate_json(spec.model_dump_json(by_alias=True)).build()
    assert isinstance(rebuilt, Predict)
    assert isinstance(rebuilt.adapter, JSONAdapter)
    state = program.dump_state()
    state["self"]["adapter"] = "xml"
    with pytest.raises(StateError, match="unknown adapter 'xml'"):
        Predict("question -> answer").load_state(state)
