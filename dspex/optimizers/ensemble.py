"""Ensemble: run several programs on the same inputs and reduce their answers.

Typically the best candidates of a search, combined by majority vote.

Example:
    >>> ensemble = Ensemble(size=3).compile([program_a, program_b, program_c])  # doctest: +SKIP
    >>> prediction = await ensemble.acall(question="...")                         # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dspex.errors import ConfigurationError
from dspex.programs.compose import majority
from dspex.programs.example import Prediction
from dspex.programs.module import Module

__all__ = ["Ensemble", "EnsembleProgram", "Reducer"]

#: Turns the predictions of the programs (in program order) into one.
Reducer = Callable[[Sequence[Prediction]], Prediction]


class Ensemble:
    """Combine programs into one :class:`EnsembleProgram`.

    Not a search: ``compile`` only wires the programs together, so it needs no
    trainset, metric or LM.

    Args:
        reduce_fn: Combines the predictions; default :func:`majority` (vote on
            the last output field, first seen wins ties). None returns the
            first program's outputs with every program's outputs as
            ``completions`` (reduce them later, e.g. ``majority(prediction)``).
        size: Run only this many programs per call, sampled; None runs all.
        deterministic: With ``size``, the sample depends only on ``seed`` and
            the call's inputs (the same inputs always meet the same programs);
            False draws a fresh sample on every call.
        seed: Seeds the deterministic sample.

    Raises:
        ConfigurationError: ``size`` is below 1.
    """

    def __init__(
        self,
        *,
        reduce_fn: Reducer | None = majority,
        size: int | None = None,
        deterministic: bool = True,
        seed: int = 0,
    ) -> None:
        if size is not None and size < 1:
            raise ConfigurationError(f"size must be >= 1 or None, got {size}")
        self.reduce_fn = reduce_fn
        self.size = size
        self.deterministic = deterministic
        self.seed = seed

    def compile(self, programs: Sequence[Module]) -> EnsembleProgram:
        """Wire ``programs`` into one program (they are copied, not shared).

        Raises:
            ConfigurationError: No programs, or fewer than ``size``.
        """
        if not programs:
            raise ConfigurationError("an ensemble needs at least one program")
        if self.size is not None and self.size > len(programs):
            raise ConfigurationError(
                f"size {self.size} is more than the {len(programs)} programs given"
            )
        return EnsembleProgram(
            [program.deepcopy() for program in programs],
            reduce_fn=self.reduce_fn,
            size=self.size,
            deterministic=self.deterministic,
            seed=self.seed,
        )


class EnsembleProgram(Module):
    """Runs its programs concurrently on each call and reduces their predictions.

    Predictor paths are ``programs[i].<path in program i>``; the trace of a
    call holds every program's steps and its usage their sum. A program that
    fails fails the call (the first failure in program order is raised):
    a vote over the survivors would silently change what the ensemble means.

    Args:
        programs: The members.
        reduce_fn: See :class:`Ensemble`.
        size: See :class:`Ensemble`.
        deterministic: See :class:`Ensemble`.
        seed: See :class:`Ensemble`.
    """

    def __init__(
        self,
        programs: Sequence[Module],
        *,
        reduce_fn: Reducer | None = majority,
        size: int | None = None,
        deterministic: bool = True,
        seed: int = 0,
    ) -> None:
        self.programs = list(programs)
        self.reduce_fn = reduce_fn
        self.size = size
        self.deterministic = deterministic
        self.seed = seed
        self._random = random.Random()

    def chosen(self, inputs: Mapping[str, Any]) -> list[Module]:
        """The programs that answer a call with ``inputs``, in program order."""
        if self.size is None or self.size >= len(self.programs):
            return list(self.programs)
        rng = self._random
        if self.deterministic:
            key = json.dumps(dict(inputs), sort_keys=True, default=str)
            rng = random.Random(f"{self.seed}:{key}")
        picked = sorted(rng.sample(range(len(self.programs)), self.size))
        return [self.programs[index] for index in picked]

    async def aforward(self, **inputs: Any) -> Prediction:
        programs = self.chosen(inputs)
        results = await asyncio.gather(
            *(program.acall(**inputs) for program in programs), return_exceptions=True
        )
        predictions: list[Prediction] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            predictions.append(result)
        if self.reduce_fn is None:
            return Prediction(
                dict(predictions[0].items()),
                completions=[dict(p.items()) for p in predictions],
            )
        return self.reduce_fn(predictions)
