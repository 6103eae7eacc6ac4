"""Positions: where a variable's value lands in a program.

A position is a ``Predict`` (not inside a ``ChainOfThought``) or a
``ChainOfThought`` of the program, named by its attribute path as in
``named_sub_modules()`` (``"classify"``, ``"self"`` for a program that is
itself one). A target names one position, or every one (``"*"``); the
predictor path of a ChainOfThought (``classify.predict``) names its position
too, so a target stays valid when a variable swaps the module kind. This
module finds positions, sets a chosen value at one, and swaps a position's
module kind in place of the old module.

Example:
    >>> import dspex
    >>> class Triage(dspex.Module):
    ...     def __init__(self) -> None:
    ...         self.classify = dspex.ChainOfThought("ticket -> label")
    >>> list(predictor_positions(Triage()))
    ['classify']
    >>> target_predictors(Triage(), "classify.predict")
    ['classify.predict']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from dspex.errors import ConfigurationError
from dspex.optimizers.domains import ALL, ModuleKind, Variable
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict
from dspex.programs.signature import OutputField

__all__ = [
    "predictor_positions",
    "replace_module",
    "set_value",
    "swap_kind",
    "target_paths",
    "target_predictors",
    "with_instructions",
]

_REASONING = "reasoning"


def predictor_positions(program: Module) -> dict[str, Module]:
    """Every Predict (not inside a ChainOfThought) and ChainOfThought, by attribute path."""
    modules: list[tuple[str, Module]] = [("self", program), *program.named_sub_modules()]
    inner = {id(m.predict) for _, m in modules if isinstance(m, ChainOfThought)}
    return {
        path: module
        for path, module in modules
        if isinstance(module, ChainOfThought)
        or (isinstance(module, Predict) and id(module) not in inner)
    }


def target_predictors(program: Module, target: str) -> list[str]:
    """The ``named_predictors`` paths of the positions ``target`` names in ``program``.

    Raises:
        ConfigurationError: ``target`` is not a position of the program.
    """
    positions = predictor_positions(program)
    paths = {id(predictor): path for path, predictor in program.named_predictors()}
    return [paths[id(_effective(positions[p]))] for p in target_paths(positions, target)]


def with_instructions(program: Module, instructions: Mapping[str, str]) -> Module:
    """A copy whose predictors (by ``named_predictors`` path) get the given instructions."""
    copy = program.deepcopy()
    predictors = dict(copy.named_predictors())
    changed: set[int] = set()
    for path, text in instructions.items():
        predictor = _predictor_at(predictors, path)
        if text != predictor.signature.instructions:
            predictor.signature = predictor.signature.with_instructions(text)
            changed.add(id(predictor))
    for module in predictor_positions(copy).values():
        if isinstance(module, ChainOfThought) and id(module.predict) in changed:
            # Keep the task signature in step: a kind swap starts from it.
            module.signature = module.signature.with_instructions(
                module.predict.signature.instructions
            )
    return copy


def target_paths(positions: Mapping[str, Module], target: str) -> list[str]:
    """The paths among ``positions`` that ``target`` names.

    Raises:
        ConfigurationError: ``target`` is not a position.
    """
    if target == ALL:
        return list(positions)
    if target in positions:
        return [target]
    parent = "self" if target == "predict" else target.removesuffix(".predict")
    if target.endswith("predict") and isinstance(positions.get(parent), ChainOfThought):
        return [parent]
    raise ConfigurationError(
        f"`{target}` is not a Predict or ChainOfThought of the program "
        f"(positions: {sorted(positions)})"
    )


def _predictor_at(predictors: Mapping[str, Predict], path: str) -> Predict:
    try:
        return predictors[path]
    except KeyError:
        raise ConfigurationError(
            f"the program has no predictor `{path}` (it has {sorted(predictors)})"
        ) from None


def _effective(module: Module) -> Predict:
    return module.predict if isinstance(module, ChainOfThought) else cast(Predict, module)


def set_value(module: Module, variable: Variable, value: Any) -> None:
    """Set ``variable``'s resolved ``value`` on the position ``module``."""
    predictor = _effective(module)
    if variable.kind == "instructions":
        predictor.signature = predictor.signature.with_instructions(value)
        if isinstance(module, ChainOfThought):
            module.signature = module.signature.with_instructions(value)
    elif variable.kind == "demos":
        predictor.demos = list(value)
    elif variable.kind == "model":
        predictor.lm = value
    elif variable.kind == "lm_param" and variable.parameter is not None:
        predictor.lm_kwargs[variable.parameter] = value


def swap_kind(module: Module, kind: ModuleKind) -> Module:
    """The same predictor as ``kind``: signature, instructions, demos, LM settings kept."""
    if type(module) not in (Predict, ChainOfThought):
        raise ConfigurationError(
            f"cannot swap the kind of {type(module).__name__}: only Predict and ChainOfThought"
        )
    if (kind == "chain_of_thought") == isinstance(module, ChainOfThought):
        return module
    if isinstance(module, Predict):
        swapped: Module = ChainOfThought(
            module.signature, lm=module.lm, adapter=module.adapter, **module.lm_kwargs
        )
        _effective(swapped).demos = list(module.demos)
        return swapped
    chain = cast(ChainOfThought, module)
    inner = chain.predict
    signature = chain.signature
    # Written instructions carry over; default ones (which name `reasoning`) regenerate.
    untouched = signature.prepend(_REASONING, OutputField(), str).instructions
    if inner.signature.instructions != untouched:
        signature = signature.with_instructions(inner.signature.instructions)
    predict = Predict(signature, lm=inner.lm, adapter=inner.adapter, **inner.lm_kwargs)
    predict.demos = [d.without(_REASONING) if _REASONING in d else d for d in inner.demos]
    return predict


def replace_module(root: Module, old: Module, new: Module) -> Module:
    """``root`` with every reference to ``old`` in its module graph pointing to ``new``."""
    if root is old:
        return new
    seen: set[int] = set()

    def visit(value: Any) -> None:
        if id(value) in seen or value is old:
            return
        seen.add(id(value))
        if isinstance(value, Module):
            for name, child in list(vars(value).items()):
                if child is old:
                    setattr(value, name, new)
                else:
                    visit(child)
        elif isinstance(value, list):
            for index, child in enumerate(value):
                if child is old:
                    value[index] = new
                else:
                    visit(child)
        elif isinstance(value, dict):
            for key, child in list(value.items()):
                if child is old:
                    value[key] = new
                else:
                    visit(child)
        elif isinstance(value, tuple):
            if any(child is old for child in value):
                raise ConfigurationError("cannot swap a module kept in a tuple; use a list")
            for child in value:
                visit(child)

    visit(root)
    return root
