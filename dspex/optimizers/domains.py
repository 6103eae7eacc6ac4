"""A universal variable: one searchable knob of a program and its domain.

A :class:`Variable` names one knob of one predictor position and its
domain: a finite list of JSON values (instructions and demo sets by index,
models by name, numbers, module kinds) or a numeric range. This module
samples, checks and describes values; :mod:`dspex.optimizers.positions` puts
a value into a program, and :class:`~dspex.optimizers.variables.SearchSpace`
holds several variables (see :mod:`dspex.optimizers.variables` for the whole
picture).

Example:
    >>> import random
    >>> variable = Variable.temperature("classify", low=0.0, high=1.0)
    >>> variable.name, variable.continuous
    ('classify.temperature', True)
    >>> 0.0 <= variable.sample(random.Random(0)) <= 1.0
    True
    >>> Variable.module_kind("classify").check("predict")
    'predict'
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from dspex.errors import ConfigurationError
from dspex.programs.example import Example
from dspex.programs.lm._http import reject_credential_params
from dspex.programs.lm.base import LM

__all__ = ["ALL", "JSONValue", "ModuleKind", "Variable", "VariableKind"]

JSONValue = str | int | float | bool | None
VariableKind = Literal["instructions", "demos", "lm_param", "model", "module_kind"]
ModuleKind = Literal["predict", "chain_of_thought"]
#: The target naming every position of the program.
ALL = "*"


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
