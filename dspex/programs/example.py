"""Records that flow through programs: :class:`Example` in, :class:`Prediction` out.

Both are immutable mappings of field name to value with attribute access
(``example.question``, ``prediction["answer"]``). An Example knows which of its
keys are inputs (``with_inputs``) so datasets can carry labels; a Prediction
carries the token usage, the trace of predictor calls and every candidate
completion that produced it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from dspex.errors import InputError, StateError
from dspex.programs.lm.types import TokenUsage

__all__ = ["Example", "Prediction", "TraceStep"]

_R = TypeVar("_R", bound="_Record")


def _jsonable(record: str, data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        try:
            out[key] = to_jsonable_python(value)
        except PydanticSerializationError as exc:
            raise InputError(
                f"{record} field `{key}` holds {type(value).__name__}, which has no JSON form",
                fields=[key],
            ) from exc
    return out


def _names(keys: Iterable[str]) -> str:
    return ", ".join(f"`{key}`" for key in keys)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Record(Mapping[str, Any]):
    """Shared behaviour of Example and Prediction: an immutable, attribute-readable mapping."""

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any]) -> None:
        for key in data:
            if not isinstance(key, str):
                raise InputError(f"{type(self).__name__} keys must be strings, got {key!r}")
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; private names must not reach _data, which
        # may not exist yet while unpickling.
        if not name.startswith("_"):
            try:
                return self._data[name]
            except KeyError:
                pass
        raise AttributeError(f"{type(self).__name__} has no field `{name}`")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__} is immutable; use .copy({name}=...) for a changed copy"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use .without({name!r})")

    def __dir__(self) -> Iterable[str]:
        return [*super().__dir__(), *(key for key in self._data if key.isidentifier())]

    def __getstate__(self) -> dict[str, Any]:
        slots = (slot for cls in type(self).__mro__ for slot in getattr(cls, "__slots__", ()))
        return {slot: object.__getattribute__(self, slot) for slot in slots}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for slot, value in state.items():
            object.__setattr__(self, slot, value)

    __hash__ = None  # type: ignore[assignment]  # values may be unhashable, like dicts

    def _with_data(self: _R, data: dict[str, Any]) -> _R:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The fields as a new dict."""
        return dict(self._data)

    def copy(self: _R, **updates: Any) -> _R:
        """A copy with fields added or replaced, e.g. ``example.copy(answer="4")``."""
        return self._with_data({**self._data, **updates})

    def without(self: _R, *keys: str) -> _R:
        """A copy without the given fields.

        Raises:
            InputError: A key is not a field of this record.
        """
        missing = [key for key in keys if key not in self._data]
        if missing:
            raise InputError(
                f"{type(self).__name__} has no field(s) {_names(missing)}",
                fields=missing,
            )
        return self._with_data({k: v for k, v in self._data.items() if k not in keys})

    def _fields_repr(self) -> str:
        return ", ".join(
            f"{key}={_short(value)}" if key.isidentifier() else f"**{{{key!r}: {_short(value)}}}"
            for key, value in self._data.items()
        )


