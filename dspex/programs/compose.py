"""Modules that combine runs of other modules: BestOfN, Refine,
MultiChainComparison, Parallel and majority."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from dspex.errors import ConfigurationError, DSPExError, InputError
from dspex.programs.context import context, current_settings
from dspex.programs.example import Example, Prediction
from dspex.programs.module import Module
from dspex.programs.predict import Predict
from dspex.programs.signature import InputField, OutputField, Signature, ensure_signature

__all__ = ["BestOfN", "MultiChainComparison", "Parallel", "Refine", "majority"]

#: Scores a prediction for the given inputs; higher is better. May be async.
RewardFn = Callable[[Mapping[str, Any], Prediction], float | Awaitable[float]]


async def _reward(reward_fn: RewardFn, inputs: Mapping[str, Any], prediction: Prediction) -> float:
    value = reward_fn(inputs, prediction)
    if isinstance(value, Awaitable):
        value = await value
    return float(value)


class BestOfN(Module):
    """Run a module up to ``n`` times (distinct rollouts) and keep the best run.

    Stops early at the first run whose reward reaches ``threshold``. Runs that
    raise count as failures; after ``fail_count`` of them the last error is raised.

    Args:
        module: The program to run.
        n: Most attempts.
        reward_fn: ``(inputs, prediction) -> float``, sync or async.
        threshold: Reward that is good enough to stop.
        fail_count: Failed attempts tolerated; default ``n``.
        temperature: Sampling temperature of the attempts (each gets its own
            rollout id, so they differ and can still be cached).
    """

    def __init__(
        self,
        module: Module,
        *,
        n: int,
        reward_fn: RewardFn,
        threshold: float,
        fail_count: int | None = None,
        temperature: float = 1.0,
    ) -> None:
        if n < 1:
            raise ConfigurationError("n must be at least 1")
        self.module = module
        self.n = n
        self.reward_fn = reward_fn
        self.threshold = threshold
        self.fail_count = n if fail_count is None else fail_count
        self.temperature = temperature

    async def aforward(self, **inputs: Any) -> Prediction:
        best: tuple[float, Prediction] | None = None
        module = self.module
        failures = 0
        for attempt in range(self.n):
            try:
                prediction = await self._attempt(module, attempt, inputs)
                reward = await _reward(self.reward_fn, inputs, prediction)
            except DSPExError:
                failures += 1
                if failures > self.fail_count or failures == self.n:
                    raise
                continue
            if best is None or reward > best[0]:
                best = (reward, prediction)
            if reward >= self.threshold or attempt == self.n - 1:
                break
            module = await self._next_module(inputs, prediction, reward)
        if best is None:  # every attempt failed but fewer than fail_count times
            raise InputError(f"{type(self).__name__}: all {self.n} attempts failed")
        return best[1]

    async def _next_module(
        self, inputs: Mapping[str, Any], prediction: Prediction, reward: float
    ) -> Module:
        """The module for the next attempt, after one scored below the threshold."""
        return self.module

    async def _attempt(self, module: Module, attempt: int, inputs: Mapping[str, Any]) -> Prediction:
        settings = current_settings()
        lm_kwargs = {**settings.lm_kwargs, "temperature": self.temperature}
        rollout = f"{settings.rollout_id or uuid.uuid4().hex}:{attempt}"
        with context(lm_kwargs=lm_kwargs, rollout_id=rollout):
            return await module.acall(**inputs)


class _Feedback(Signature):
    """A program run scored below the target. Study its inputs, outputs and score
    and write short, concrete advice that would make the next attempt better."""

    program_inputs: str = InputField(desc="The inputs of the run, as JSON")
    program_outputs: str = InputField(desc="The outputs of the run, as JSON")
    reward: float = InputField(desc="The score of the run")
    target: float = InputField(desc="The score the run had to reach")
    advice: str = OutputField(desc="Advice for the next attempt")


class Refine(BestOfN):
    """BestOfN where each failed attempt yields advice for the next one.

    After an attempt scores below ``threshold``, an LM writes advice from its
    inputs, outputs and score; the next attempt runs a copy of the module whose
    predictors carry that advice in their instructions.
    """

    def __init__(self, module: Module, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.feedback = Predict(_Feedback)

    async def _next_module(
        self, inputs: Mapping[str, Any], prediction: Prediction, reward: float
    ) -> Module:
        advice = await self.feedback.acall(
            program_inputs=json.dumps(dict(inputs), default=str),
            program_outputs=json.dumps(dict(prediction.items()), default=str),
            reward=reward,
            target=self.threshold,
        )
        return _with_advice(self.module, str(advice.advice))


def _with_advice(module: Module, advice: str) -> Module:
    copy = module.deepcopy()
    for predictor in copy.predictors():
        predictor.signature = predictor.signature.with_instructions(
            f"{predictor.signature.instructions}\n\nAdvice from a previous attempt: {advice}"
        )
    return copy


class MultiChainComparison(Module):
    """Compare several reasoning attempts and produce one corrected answer.

    Call with ``completions=[prediction, ...]`` (exactly ``m`` of them) plus the
    signature's inputs.
    """

    def __init__(
        self, signature: str | type[Signature], *, m: int = 3, **predict_kwargs: Any
    ) -> None:
        base = ensure_signature(signature)
        self.m = m
        self.last_output = list(base.output_fields)[-1]
        extended = base
        for index in range(1, m + 1):
            extended = extended.append(
                f"reasoning_attempt_{index}",
                InputField(desc=f"Student attempt {index}", prefix=f"Student Attempt #{index}:"),
                str,
            )
        extended = extended.prepend(
            "rationale",
            OutputField(desc="Compare the attempts, then reason to the correct answer"),
            str,
        )
        self.predict = Predict(extended, **predict_kwargs)

    async def aforward(self, **inputs: Any) -> Prediction:
        completions: Sequence[Mapping[str, Any]] = inputs.pop("completions", ())
        if len(completions) != self.m:
            raise InputError(
                f"MultiChainComparison expects {self.m} completions, got {len(completions)}",
                fields=["completions"],
            )
        attempts: dict[str, str] = {}
        for index, completion in enumerate(completions, start=1):
            rationale = completion.get("reasoning") or completion.get("rationale") or ""
            answer = completion.get(self.last_output, "")
            attempts[f"reasoning_attempt_{index}"] = (
                f"«I'm trying to {rationale} I'm not sure but my prediction is {answer}»"
            )
        return await self.predict.acall(**inputs, **attempts)


class Parallel:
    """Run many (module, inputs) pairs concurrently with a bound.

    Args:
        max_concurrency: Most runs in flight at once.
        return_exceptions: Return dspex errors in place of predictions instead
            of raising the first one (other runs are cancelled when raising).

    Example:
        >>> results = await Parallel(max_concurrency=16).arun(   # doctest: +SKIP
        ...     [(qa, {"question": q}) for q in questions])
    """

    def __init__(self, *, max_concurrency: int = 16, return_exceptions: bool = False) -> None:
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.return_exceptions = return_exceptions

    async def arun(
        self, runs: Iterable[tuple[Module, Mapping[str, Any] | Example]]
    ) -> list[Prediction | DSPExError]:
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def one(
            module: Module, inputs: Mapping[str, Any] | Example
        ) -> Prediction | DSPExError:
            values = inputs.inputs() if isinstance(inputs, Example) else inputs
            async with semaphore:
                try:
                    return await module.acall(**dict(values.items()))
                except DSPExError as exc:
                    if self.return_exceptions:
                        return exc
                    raise

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(module, inputs)) for module, inputs in runs]
        return [task.result() for task in tasks]

    def __call__(
        self, runs: Iterable[tuple[Module, Mapping[str, Any] | Example]]
    ) -> list[Prediction | DSPExError]:
        from dspex.programs._sync import run_sync

        return run_sync(self.arun(runs))


def majority(
    predictions: Prediction | Sequence[Mapping[str, Any]],
    *,
    field: str | None = None,
    normalize: Callable[[Any], Any] | None = None,
) -> Prediction:
    """The completion whose ``field`` value is most common (first seen wins ties).

    Args:
        predictions: A Prediction (its ``completions`` are compared) or a list of outputs.
        field: Field to vote on; default the last output field.
        normalize: Applied to values before counting (e.g. ``str.lower``); values
            it maps to None do not vote.
    """
    completions: Sequence[Mapping[str, Any]] = (
        predictions.completions if isinstance(predictions, Prediction) else predictions
    )
    if not completions:
        raise InputError("majority needs at least one completion")
    key = field or list(completions[0])[-1]
    normal = normalize or (lambda value: value)
    votes: Counter[str] = Counter()
    first: dict[str, Mapping[str, Any]] = {}
    for completion in completions:
        if key not in completion:
            raise InputError(f"majority: a completion has no field `{key}`", fields=[key])
        value = normal(completion[key])
        if value is None:
            continue
        token = json.dumps(value, sort_keys=True, default=str)
        votes[token] += 1
        first.setdefault(token, completion)
    if not votes:
        raise InputError(f"majority: no completion has a votable `{key}`", fields=[key])
    winner = max(votes, key=lambda token: (votes[token], -list(first).index(token)))
    return Prediction(dict(first[winner]), completions=tuple(dict(c) for c in completions))
