"""The optimizer registry (one list of names and settings) and the one sync ``compile``."""

from __future__ import annotations

import doctest
import inspect
from collections.abc import Sequence

import click
import pytest

import dspex
from dspex.cli.optimize import optimize
from dspex.errors import ConfigurationError
from dspex.optimizers import (
    COPRO,
    SIMBA,
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    KNNFewShot,
    LabeledFewShot,
    MIPROv2,
    Optimizer,
    Trial,
    registry,
)
from dspex.optimizers.embeddings import CallableEmbedder
from dspex.optimizers.executor import LocalExecutor
from dspex.optimizers.registry import OPTIMIZER_NAMES, OPTIMIZERS, check_settings, registered
from dspex.streams.records import ControlCommand


def test_the_registry_lists_every_name_once_in_the_wire_order() -> None:
    assert (
        tuple(OPTIMIZERS)
        == OPTIMIZER_NAMES
        == ("labeled", "bootstrap", "random_search", "mipro", "copro", "simba")
    )
    assert all(entry.name == name for name, entry in OPTIMIZERS.items())


def test_the_cli_and_the_wire_record_offer_the_registered_names() -> None:
    [choice] = [p.type for p in optimize.params if p.name == "optimizer_name"]
    assert isinstance(choice, click.Choice)
    assert tuple(choice.choices) == OPTIMIZER_NAMES
    schema = ControlCommand.model_json_schema(by_alias=True)
    [enum] = [
        option["enum"] for option in schema["properties"]["optimizer"]["anyOf"] if "enum" in option
    ]
    assert tuple(enum) == OPTIMIZER_NAMES


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_setting_is_a_typed_keyword_of_its_optimizer(name: str) -> None:
    entry = registered(name)
    parameters = inspect.signature(entry.optimizer).parameters
    for setting, kind in entry.settings.items():
        assert parameters[setting].kind is inspect.Parameter.KEYWORD_ONLY or setting == "k"
        assert kind.__name__ in str(parameters[setting].annotation), setting
    assert ("resume" in parameters) is entry.resumable
    assert ("prompt_model" in parameters) is entry.uses_prompt_model


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_registered_optimizer_builds_with_its_defaults(name: str) -> None:
    executor = LocalExecutor()
    built = registered(name).build("f1", settings={}, executor=executor, seed=3)
    assert isinstance(built, registered(name).optimizer)
    assert (built.metric, built.executor, built.seed) == ("f1", executor, 3)


def test_resume_reaches_the_searches_only() -> None:
    trial = Trial(number=0, params={}, score=0.5)
    search = registered("random_search").build("f1", settings={}, resume=[trial])
    assert list(search.resume.values()) == [trial]
    assert registered("bootstrap").build("f1", settings={}, resume=[trial]).resume == {}


def test_unknown_names_and_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown optimizer 'gepa'; known: \['bootstrap'"):
        registered("gepa")
    with pytest.raises(ConfigurationError, match="unknown optimizer ''"):
        registered(None)
    assert check_settings({"x": 1}, {"x": float}, "it") == {"x": 1.0}
    with pytest.raises(ConfigurationError, match="setting 'x' of it must be int, got True"):
        check_settings({"x": True}, {"x": int}, "it")


def test_doctests() -> None:
    assert doctest.testmod(registry).failed == 0


# --- the one synchronous compile ------------------------------------------------------


def optimizers() -> list[Optimizer]:
    embedder = CallableEmbedder(lambda texts: [[1.0] for _ in texts])
    return [
        LabeledFewShot(k=1),
        BootstrapFewShot("exact_match"),
        BootstrapFewShotWithRandomSearch("exact_match"),
        MIPROv2("exact_match"),
        KNNFewShot(1, [dspex.Example(q="a").with_inputs("q")], embedder),
        COPRO("exact_match"),
        SIMBA("exact_match"),
    ]


@pytest.mark.parametrize("optimizer", optimizers(), ids=lambda o: type(o).__name__)
def test_compile_takes_the_arguments_of_each_acompile(optimizer: Optimizer) -> None:
    compile = optimizer.compile
    assert inspect.signature(compile) == inspect.signature(optimizer.acompile)
    assert compile.__doc__ == "Synchronous wrapper of :meth:`acompile`."
    assert compile.__qualname__ == f"{type(optimizer).__name__}.compile"


def test_compile_runs_acompile_to_completion() -> None:
    train: Sequence[dspex.Example] = [dspex.Example(q="1", a="2").with_inputs("q")]
    compiled = LabeledFewShot(k=1).compile(dspex.Predict("q -> a"), trainset=train)
    assert compiled.predictors()[0].demos == list(train)
    with pytest.raises(TypeError, match="teacher"):
        LabeledFewShot(k=1).compile(dspex.Predict("q -> a"), trainset=train, teacher=None)  # type: ignore[call-arg]
