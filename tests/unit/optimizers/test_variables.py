"""SearchSpace and Variable: domains, sampling, and applying choices to programs (no LM)."""

from __future__ import annotations

import doctest
import json
import math
import random
from types import ModuleType

import pytest

from dspex.errors import ConfigurationError
from dspex.optimizers import domains, positions, variables
from dspex.optimizers.bootstrap import with_demos
from dspex.optimizers.variables import (
    SearchSpace,
    Variable,
    predictor_positions,
    rebuild,
    target_predictors,
    with_instructions,
)
from dspex.programs.example import Example, Prediction
from dspex.programs.lm.openai import OpenAIChat
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict


class Pipeline(Module):
    def __init__(self) -> None:
        self.classify = Predict("text -> label", temperature=0.1)
        self.explain = ChainOfThought("text, label -> why")
        self.checks = [Predict("label -> ok: bool")]

    async def aforward(self, text: str) -> Prediction:
        label = (await self.classify.acall(text=text)).label
        return await self.explain.acall(text=text, label=label)


def space() -> SearchSpace:
    return SearchSpace(
        [
            Variable.instructions("classify", ["Label it.", "Label it by PARITY."]),
            Variable.temperature("classify", [0.0, 0.7]),
            Variable.module_kind("classify"),
            Variable.max_tokens("*", low=16, high=256, log=True),
        ]
    )


def test_names_sizes_and_json_ready_samples() -> None:
    searchable = space()
    assert searchable.names == [
        "classify.instructions",
        "classify.temperature",
        "classify.module_kind",
        "max_tokens",
    ]
    assert math.isinf(searchable.size)
    assert SearchSpace(list(searchable)[:3]).size == 8
    first = [searchable.sample(random.Random(5)) for _ in range(3)]
    again = [searchable.sample(random.Random(5)) for _ in range(3)]
    assert first == again
    for choice in [searchable.sample(random.Random(seed)) for seed in range(30)]:
        assert json.loads(json.dumps(choice)) == choice
        assert choice["classify.instructions"] in (0, 1)
        assert 16 <= choice["max_tokens"] <= 256
        assert isinstance(choice["max_tokens"], int)


def test_grid_enumerates_every_finite_choice_once() -> None:
    finite = SearchSpace(list(space())[:3])
    choices = list(finite.grid())
    assert len(choices) == 8
    assert len({json.dumps(c, sort_keys=True) for c in choices}) == 8
    with pytest.raises(ConfigurationError, match="finite"):
        list(space().grid())


