"""Predict and ChainOfThought: one LM call per signature.

Example:
    >>> qa = Predict("question -> answer")                     # doctest: +SKIP
    >>> with dspex.context(lm=lm):                             # doctest: +SKIP
    ...     print(qa(question="What is the capital of France?").answer)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from dspex.errors import ConfigurationError, InputError, LMError, StateError
from dspex.programs.adapters.base import Adapter
from dspex.programs.adapters.chat import ChatAdapter
from dspex.programs.context import current_settings
from dspex.programs.example import Example, Prediction, TraceStep
from dspex.programs.lm.base import LM
from dspex.programs.module import Module, record_call
from dspex.programs.signature import OutputField, Signature, ensure_signature

__all__ = ["ChainOfThought", "Predict"]

#: LM parameters a predictor may carry in its state (never credentials).
_LM_PARAMETERS = frozenset({"temperature", "max_tokens", "stop", "n", "top_p", "seed"})


class Predict(Module):
    """Ask the LM to fill a signature's output fields from its input fields.

    Args:
        signature: A Signature class or its string form ("question -> answer").
        lm: This predictor's LM; default: the one in ``dspex.context``.
        adapter: The prompt format; default: the context's, else ChatAdapter
            (falling back to JSONAdapter when a completion does not parse).
        demos: Worked examples shown to the LM before the input.
        **lm_kwargs: LM parameters for this predictor (temperature, max_tokens, n, ...).
    """

    is_predictor = True

    def __init__(
        self,
        signature: str | type[Signature],
        *,
        lm: LM | None = None,
        adapter: Adapter | None = None,
        demos: Sequence[Mapping[str, Any]] = (),
        **lm_kwargs: Any,
    ) -> None:
        self.signature: type[Signature] = ensure_signature(signature)
        self.lm = lm
        self.adapter = adapter
        self.demos: list[Example] = [Example(dict(demo)) for demo in demos]
        self.lm_kwargs: dict[str, Any] = dict(lm_kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.signature.signature_name}, demos={len(self.demos)})"

    async def aforward(self, **inputs: Any) -> Prediction:
        values = self._check_inputs(inputs)
        settings = current_settings()
        lm = self.lm or settings.lm
        if lm is None:
            raise ConfigurationError(
                f"no LM configured for {self.signature.signature_name}: pass lm= to the "
                "predictor or use `with dspex.context(lm=...)`"
            )
        adapter = self.adapter or settings.adapter or ChatAdapter()
        lm_kwargs = {**settings.lm_kwargs, **self.lm_kwargs}
        if settings.rollout_id is not None:
            lm_kwargs.setdefault("rollout_id", settings.rollout_id)
        if not settings.cache:
            lm_kwargs["cache"] = False
        started = time.monotonic()
        try:
            result = await adapter.acall(
                lm, self.signature, [dict(d.items()) for d in self.demos], values, lm_kwargs
            )
        except LMError as exc:
            if exc.request_id is None:
                exc.request_id = settings.request_id
            raise
        outputs = result.outputs[0]
        step = TraceStep(
            predictor=self.signature.signature_name,
            signature_name=self.signature.signature_name,
            inputs=dict(values),
            outputs=dict(outputs),
            usage=result.usage,
            latency_s=time.monotonic() - started,
        )
        record_call(self, step)
        return Prediction(
            outputs, usage=result.usage, trace=(step,), completions=tuple(result.outputs)
        )

    def _check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        fields = self.signature.input_fields
        name = self.signature.signature_name
        unexpected = [key for key in inputs if key not in fields]
        if unexpected:
            raise InputError(
                f"{name}: unexpected input field(s) {_names(unexpected)}; "
                f"expected {_names(fields)}",
                fields=unexpected,
            )
        missing = [key for key in fields if key not in inputs and not _optional(fields[key])]
        if missing:
            raise InputError(f"{name}: missing input field(s) {_names(missing)}", fields=missing)
        values: dict[str, Any] = {}
        for key, spec in fields.items():
            if key not in inputs:
                continue
            try:
                values[key] = spec.validate_input(inputs[key])
            except (ValueError, TypeError) as exc:
                raise InputError(
                    f"{name}: input field `{key}` is not a valid {spec.annotation!r}: {exc}",
                    fields=[key],
                ) from exc
        return values

    # -- state -----------------------------------------------------------------------

    def dump_predictor_state(self) -> dict[str, Any]:
        """Signature, demos and LM parameters of this predictor, as JSON data."""
        return {
            "signature": self.signature.to_json(),
            "demos": [demo.to_json() for demo in self.demos],
            "lm": self.lm.dump_state() if self.lm is not None else None,
            "adapter": self.adapter.name if self.adapter is not None else None,
            "lm_kwargs": {k: v for k, v in self.lm_kwargs.items() if k in _LM_PARAMETERS},
        }

    def load_predictor_state(self, state: Mapping[str, Any], *, path: str = "self") -> None:
        """Apply one predictor's state; the LM client itself is never replaced.

        Raises:
            StateError: The state is malformed or its signature has other fields.
        """
        try:
            signature = Signature.from_json(state["signature"])
            demos = [Example.from_json(demo) for demo in state.get("demos", [])]
            lm_kwargs = dict(state.get("lm_kwargs") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"predictor `{path}`: malformed state ({exc!r})") from exc
        if list(signature.fields) != list(self.signature.fields):
            raise StateError(
                f"predictor `{path}`: saved signature has fields {list(signature.fields)}, "
                f"this program has {list(self.signature.fields)}"
            )
        adapter = state.get("adapter")
        if adapter is not None:
            self.adapter = _adapter_named(str(adapter), path)
        self.signature = signature
        self.demos = demos
        self.lm_kwargs.update({k: v for k, v in lm_kwargs.items() if k in _LM_PARAMETERS})


class ChainOfThought(Module):
    """Predict with a ``reasoning`` output field before the others.

    Args:
        signature: The task's signature; ``reasoning`` is prepended to its outputs.
        rationale_description: What the reasoning field asks for.
        **predict_kwargs: Passed to the inner :class:`Predict` (lm, adapter, demos, ...).
    """

    def __init__(
        self,
        signature: str | type[Signature],
        *,
        rationale_description: str = "Think step by step to reach the answer.",
        **predict_kwargs: Any,
    ) -> None:
        base = ensure_signature(signature)
        #: The task's own signature, without the reasoning field.
        self.signature = base
        extended = base.prepend(
            "reasoning",
            OutputField(desc=rationale_description, prefix="Reasoning:"),
            str,
        )
        self.predict = Predict(extended, **predict_kwargs)

    async def aforward(self, **inputs: Any) -> Prediction:
        return await self.predict.acall(**inputs)


def _adapter_named(name: str, path: str) -> Adapter:
    from dspex.programs.adapters.json import JSONAdapter

    if name == ChatAdapter.name:
        return ChatAdapter()
    if name == JSONAdapter.name:
        return JSONAdapter()
    raise StateError(f"predictor `{path}`: unknown adapter {name!r} (known: chat, json)")


def _names(names: Any) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _optional(spec: Any) -> bool:
    annotation = spec.annotation
    args = getattr(annotation, "__args__", ())
    return type(None) in args
