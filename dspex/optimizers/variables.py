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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from dspex.errors import ConfigurationError
from dspex.programs.example import Example
from dspex.programs.lm._http import reject_credential_params
from dspex.programs.lm.base import LM
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict
from dspex.programs.signature import OutputField

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

JSONValue = str | int | float | bool | None
VariableKind = Literal["instructions", "demos", "lm_param", "model", "module_kind"]
ModuleKind = Literal["predict", "chain_of_thought"]
#: Every position of the program.
ALL = "*"
_REASONING = "reasoning"


@dataclass(frozen=True, eq=False)
class Variable:
    """One searchable knob; build it with the class methods, not the constructor.

    Attributes:
        name: Key of the variable in a choice (and in ``Trial.params``).
        target: The position it changes (``"classify"``, ``"self"`` or ``"*"``).
        kind: What it changes.
        options: The finite domain as JSON values; empty for a continuous range.
        low: Lower bound of a continuous range.
        high: Upper bound of a continuous range.
        log: Sample the range on a log scale.
        integer: The range holds integers.
        parameter: The LM parameter set by an ``lm_param`` variable.
    """

    name: str
    target: str
    kind: VariableKind
    options: tuple[JSONValue, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    parameter: str | None = None
    #: What each option stands for (instruction texts, demo lists, LM clients).
    values: tuple[Any, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.name or not self.target:
            raise ConfigurationError("a variable needs a name and a target")
        if self.options and self.low is not None:
            raise ConfigurationError(f"variable {self.name}: give values or a range, not both")
        if not self.options and (self.low is None or self.high is None):
            raise ConfigurationError(f"variable {self.name}: give values or low= and high=")
        if (
            self.low is not None
            and self.high is not None
            and (not self.low <= self.high or (self.log and self.low <= 0))
        ):
            raise ConfigurationError(
                f"variable {self.name}: range [{self.low}, {self.high}] is empty"
                + (" or not positive (log scale)" if self.log else "")
            )
        if len(set(map(_key, self.options))) != len(self.options):
            raise ConfigurationError(f"variable {self.name}: repeated values {self.options}")

    # -- constructors ------------------------------------------------------------------

    @classmethod
    def instructions(cls, target: str, candidates: Sequence[str], *, name: str = "") -> Variable:
        """Choose the instructions among ``candidates`` (recorded by index)."""
        texts = (candidates,) if isinstance(candidates, str) else tuple(candidates)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ConfigurationError("instructions need at least one non-empty string")
        return cls(
            name or _name(target, "instructions"),
            target,
            "instructions",
            options=tuple(range(len(texts))),
            values=texts,
        )

    @classmethod
    def demos(
        cls, target: str, demo_sets: Sequence[Sequence[Mapping[str, Any]]], *, name: str = ""
    ) -> Variable:
        """Choose the demos among ``demo_sets`` (recorded by index; ``[]`` is zero-shot)."""
        sets = tuple(tuple(Example(demo) for demo in demos) for demos in demo_sets)
        if not sets:
            raise ConfigurationError("demos need at least one demo set")
        return cls(
            name or _name(target, "demos"), target, "demos", tuple(range(len(sets))), values=sets
        )

    @classmethod
    def temperature(
        cls,
        target: str,
        values: Sequence[float] = (),
        *,
        low: float | None = None,
        high: float | None = None,
        name: str = "",
    ) -> Variable:
        """The sampling temperature: a list of values or a range ``low..high``."""
        return cls.lm_param(target, "temperature", values, low=low, high=high, name=name)

    @classmethod
    def max_tokens(
        cls,
        target: str,
        values: Sequence[int] = (),
        *,
        low: int | None = None,
        high: int | None = None,
        log: bool = False,
        name: str = "",
    ) -> Variable:
        """The completion budget: a list of values or an integer range."""
        return cls.lm_param(
            target, "max_tokens", values, low=low, high=high, log=log, integer=True, name=name
        )

    @classmethod
    def lm_param(
        cls,
        target: str,
        parameter: str,
        values: Sequence[JSONValue] = (),
        *,
        low: float | None = None,
        high: float | None = None,
        log: bool = False,
        integer: bool = False,
        name: str = "",
    ) -> Variable:
        """Any LM parameter (``top_p``, ``seed``, ...) set in the predictor's ``lm_kwargs``.

        Raises:
            ConfigurationError: The parameter is named like a credential, or the
                domain is empty.
        """
        reject_credential_params({parameter: None})
        return cls(
            name or _name(target, parameter),
            target,
            "lm_param",
            options=tuple(values),
            low=low,
            high=high,
            log=log,
            integer=integer,
            parameter=parameter,
        )

    @classmethod
    def model(cls, target: str, models: Mapping[str, LM], *, name: str = "") -> Variable:
        """Choose the predictor's LM among ``models``, recorded by its name here."""
        if not models or not all(isinstance(lm, LM) for lm in models.values()):
            raise ConfigurationError("model needs a mapping of names to LM clients")
        return cls(
            name or _name(target, "model"),
            target,
            "model",
            options=tuple(models),
            values=tuple(models.values()),
        )

    @classmethod
    def module_kind(
        cls,
        target: str,
        kinds: Sequence[ModuleKind] = ("predict", "chain_of_thought"),
        *,
        name: str = "",
    ) -> Variable:
        """Predict or ChainOfThought at ``target``; signature, instructions and demos are kept."""
        unknown = [kind for kind in kinds if kind not in get_args(ModuleKind)]
        if unknown or not kinds:
            raise ConfigurationError(
                f"module kinds must be among {get_args(ModuleKind)}, got {list(kinds)}"
            )
        return cls(name or _name(target, "module_kind"), target, "module_kind", tuple(kinds))

    # -- domain --------------------------------------------------------------------------

    @property
    def continuous(self) -> bool:
        return not self.options

    @property
    def size(self) -> int | float:
        """Number of values (``math.inf`` for a continuous range)."""
        return len(self.options) if self.options else math.inf

    def sample(self, rng: random.Random) -> JSONValue:
        """A value drawn uniformly (log-uniformly when ``log``) from the domain."""
        if self.options:
            return self.options[rng.randrange(len(self.options))]
        low, high = float(self.low or 0), float(self.high or 0)
        if self.integer:
            if self.log:
                return min(int(high), max(int(low), round(math.exp(rng.uniform(*_logs(self))))))
            return rng.randint(int(low), int(high))
        drawn = math.exp(rng.uniform(*_logs(self))) if self.log else rng.uniform(low, high)
        # Four significant digits keep printed trials readable; clamp against rounding.
        return min(high, max(low, float(f"{drawn:.4g}")))

    def check(self, value: Any) -> JSONValue:
        """``value`` if it is in the domain.

        Raises:
            ConfigurationError: It is not.
        """
        if self.options:
            for option in self.options:
                if _key(option) == _key(value):
                    return option
            raise ConfigurationError(f"{self.name}={value!r} is not one of {list(self.options)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"{self.name}={value!r} is not a number")
        if not float(self.low or 0) <= value <= float(self.high or 0):
            raise ConfigurationError(f"{self.name}={value} is outside [{self.low}, {self.high}]")
        if self.integer and value != int(value):
            raise ConfigurationError(f"{self.name}={value} is not a whole number")
        return int(value) if self.integer else float(value)

    def describe(self, value: JSONValue) -> str:
        """A short human-readable form of a chosen value."""
        if self.kind == "instructions" and isinstance(value, int):
            text = " ".join(str(self.values[value]).split())
            return f"#{value} {text[:60]!r}" + ("…" if len(text) > 60 else "")
        if self.kind == "demos" and isinstance(value, int):
            return f"#{value} ({len(self.values[value])} demos)"
        return str(value)

    def resolve(self, value: JSONValue) -> Any:
        """What a chosen value stands for (instruction text, demo list, LM, number)."""
        value = self.check(value)
        if self.values:
            return self.values[self.options.index(value)]
        return value


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
            for path in _targets(positions, variable.target):
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
        targets = {v.name: _targets(positions, v.target) for v in self.variables}
        for variable, value in chosen:
            if variable.kind == "module_kind":
                for path in targets[variable.name]:
                    swapped = _swap_kind(positions[path], value)
                    copy = _replace(copy, positions[path], swapped)
                    positions[path] = swapped
        for variable, value in chosen:
            for path in targets[variable.name]:
                _set(positions[path], variable, value)
        return copy


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
    return [paths[id(_effective(positions[p]))] for p in _targets(positions, target)]


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


# -- helpers ---------------------------------------------------------------------------


def _name(target: str, what: str) -> str:
    return what if target in (ALL, "self") else f"{target}.{what}"


def _key(value: Any) -> str:
    # 1 and 1.0 are the same value once written to JSON and read back.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(float(value))
    return json.dumps(value, sort_keys=True, default=str)


def _logs(variable: Variable) -> tuple[float, float]:
    return math.log(float(variable.low or 1)), math.log(float(variable.high or 1))


def _targets(positions: Mapping[str, Module], target: str) -> list[str]:
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


def _set(module: Module, variable: Variable, value: Any) -> None:
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


def _swap_kind(module: Module, kind: ModuleKind) -> Module:
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


def _replace(root: Module, old: Module, new: Module) -> Module:
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