def test_continuous_temperature_stays_in_range() -> None:
    variable = Variable.temperature("*", low=0.2, high=0.9)
    rng = random.Random(1)
    values = [variable.sample(rng) for _ in range(50)]
    assert all(isinstance(v, float) and 0.2 <= v <= 0.9 for v in values)
    assert variable.check(0.5) == 0.5
    with pytest.raises(ConfigurationError, match="outside"):
        variable.check(1.5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Variable.temperature("x"), "values or low"),
        (lambda: Variable.temperature("x", [0.1], low=0.0, high=1.0), "not both"),
        (lambda: Variable.temperature("x", [0.1, 0.1]), "repeated"),
        (lambda: Variable.max_tokens("x", low=10, high=5), "empty"),
        (lambda: Variable.instructions("x", []), "at least one"),
        (lambda: Variable.module_kind("x", ["react"]), "module kinds"),  # type: ignore[list-item]
        (lambda: Variable.lm_param("x", "api_key", ["k"]), "credentials"),
        (lambda: SearchSpace([Variable.temperature("x", [0.0])] * 2), "unique"),
    ],
)
def test_invalid_domains_are_configuration_errors(build: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()  # type: ignore[operator]


def test_apply_returns_a_new_program_and_leaves_the_original_alone() -> None:
    original = Pipeline()
    before = json.dumps(original.dump_state(), sort_keys=True)
    program = space().apply(
        original,
        {"classify.instructions": 1, "classify.temperature": 0.7, "max_tokens": 64},
    )
    assert json.dumps(original.dump_state(), sort_keys=True) == before
    assert isinstance(program, Pipeline)
    assert program is not original
    classify = program.classify
    assert isinstance(classify, Predict)
    assert classify.signature.instructions == "Label it by PARITY."
    assert classify.lm_kwargs == {"temperature": 0.7, "max_tokens": 64}
    assert program.explain.predict.lm_kwargs == {"max_tokens": 64}  # "*" reaches every position
    assert program.checks[0].lm_kwargs == {"max_tokens": 64}


def test_module_kind_swap_keeps_signature_instructions_demos_and_moves_the_path() -> None:
    original = with_instructions(Pipeline(), {"classify": "Label it by PARITY."})
    original = with_demos(original, {"classify": [Example(text="3", label="odd")]})
    program = space().apply(original, {"classify.module_kind": "chain_of_thought"})
    names = [name for name, _ in program.named_predictors()]
    assert names == ["classify.predict", "explain.predict", "checks[0]"]
    assert isinstance(program.classify, ChainOfThought)
    inner = program.classify.predict
    assert list(inner.signature.output_fields) == ["reasoning", "label"]
    assert inner.signature.instructions == "Label it by PARITY."
    assert program.classify.signature.instructions == "Label it by PARITY."
    assert [d.to_dict() for d in inner.demos] == [{"text": "3", "label": "odd"}]
    assert inner.lm_kwargs == {"temperature": 0.1}
    # The other variables still find the position after the swap.
    both = space().apply(
        original, {"classify.module_kind": "chain_of_thought", "classify.temperature": 0.7}
    )
    assert both.classify.predict.lm_kwargs == {"temperature": 0.7}


def test_chain_of_thought_back_to_predict_drops_reasoning() -> None:
    variable = Variable.module_kind("explain.predict", ["predict"])  # predictor path form
    original = Pipeline()
    original.explain.predict.demos = [Example(text="t", label="l", reasoning="r", why="w")]
    program = SearchSpace([variable]).apply(original, {variable.name: "predict"})
    assert type(program.explain) is Predict
    assert list(program.explain.signature.output_fields) == ["why"]
    # Default instructions are regenerated, so they do not ask for a reasoning field.
    assert "reasoning" not in program.explain.signature.instructions
    assert [d.to_dict() for d in program.explain.demos] == [{"text": "t", "label": "l", "why": "w"}]

    written = with_instructions(original, {"explain.predict": "Explain briefly."})
    program = SearchSpace([variable]).apply(written, {variable.name: "predict"})
    assert program.explain.signature.instructions == "Explain briefly."


def test_a_lone_predictor_is_the_position_self() -> None:
    searchable = SearchSpace([Variable.module_kind("self"), Variable.temperature("self", [0.3])])
    program = searchable.apply(
        Predict("q -> a"), {"module_kind": "chain_of_thought", "temperature": 0.3}
    )
    assert isinstance(program, ChainOfThought)
    assert program.predict.lm_kwargs == {"temperature": 0.3}
    assert list(predictor_positions(program)) == ["self"]


def test_model_choice_records_the_name_and_sets_the_client() -> None:
    small = OpenAIChat(model="small-model", base_url="http://127.0.0.1:9/v1", api_key="sk-sec")
    big = OpenAIChat(model="big-model", base_url="http://127.0.0.1:9/v1", api_key="sk-sec")
    searchable = SearchSpace([Variable.model("*", {"small": small, "big": big})])
    choice = searchable.sample(random.Random(0))
    assert choice["model"] in ("small", "big")
    program = searchable.apply(Pipeline(), {"model": "big"})
    assert all(p.lm is big for p in program.predictors())
    state = json.dumps(program.dump_state())
    assert "big-model" in state
    assert "sk-sec" not in state
    assert "sk-sec" not in json.dumps(choice)


def test_unknown_names_values_and_targets_are_rejected() -> None:
    searchable = space()
    with pytest.raises(ConfigurationError, match="unknown variables"):
        searchable.apply(Pipeline(), {"nope": 1})
    with pytest.raises(ConfigurationError, match="not one of"):
        searchable.apply(Pipeline(), {"classify.temperature": 0.5})
    wrong = SearchSpace([Variable.temperature("classifier", [0.0])])
    with pytest.raises(ConfigurationError, match="positions"):
        wrong.apply(Pipeline(), {})
    with pytest.raises(ConfigurationError, match="positions"):
        wrong.validate(Pipeline())


def test_demo_sets_are_chosen_by_index() -> None:
    sets = [[], [{"text": "1", "label": "odd"}, {"text": "2", "label": "even"}]]
    searchable = SearchSpace([Variable.demos("classify", sets)])
    assert searchable["classify.demos"].options == (0, 1)
    program = searchable.apply(Pipeline(), {"classify.demos": 1})
    assert [d.label for d in program.classify.demos] == ["odd", "even"]
    assert searchable.describe({"classify.demos": 1}) == "classify.demos=#1 (2 demos)"


def test_rebuild_reapplies_the_choice_then_loads_the_state() -> None:
    searchable = space()
    choice = {"classify.module_kind": "chain_of_thought", "classify.instructions": 1}
    candidate = with_demos(
        searchable.apply(Pipeline(), choice), {"classify.predict": [Example(text="x", label="y")]}
    )
    state = json.loads(json.dumps(candidate.dump_state()))
    rebuilt = rebuild(Pipeline(), state, space=searchable, params={**choice, "demo_set": 3})
    assert rebuilt.dump_state() == candidate.dump_state()
    assert isinstance(rebuilt.classify, ChainOfThought)


@pytest.mark.parametrize("module", [variables, domains, positions], ids=lambda m: m.__name__)
def test_the_module_docstring_example_runs(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_with_instructions_changes_only_the_named_predictors() -> None:
    original = Pipeline()
    program = with_instructions(
        original,
        {
            "classify": "Label it.",
            "explain.predict": original.explain.predict.signature.instructions,
        },
    )
    assert program.classify.signature.instructions == "Label it."
    # An unchanged default instruction stays a default: a kind swap regenerates it.
    assert program.explain.signature.instructions == original.explain.signature.instructions
    swapped = SearchSpace([Variable.module_kind("explain")]).apply(
        program, {"explain.module_kind": "predict"}
    )
    assert "reasoning" not in swapped.explain.signature.instructions
    with pytest.raises(ConfigurationError, match="no predictor"):
        with_instructions(original, {"classify.predict": "x"})


def test_target_predictors_maps_positions_to_predictor_paths() -> None:
    program = Pipeline()
    assert target_predictors(program, "classify") == ["classify"]
    assert target_predictors(program, "explain") == ["explain.predict"]
    assert target_predictors(program, "explain.predict") == ["explain.predict"]
    assert target_predictors(program, "*") == ["classify", "explain.predict", "checks[0]"]
    assert target_predictors(ChainOfThought("q -> a"), "self") == ["predict"]