class Example(_Record):
    """A training or evaluation record: named fields, some of them marked as inputs.

    Accepts keyword fields, a mapping, or another Example (whose input keys are kept);
    keyword fields override the mapping's.

    Example:
        >>> ex = Example(question="2+2?", answer="4").with_inputs("question")
        >>> ex.inputs().to_dict(), ex.labels().answer
        ({'question': '2+2?'}, '4')
    """

    __slots__ = ("_input_keys",)
    _input_keys: frozenset[str] | None

    def __init__(self, data: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        if data is not None and not isinstance(data, Mapping):
            raise InputError(
                f"Example takes a mapping or keyword fields, not {type(data).__name__}"
            )
        super().__init__({**(data or {}), **fields})
        input_keys = data._input_keys if isinstance(data, Example) else None
        object.__setattr__(self, "_input_keys", input_keys)

    @classmethod
    def _make(cls, data: dict[str, Any], input_keys: frozenset[str] | None) -> Example:
        example = cls(data)
        object.__setattr__(example, "_input_keys", input_keys)
        return example

    def _with_data(self, data: dict[str, Any]) -> Example:
        keys = None if self._input_keys is None else self._input_keys & data.keys()
        return self._make(data, keys)

    @property
    def input_keys(self) -> frozenset[str] | None:
        """The keys marked as inputs, or None if ``with_inputs`` was never called."""
        return self._input_keys

    def with_inputs(self, *keys: str) -> Example:
        """A copy that remembers ``keys`` as its inputs (replacing earlier ones).

        Raises:
            InputError: A key is not a field of this example.
        """
        missing = [key for key in keys if key not in self._data]
        if missing:
            raise InputError(
                f"with_inputs: the example has no field(s) {_names(missing)} "
                f"(it has {_names(self._data) or 'none'})",
                fields=missing,
            )
        return self._make(self._data, frozenset(keys))

    def _require_input_keys(self, method: str) -> frozenset[str]:
        if self._input_keys is None:
            raise InputError(
                f"Example.{method}() needs the input keys: call with_inputs(...) first",
                fields=list(self._data),
            )
        return self._input_keys

    def inputs(self) -> Example:
        """Only the input fields.

        Raises:
            InputError: ``with_inputs`` was never called.
        """
        keys = self._require_input_keys("inputs")
        return self._make({k: v for k, v in self._data.items() if k in keys}, keys)

    def labels(self) -> Example:
        """Every field that is not an input.

        Raises:
            InputError: ``with_inputs`` was never called.
        """
        keys = self._require_input_keys("labels")
        return self._make({k: v for k, v in self._data.items() if k not in keys}, None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return self._data == other._data and self._input_keys == other._input_keys

    def __repr__(self) -> str:
        text = f"Example({self._fields_repr()})"
        if self._input_keys is not None:
            ordered = [key for key in self._data if key in self._input_keys]
            text += f".with_inputs({', '.join(map(repr, ordered))})"
        return text

    def to_json(self) -> dict[str, Any]:
        """``{"fields": {...}, "input_keys": [...] | null}`` with JSON-ready values.

        Enums become their values and models plain objects; :meth:`from_json` does
        not turn them back.

        Raises:
            InputError: A value has no JSON form.
        """
        keys = None
        if self._input_keys is not None:
            keys = [key for key in self._data if key in self._input_keys]
        return {"fields": _jsonable("Example", self._data), "input_keys": keys}

    @classmethod
    def from_json(cls, data: Any) -> Example:
        """Rebuild an example from :meth:`to_json` output.

        Raises:
            StateError: The data does not have that shape.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("fields"), Mapping):
            raise StateError(f"Example JSON must be an object with 'fields', got {_short(data)}")
        keys = data.get("input_keys")
        if keys is not None and (
            not isinstance(keys, list) or not all(isinstance(key, str) for key in keys)
        ):
            raise StateError(f"Example JSON 'input_keys' must be a list of names, got {keys!r}")
        example = cls(data["fields"])
        try:
            return example if keys is None else example.with_inputs(*keys)
        except InputError as exc:
            raise StateError(f"Example JSON: {exc}") from exc


@dataclass(frozen=True)
class TraceStep:
    """One predictor call made while a program ran.

    Attributes:
        predictor: The predictor's dotted name in its program, e.g.
            ``"generate_answer.predict"``.
        signature_name: The name of the predictor's signature.
        inputs: The input fields it was called with.
        outputs: The output fields it produced (the first completion).
        usage: Tokens and cost of its LM call.
        latency_s: Wall-clock seconds the call took.

    Example:
        >>> step = TraceStep("generate_answer.predict", "QA", {"question": "2+2?"}, {"answer": "4"})
        >>> step.to_json()["usage"]["calls"]
        0
    """

    predictor: str
    signature_name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    usage: TokenUsage = field(default_factory=TokenUsage)
    latency_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The step as JSON, with JSON-ready input and output values.

        Raises:
            InputError: A value has no JSON form.
        """
        return {
            "predictor": self.predictor,
            "signature_name": self.signature_name,
            "inputs": _jsonable("TraceStep", self.inputs),
            "outputs": _jsonable("TraceStep", self.outputs),
            "usage": self.usage.model_dump(mode="json"),
            "latency_s": self.latency_s,
        }

    @classmethod
    def from_json(cls, data: Any) -> TraceStep:
        """Rebuild a step from :meth:`to_json` output.

        Raises:
            StateError: The data does not have that shape.
        """
        if not isinstance(data, Mapping):
            raise StateError(f"TraceStep JSON must be an object, got {_short(data)}")
        try:
            step = cls(
                predictor=data["predictor"],
                signature_name=data["signature_name"],
                inputs=dict(data.get("inputs", {})),
                outputs=dict(data.get("outputs", {})),
                usage=TokenUsage.model_validate(data.get("usage", {})),
                latency_s=float(data.get("latency_s", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
            raise StateError(f"TraceStep JSON is malformed: {exc!r}") from exc
        if not isinstance(step.predictor, str) or not isinstance(step.signature_name, str):
            raise StateError("TraceStep JSON: predictor and signature_name must be strings")
        return step


class Prediction(_Record):
    """The outputs of a program call, with usage, trace and all candidate completions.

    Args:
        outputs: The output fields (keyword fields are added to them).
        usage: Tokens and cost of every LM call behind this prediction.
        trace: The predictor calls that produced it, in order.
        completions: Every candidate's outputs when ``n > 1``. The first one is
            always the prediction itself: the candidate equal to the outputs is moved
            to the front (the outputs are put in front when no candidate equals
            them). Defaults to just the outputs. With no outputs given, the first
            completion supplies them.

    Raises:
        InputError: A field is given twice, or completions are empty.

    Example:
        >>> pred = Prediction({"answer": "4"}, completions=[{"answer": "4"}, {"answer": "5"}])
        >>> pred.answer, len(pred.completions), pred.usage.total_tokens
        ('4', 2, 0)
    """

    __slots__ = ("_completions", "_trace", "_usage")
    _usage: TokenUsage
    _trace: tuple[TraceStep, ...]
    _completions: tuple[dict[str, Any], ...]

    def __init__(
        self,
        outputs: Mapping[str, Any] | None = None,
        *,
        usage: TokenUsage | None = None,
        trace: Iterable[TraceStep] = (),
        completions: Iterable[Mapping[str, Any]] | None = None,
        **fields: Any,
    ) -> None:
        data = dict(outputs or {})
        twice = sorted(data.keys() & fields.keys())
        if twice:
            raise InputError(f"Prediction field(s) given twice: {', '.join(twice)}", fields=twice)
        data.update(fields)
        candidates = None if completions is None else [dict(c) for c in completions]
        if candidates is not None:
            if not candidates:
                raise InputError("Prediction completions must not be empty")
            if not data:
                data = dict(candidates[0])
            elif data in candidates:
                # The chosen candidate (e.g. a majority vote's) goes first, the rest keep order.
                candidates.insert(0, candidates.pop(candidates.index(data)))
            else:
                candidates.insert(0, dict(data))
        super().__init__(data)
        object.__setattr__(self, "_usage", usage or TokenUsage())
        object.__setattr__(self, "_trace", tuple(trace))
        object.__setattr__(self, "_completions", tuple(candidates or [dict(data)]))

    def _accounted(self, usage: TokenUsage, trace: tuple[TraceStep, ...]) -> Prediction:
        """This prediction with the usage and trace of the calls behind it.

        The outputs and completions are this prediction's own, checked when it
        was made: shared, not copied and checked again (it runs once per request).
        """
        accounted = Prediction.__new__(Prediction)
        object.__setattr__(accounted, "_data", self._data)
        object.__setattr__(accounted, "_usage", usage)
        object.__setattr__(accounted, "_trace", trace)
        object.__setattr__(accounted, "_completions", self._completions)
        return accounted

    def _with_data(self, data: dict[str, Any]) -> Prediction:
        return Prediction(
            data, usage=self._usage, trace=self._trace, completions=(data, *self._completions[1:])
        )

    @property
    def usage(self) -> TokenUsage:
        """Tokens and cost of the LM calls behind this prediction."""
        return self._usage

    @property
    def trace(self) -> tuple[TraceStep, ...]:
        """The predictor calls that produced this prediction, in order."""
        return self._trace

    @property
    def completions(self) -> tuple[dict[str, Any], ...]:
        """Every candidate's outputs (copies); the first is this prediction's."""
        return tuple(dict(candidate) for candidate in self._completions)

    @staticmethod
    def merge_usage(*predictions: Prediction) -> TokenUsage:
        """The summed usage of several predictions, e.g. of a module's sub-calls.

        Example:
            >>> one = Prediction(answer="a", usage=TokenUsage(prompt_tokens=3, calls=1))
            >>> Prediction.merge_usage(one, one).prompt_tokens
            6
        """
        total = TokenUsage()
        for prediction in predictions:
            total = total + prediction.usage
        return total

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prediction):
            return NotImplemented
        return (
            self._data == other._data
            and self._usage == other._usage
            and self._trace == other._trace
            and self._completions == other._completions
        )

    def __repr__(self) -> str:
        extra = len(self._completions) - 1
        more = f"  # +{extra} more completion(s)" if extra else ""
        return f"Prediction({self._fields_repr()}){more}"

    def to_json(self) -> dict[str, Any]:
        """``{"outputs", "usage", "trace", "completions"}`` with JSON-ready values.

        Raises:
            InputError: A value has no JSON form.
        """
        return {
            "outputs": _jsonable("Prediction", self._data),
            "usage": self._usage.model_dump(mode="json"),
            "trace": [step.to_json() for step in self._trace],
            "completions": [_jsonable("Prediction", c) for c in self._completions],
        }

    @classmethod
    def from_json(cls, data: Any) -> Prediction:
        """Rebuild a prediction from :meth:`to_json` output.

        Raises:
            StateError: The data does not have that shape.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("outputs"), Mapping):
            raise StateError(
                f"Prediction JSON must be an object with 'outputs', got {_short(data)}"
            )
        try:
            return cls(
                data["outputs"],
                usage=TokenUsage.model_validate(data.get("usage", {})),
                trace=[TraceStep.from_json(step) for step in data.get("trace", [])],
                completions=data.get("completions"),
            )
        except (ValidationError, InputError, TypeError) as exc:
            raise StateError(f"Prediction JSON is malformed: {exc}") from exc
