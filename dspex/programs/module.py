"""Module: the base of every program.

A module composes predictors and other modules as attributes and implements
``async def aforward(self, **inputs) -> Prediction``. Call it with
``await module.acall(**inputs)`` (or ``module(**inputs)`` from sync code).
The outermost call collects every predictor call made beneath it — including
those in concurrent tasks — into the returned prediction's ``trace`` and sums
their ``usage``.

Example:
    >>> class RAG(Module):                                            # doctest: +SKIP
    ...     def __init__(self) -> None:
    ...         self.answer = ChainOfThought("context, question -> answer")
    ...
    ...     async def aforward(self, question: str) -> Prediction:
    ...         return await self.answer.acall(context=search(question), question=question)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeGuard

from dspex.errors import ConfigurationError, StateError
from dspex.programs._sync import run_sync
from dspex.programs.example import Prediction, TraceStep
from dspex.programs.lm.types import TokenUsage

if TYPE_CHECKING:
    from dspex.programs.predict import Predict

__all__ = ["Module"]


@dataclass(frozen=True)
class _CallRecord:
    predictor: Any  # the Predict instance; named once the outer call ends
    step: TraceStep


_TRACE: ContextVar[list[_CallRecord] | None] = ContextVar("dspex_trace", default=None)


def record_call(predictor: Any, step: TraceStep) -> None:
    """Add a predictor call to the trace of the outermost ``acall`` in progress."""
    records = _TRACE.get()
    if records is not None:
        records.append(_CallRecord(predictor, step))


class Module:
    """Base class of programs; subclasses implement ``async def aforward``."""

    #: True on Predict, the leaf that calls an LM and holds demos. A flag rather
    #: than an isinstance check, so this module need not import predict.py,
    #: which builds on it.
    is_predictor: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__ and not _defines_aforward(cls):
            raise ConfigurationError(
                f"{cls.__name__} defines forward(); dspex modules are async: define "
                "`async def aforward(self, ...)` and call sub-modules with `await m.acall(...)`"
            )

    async def aforward(self, **inputs: Any) -> Prediction:
        """Run the program on ``inputs``; override in subclasses."""
        raise NotImplementedError(f"{type(self).__name__} does not implement aforward()")

    async def acall(self, **inputs: Any) -> Prediction:
        """Run the program; the outermost call gathers trace and usage."""
        if _TRACE.get() is not None:
            return _as_prediction(self, await self.aforward(**inputs))
        records: list[_CallRecord] = []
        token = _TRACE.set(records)
        try:
            prediction = _as_prediction(self, await self.aforward(**inputs))
        finally:
            _TRACE.reset(token)
        return self._with_accounting(prediction, records)

    def __call__(self, **inputs: Any) -> Prediction:
        """Synchronous wrapper of :meth:`acall` for scripts and notebooks."""
        return run_sync(self.acall(**inputs))

    def _with_accounting(self, prediction: Prediction, records: list[_CallRecord]) -> Prediction:
        names = {id(predictor): name for name, predictor in self.named_predictors()}
        steps = tuple(
            replace(r.step, predictor=names.get(id(r.predictor), r.step.signature_name))
            for r in records
        )
        usage = steps[0].usage if len(steps) == 1 else sum((s.usage for s in steps), TokenUsage())
        return prediction._accounted(usage, steps)

    # -- structure ---------------------------------------------------------------

    def named_predictors(self) -> list[tuple[str, Predict]]:
        """Every predictor in this program with its attribute path, each once."""
        found: list[tuple[str, Predict]] = []
        seen: set[int] = set()
        if _is_predictor(self):
            return [("self", self)]
        for path, value in _walk(self, "", seen):
            if _is_predictor(value):
                found.append((path, value))
        return found

    def predictors(self) -> list[Predict]:
        return [predictor for _, predictor in self.named_predictors()]

    def named_sub_modules(self) -> list[tuple[str, Module]]:
        """Every module beneath this one (not itself) with its attribute path."""
        seen: set[int] = {id(self)}
        return [(p, v) for p, v in _walk(self, "", seen) if isinstance(v, Module)]

    def deepcopy(self) -> Self:
        """A copy with its own predictors and demos, sharing LM clients and adapters.

        LM clients hold connection pools, rate limiters and breakers, which
        copies must share rather than duplicate.
        """
        memo: dict[int, Any] = {}
        for _, predictor in self.named_predictors():
            for shared in (predictor.lm, predictor.adapter):
                if shared is not None:
                    memo[id(shared)] = shared
        if _is_predictor(self):
            for shared in (self.lm, self.adapter):
                if shared is not None:
                    memo[id(shared)] = shared
        return copy.deepcopy(self, memo)

    def reset(self) -> None:
        """Forget learned state: every predictor's demos."""
        for predictor in self.predictors():
            predictor.demos = []

    # -- state ---------------------------------------------------------------------

    def dump_state(self) -> dict[str, Any]:
        """Per predictor: signature (with instructions), demos and LM parameters. No secrets."""
        return {
            name: predictor.dump_predictor_state() for name, predictor in self.named_predictors()
        }

    def load_state(self, state: Mapping[str, Any]) -> Self:
        """Apply :meth:`dump_state` output to this program's predictors (in place).

        Raises:
            StateError: The state names predictors this program does not have, or
                lacks some it has.
        """
        predictors = dict(self.named_predictors())
        unknown = sorted(set(state) - set(predictors))
        missing = sorted(set(predictors) - set(state))
        if unknown or missing:
            raise StateError(
                f"state does not fit {type(self).__name__}: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown predictors {unknown}" if unknown else "",
                        f"missing predictors {missing}" if missing else "",
                    )
                    if part
                )
            )
        for name, predictor in predictors.items():
            predictor.load_predictor_state(state[name], path=name)
        return self

    def save(self, path: str | Path) -> None:
        """Write :meth:`dump_state` as JSON."""
        Path(path).write_text(json.dumps(self.dump_state(), indent=2, default=str), "utf-8")

    def load(self, path: str | Path) -> Self:
        """Read a file written by :meth:`save` into this program."""
        try:
            state = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read program state from {path}: {exc}") from exc
        return self.load_state(state)


def _defines_aforward(cls: type) -> bool:
    return any("aforward" in klass.__dict__ for klass in cls.__mro__ if klass is not Module)


def _is_predictor(value: object) -> TypeGuard[Predict]:
    return isinstance(value, Module) and value.is_predictor


def _as_prediction(module: Module, result: Any) -> Prediction:
    if isinstance(result, Prediction):
        return result
    if isinstance(result, Mapping):
        return Prediction(dict(result))
    raise ConfigurationError(
        f"{type(module).__name__}.aforward must return a Prediction, got {type(result).__name__}"
    )


def _walk(value: Any, path: str, seen: set[int]) -> Iterator[tuple[str, Any]]:
    """Attribute paths of modules inside ``value`` (depth first, declaration order)."""
    if isinstance(value, Module):
        children: Iterator[tuple[str, Any]] = (
            (f"{path}.{name}" if path else name, child)
            for name, child in vars(value).items()
            if not name.startswith("_")
        )
    elif isinstance(value, list | tuple):
        children = ((f"{path}[{i}]", child) for i, child in enumerate(value))
    elif isinstance(value, dict):
        children = ((f"{path}[{key!r}]", child) for key, child in value.items())
    else:
        return
    for child_path, child in children:
        if not isinstance(child, Module | list | tuple | dict) or id(child) in seen:
            continue
        seen.add(id(child))
        if isinstance(child, Module):
            yield child_path, child
        yield from _walk(child, child_path, seen)
