"""LabeledFewShot: which examples become demos, without any LM."""

from __future__ import annotations

import random

import pytest

import dspex
from dspex.errors import ConfigurationError
from dspex.optimizers.labeled import LabeledFewShot, check_trainset, sample_labeled

TRAIN = [dspex.Example(q=f"q{i}", a=f"a{i}").with_inputs("q") for i in range(10)]


class Pipeline(dspex.Module):
    def __init__(self) -> None:
        self.draft = dspex.Predict("q -> a")
        self.polish = dspex.ChainOfThought("q -> a")


def demos_by_path(program: dspex.Module) -> dict[str, list[dspex.Example]]:
    return {name: predictor.demos for name, predictor in program.named_predictors()}


def test_every_predictor_of_a_copy_gets_k_labelled_examples() -> None:
    student = Pipeline()
    compiled = LabeledFewShot(k=3).compile(student, trainset=TRAIN)
    demos = demos_by_path(compiled)
    assert list(demos) == ["draft", "polish.predict"]
    for path, chosen in demos.items():
        assert len(chosen) == 3, path
        assert all(demo in TRAIN for demo in chosen)  # inputs and labels, as given
        assert all(demo.input_keys == frozenset({"q"}) for demo in chosen)
    assert demos_by_path(student) == {"draft": [], "polish.predict": []}
    # Each predictor draws its own sample.
    assert demos["draft"] != demos["polish.predict"]


def test_same_seed_same_demos_other_seed_other_demos() -> None:
    def compiled_demos(seed: int) -> dict[str, list[dspex.Example]]:
        return demos_by_path(LabeledFewShot(k=4, seed=seed).compile(Pipeline(), trainset=TRAIN))

    assert compiled_demos(5) == compiled_demos(5)
    assert compiled_demos(5) != compiled_demos(6)


def test_sample_false_takes_the_first_k_and_k_is_capped_by_the_trainset() -> None:
    first = LabeledFewShot(k=2, sample=False).compile(dspex.Predict("q -> a"), trainset=TRAIN)
    assert first.demos == TRAIN[:2]
    everything = LabeledFewShot(k=50).compile(dspex.Predict("q -> a"), trainset=TRAIN)
    assert sorted(d.q for d in everything.demos) == sorted(e.q for e in TRAIN)
    none = LabeledFewShot(k=0).compile(dspex.Predict("q -> a", demos=[TRAIN[0]]), trainset=TRAIN)
    assert none.demos == []  # existing demos are replaced


def test_metric_is_optional_and_bad_arguments_are_configuration_errors() -> None:
    assert LabeledFewShot().metric == "exact_match"
    assert LabeledFewShot(metric="f1").metric == "f1"
    with pytest.raises(ConfigurationError, match="k must be"):
        LabeledFewShot(k=-1)
    with pytest.raises(ConfigurationError, match="empty"):
        LabeledFewShot().compile(dspex.Predict("q -> a"), trainset=[])
    with pytest.raises(ConfigurationError, match="example 0 has no inputs marked"):
        LabeledFewShot().compile(dspex.Predict("q -> a"), trainset=[dspex.Example(q="x")])


def test_helpers() -> None:
    assert sample_labeled(TRAIN, 3, None) == TRAIN[:3]
    assert sample_labeled(TRAIN, 3, random.Random(1)) == sample_labeled(TRAIN, 3, random.Random(1))
    check_trainset(TRAIN)
    with pytest.raises(ConfigurationError, match="valset is empty"):
        check_trainset([], name="valset")
    with pytest.raises(ConfigurationError, match="not an Example"):
        check_trainset([{"q": "x"}])  # type: ignore[list-item]
