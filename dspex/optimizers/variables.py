"""Universal variables: declare any knob of a program as searchable.

A :class:`Variable` names one knob of one predictor *position* (a
``Predict`` or a ``ChainOfThought`` in the program) and its domain: the
instructions, the demo set, the temperature, ``max_tokens`` or any other LM
parameter, the LM itself (chosen by name from models you pass in), or the
module kind (``predict`` vs ``chain_of_thought``). A :class:`SearchSpace`
holds several; optimizers (``BootstrapFewShotWithRandomSearch``,
``MIPROv2``) search it jointly with the demos and instructions they propose.

Positions are attribute paths as in ``named_sub_modules()``: ``"classify"``
for ``self.classify = Predict(...)`` or ``= ChainOfThought(...)``, ``"self"``
for a program that is itself a Predict or ChainOfThought, and ``"*"`` for
every position. The predictor path of a ChainOfThought adds ``.predict``
(``classify.predict``); either form is accepted as a target, and the position
stays valid when a variable swaps the module kind, which moves the predictor
path from ``classify`` to ``classify.predict`` and back.

A *choice* maps variable names to JSON values, so it can be recorded as
``Trial.params`` and replayed: instructions and demo sets are chosen by
index, models by the name you gave them (never the LM object or its key),
numbers and kinds by value. :meth:`SearchSpace.apply` returns a new program
and never modifies the one given.

This module holds the search space, choices and the rebuilding of candidates;
a variable and its domain live in :mod:`dspex.optimizers.domains`, finding
positions and setting values in :mod:`dspex.optimizers.positions`. Every
name is importable from here.

Example:
    >>> import random
    >>> import dspex
    >>> from dspex.optimizers.variables import SearchSpace, Variable
    >>> class Triage(dspex.Module):
    ...     def __init__(self) -> None:
    ...         self.classify = dspex.Predict("ticket -> label")
    >>> space = SearchSpace([
    ...     Variable.instructions("classify", ["Label the ticket.", "Label it by urgency."]),
    ...     Variable.temperature("classify", [0.0, 0.7]),
    ...     Variable.module_kind("classify", ["predict", "chain_of_thought"]),
    ... ])
    >>> space.size
    8
    >>> choice = {"classify.instructions": 1, "classify.temperature": 0.7,
    ...           "classify.module_kind": "chain_of_thought"}
    >>> program = space.apply(Triage(), choice)
    >>> [name for name, _ in program.named_predictors()]
    ['classify.predict']
    >>> program.classify.predict.signature.instructions, program.classify.predict.lm_kwargs
    ('Label it by urgency.', {'temperature': 0.7})
    >>> sorted(space.sample(random.Random(0)))
    ['classify.instructions', 'classify.module_kind', 'classify.temperature']
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from dspex.errors import ConfigurationError
from dspex.optimizers.domains import JSONValue, ModuleKind, Variable, VariableKind
from dspex.optimizers.positions import (
    predictor_positions,
    replace_module,
    set_value,
    swap_kind,
    target_paths,
    target_predictors,
    with_instructions,
)
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict

__all__ = [
    "JSONValue",
    "ModuleKind",
    "SearchSpace",
    "Variable",
    "VariableKind",
    "digest",
    "predictor_positions",
    "rebuild",
    "target_predictors",
    "with_instructions",
]


class SearchSpace:
    """A set of variables with unique names: sample, enumerate, apply choices.

    Args:
        variables: The knobs; their names must be unique.

    Raises:
        ConfigurationError: Two variables share a name.
    """

    def __init__(self, variables: Iterable[Variable]) -> None:
        self.variables: tuple[Variable, ...] = tuple(variables)
        names = [v.name for v in self.variables]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigurationError(f"variable names must be unique, repeated: {repeated}")
        self._by_name = {v.name: v for v in self.variables}

    def __repr__(self) -> str:
        return f"SearchSpace({[v.name for v in self.variables]}, size={self.size})"

    def __iter__(self) -> Iterator[Variable]:
        return iter(self.variables)

    def __len__(self) -> int:
        return len(self.variables)

    def __getitem__(self, name: str) -> Variable:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def size(self) -> int | float:
        """How many distinct choices there are (``math.inf`` with a continuous variable)."""
        return math.prod(v.size for v in self.variables)

    def sample(self, rng: random.Random) -> dict[str, JSONValue]:
        """One choice, each variable drawn in declaration order from ``rng``."""
        return {v.name: v.sample(rng) for v in self.variables}

    def grid(self) -> Iterator[dict[str, JSONValue]]:
        """Every choice of a finite space, in a fixed order.

        Raises:
            ConfigurationError: A variable is a continuous range.
        """
        if any(v.continuous for v in self.variables):
            raise ConfigurationError("grid() needs finite variables, not ranges")
        for values in itertools.product(*(v.options for v in self.variables)):
            yield dict(zip(self.names, values, strict=True))

    def choice_from(self, params: Mapping[str, Any]) -> dict[str, JSONValue]:
        """The entries of ``params`` (e.g. ``Trial.params``) that belong to this space."""
        return {name: params[name] for name in self.names if name in params}

    def describe(self, choice: Mapping[str, JSONValue]) -> str:
        """``name=value`` pairs in a readable form."""
        return ", ".join(f"{n}={self[n].describe(v)}" for n, v in choice.items() if n in self)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def validate(self, program: Module) -> None:
        """Check that every target is a position of ``program``.

        Raises:
            ConfigurationError: A target does not exist, or a module kind variable
                targets a subclass it cannot rebuild.
        """
        positions = predictor_positions(program)
        for variable in self.variables:
            for path in target_paths(positions, variable.target):
                module = positions[path]
                if variable.kind == "module_kind" and type(module) not in (Predict, ChainOfThought):
                    raise ConfigurationError(
                        f"{variable.name}: {type(module).__name__} at `{path}` is neither "
                        "Predict nor ChainOfThought, so its kind cannot be swapped"
                    )

    def apply(self, program: Module, choice: Mapping[str, Any]) -> Module:
        """A copy of ``program`` with ``choice`` applied; variables left out stay as they are.

        Module kinds are swapped first, then the other variables are applied in
        declaration order.

        Raises:
            ConfigurationError: An unknown variable name, a value outside its
                domain, or a target that is not a position of the program.
        """
        unknown = sorted(set(choice) - set(self._by_name))
        if unknown:
            raise ConfigurationError(f"unknown variables {unknown}; the space has {self.names}")
        chosen = [(v, v.resolve(choice[v.name])) for v in self.variables if v.name in choice]
        copy = program.deepcopy()
        positions = predictor_positions(copy)
        # Resolved before any swap: a swap changes `x.predict` into `x`, not the position.
        targets = {v.name: target_paths(positions, v.target) for v in self.variables}
        for variable, value in chosen:
            if variable.kind == "module_kind":
                for path in targets[variable.name]:
                    swapped = swap_kind(positions[path], value)
                    copy = replace_module(copy, positions[path], swapped)
                    positions[path] = swapped
        for variable, value in chosen:
            for path in targets[variable.name]:
                set_value(positions[path], variable, value)
        return copy


def rebuild(
    program: Module,
    state: Mapping[str, Any],
    *,
    space: SearchSpace | None = None,
    params: Mapping[str, Any] | None = None,
) -> Module:
    """A trial's candidate from the student, the trial's params and its state.

    The space's part of ``params`` is applied first (it may swap module kinds
    and choose LM clients, which a state cannot carry), then ``state``.

    Raises:
        StateError: The state does not fit the rebuilt program.
    """
    if space is None:
        return program.deepcopy().load_state(state)
    base = space.apply(program, space.choice_from(params or {}))
    return base.load_state(state)


def digest(data: Any) -> str:
    """A short, stable fingerprint of JSON-able data (demo sets, instruction pools)."""
    text = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
