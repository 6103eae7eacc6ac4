"""SIMBA: stochastic introspective mini-batch ascent.

Each step takes the next minibatch of the (seeded, shuffled) trainset and:

1. **Samples trajectories.** ``num_candidates`` rollouts run the minibatch,
   each on a program drawn from the pool by a softmax over average scores,
   at its own raised temperature and rollout id, through the executor.
2. **Finds hard examples.** Every example's runs form a bucket; buckets are
   ranked by the gap between their best and worst score (then best score,
   then best-to-average gap): where the program sometimes succeeds and
   sometimes fails there is something to learn.
3. **Builds candidates** from the top buckets, each from a pool program
   (softmax again) by one of two strategies: *append a demo* (the bucket's
   best run becomes a demo for every predictor it called) or *append a rule*
   (the prompt model compares the better and the worse run and writes advice
   per predictor, appended to its instructions). A predictor already holding
   ``max_demos`` demos first loses one at random.
4. **Scores** each candidate on the same minibatch as a numbered trial
   (``full_eval=False``) and adds it to the pool.

At the end the baseline and the winners of evenly spaced steps are evaluated
on the valset (or trainset) as full trials; the best one is returned.

Kept from DSPy's SIMBA: the loop above, the bucket ranking, the 10th/90th
percentile guards on the strategies, softmax selection from the top
``num_candidates`` programs plus the baseline, the final choice among
winners. Simplified: one program per rollout (not per example and rollout);
demos are dropped one at a time rather than a Poisson count; the advice
prompt sees the predictors' signatures rather than the program's source; a
demo is only taken from a run that scored above zero. Trajectory rollouts
are exploration, not trials: a resumed run samples them again (they are
cached per rollout id) and reuses the recorded trials.

Example:
    >>> optimizer = SIMBA("exact_match", bsize=16, max_steps=4, seed=1)   # doctest: +SKIP
    >>> with dspex.context(lm=lm):                                       # doctest: +SKIP
    ...     compiled = await optimizer.acompile(program, trainset=trainset)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import statistics
from collections.abc import Sequence
from typing import Literal

from dspex.errors import ConfigurationError, DSPExError
from dspex.optimizers.base import Optimizer, Trial, TrialCallback
from dspex.optimizers.executor import Executor, ScoredOutput
from dspex.optimizers.labeled import check_trainset
from dspex.optimizers.variables import digest, rebuild
from dspex.programs.context import context
from dspex.programs.example import Example
from dspex.programs.lm.base import LM
from dspex.programs.metrics import Metric
from dspex.programs.module import Module
from dspex.programs.predict import Predict
from dspex.programs.signature import InputField, OutputField, Signature

__all__ = ["SIMBA"]

logger = logging.getLogger("dspex.optimizers.simba")

Strategy = Literal["demo", "rule"]


class OfferAdvice(Signature):
    """Two runs of the same LM program on the same input scored differently. Compare the
    better run with the worse one and advise each module of the program how to act like
    the better run next time. Advice must be concrete yet general enough to help on
    similar inputs; each module only sees its own advice and never its past runs."""

    modules: str = InputField(desc="Each module: name, input and output fields, instructions")
    program_inputs: str = InputField(desc="The input of both runs, as JSON")
    expected: str = InputField(desc="Hidden labels of this example, as JSON")
    better_trajectory: str = InputField(desc="Each module call of the better run, as JSON")
    better_score: float = InputField(desc="The better run's score")
    worse_trajectory: str = InputField(desc="Each module call of the worse run, as JSON")
    worse_score: float = InputField(desc="The worse run's score")
    advice: dict[str, str] = OutputField(
        desc="For each module name: if it receives inputs like these, what it should do"
    )


class SIMBA(Optimizer):
    """Improve a program with demos and rules learned from its own variable runs.

    Args:
        metric: ``metric(example, prediction, trace=None)`` or a built-in name.
        bsize: Minibatch size (capped at the trainset size).
        num_candidates: Rollouts per step, and most new candidates per step.
        max_steps: Minibatches.
        max_demos: Most demos per predictor; 0 uses only the rule strategy.
        prompt_model: The LM that writes rules; default the context's.
        temperature_for_sampling: Softmax temperature choosing rollout programs.
        temperature_for_candidates: Softmax temperature choosing source programs.
        executor: Where runs and evaluations happen; default a LocalExecutor.
        seed: Seeds every choice; the same seed and answers give the same trials.
        on_trial: Called with each finished trial.
        resume: Trials of an interrupted run; matching ones are not re-evaluated.

    Raises:
        ConfigurationError: A count or temperature is out of range.
    """

    def __init__(
        self,
        metric: Metric | str,
        *,
        bsize: int = 32,
        num_candidates: int = 6,
        max_steps: int = 8,
        max_demos: int = 4,
        prompt_model: LM | None = None,
        temperature_for_sampling: float = 0.2,
        temperature_for_candidates: float = 0.2,
        executor: Executor | None = None,
        seed: int = 0,
        on_trial: TrialCallback | None = None,
        resume: Sequence[Trial] = (),
    ) -> None:
        for name, value, least in (
            ("bsize", bsize, 1),
            ("num_candidates", num_candidates, 1),
            ("max_steps", max_steps, 1),
            ("max_demos", max_demos, 0),
        ):
            if value < least:
                raise ConfigurationError(f"{name} must be >= {least}, got {value}")
        if temperature_for_sampling <= 0 or temperature_for_candidates <= 0:
            raise ConfigurationError("softmax temperatures must be > 0")
        super().__init__(
            metric=metric, executor=executor, seed=seed, on_trial=on_trial, resume=resume
        )
        self.bsize = bsize
        self.num_candidates = num_candidates
        self.max_steps = max_steps
        self.max_demos = max_demos
        self.prompt_model = prompt_model
        self.temperature_for_sampling = temperature_for_sampling
        self.temperature_for_candidates = temperature_for_candidates
        # The pool of the running compile: programs and every score observed for each.
        self._pool: list[Module] = []
        self._scores: list[list[float]] = []

    async def acompile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
    ) -> Module:
        """Return the best program found (a new one; ``student`` is not modified).

        Args:
            student: The program to improve.
            trainset: Labelled examples the minibatches are drawn from.
            valset: Examples of the final evaluation; default the trainset.

        Raises:
            ConfigurationError: Empty trainset or a program without predictors.
            OptimizationError: Every final evaluation failed.
        """
        check_trainset(trainset)
        if not student.named_predictors():
            raise ConfigurationError(f"{type(student).__name__} has no predictors to optimize")
        self.trials = []
        rng = random.Random(self.seed)
        self._pool = [student.deepcopy()]
        self._scores = [[]]
        winners = [0]
        order = list(range(len(trainset)))
        rng.shuffle(order)
        bsize = min(self.bsize, len(trainset))
        cursor = 0
        for step in range(self.max_steps):
            if cursor + bsize > len(order):
                rng.shuffle(order)
                cursor = 0
            batch = [trainset[i] for i in order[cursor : cursor + bsize]]
            cursor += bsize
            buckets = await self._rollouts(step, batch, rng)
            scores = [o.score for bucket in buckets for o in bucket]
            low, high = _percentile(scores, 10), _percentile(scores, 90)
            best: tuple[float, int] | None = None
            for number_in_step, (source, strategy, candidate) in enumerate(
                await self._candidates(step, buckets, low, high, rng)
            ):
                trial = await self.evaluate_trial(
                    len(self.trials),
                    candidate,
                    batch,
                    {
                        "step": step,
                        "candidate": number_in_step,
                        "source": source,
                        "strategy": strategy,
                        "state": digest(candidate.dump_state()),
                    },
                    full_eval=False,
                )
                self._pool.append(candidate)
                self._scores.append([trial.score or 0.0])
                if trial.score is not None and (best is None or trial.score > best[0]):
                    best = (trial.score, len(self._pool) - 1)
            if best is not None:
                winners.append(best[1])
        return await self._final(student, winners, list(valset) if valset else list(trainset))

    # -- steps -------------------------------------------------------------------------

    async def _rollouts(
        self, step: int, batch: list[Example], rng: random.Random
    ) -> list[list[ScoredOutput]]:
        """Per example, its runs best first; examples ranked by how much the runs differ."""
        top = self._top()
        sources = [
            self._softmax(top, self.temperature_for_sampling, rng)
            for _ in range(self.num_candidates)
        ]
        summaries = await asyncio.gather(
            *(
                self.executor.evaluate(
                    _at_temperature(self._pool[source], 0.5 + r * 0.5 / self.num_candidates),
                    batch,
                    self.metric,
                    rollout_id=f"simba-{self.seed}-{step}-{r}",
                )
                for r, source in enumerate(sources)
            )
        )
        for source, summary in zip(sources, summaries, strict=True):
            self._scores[source].extend(o.score for o in summary.outputs)
        buckets = [
            sorted((s.outputs[i] for s in summaries), key=lambda o: -o.score)
            for i in range(len(batch))
        ]
        return sorted(buckets, key=_variability, reverse=True)

    async def _candidates(
        self,
        step: int,
        buckets: list[list[ScoredOutput]],
        low: float,
        high: float,
        rng: random.Random,
    ) -> list[tuple[int, Strategy, Module]]:
        strategies: list[Strategy] = ["demo", "rule"] if self.max_demos > 0 else ["rule"]
        made: list[tuple[int, Strategy, Module]] = []
        for bucket in buckets:
            if len(made) >= self.num_candidates:
                break
            source = self._softmax(self._top(), self.temperature_for_candidates, rng)
            candidate = self._pool[source].deepcopy()
            self._drop_demo(candidate, rng)
            strategy = strategies[rng.randrange(len(strategies))]
            if strategy == "demo":
                built = _append_demo(candidate, bucket, low)
            else:
                built = await self._append_rule(candidate, bucket, low, high, f"{step}-{len(made)}")
            if built:
                made.append((source, strategy, candidate))
        return made

    async def _append_rule(
        self, program: Module, bucket: list[ScoredOutput], low: float, high: float, rollout: str
    ) -> bool:
        good, bad = bucket[0], bucket[-1]
        if good.score <= bad.score or good.score < low or bad.score > high:
            return False  # no contrast to learn from
        predictors = dict(program.named_predictors())
        advisor = Predict(OfferAdvice, lm=self.prompt_model)
        try:
            with context(rollout_id=f"simba-{self.seed}-advice-{rollout}"):
                prediction = await advisor.acall(
                    modules=_describe_modules(program),
                    program_inputs=_json(dict(good.example.inputs().items())),
                    expected=_json(dict(good.example.labels().items())),
                    better_trajectory=_trajectory(good),
                    better_score=good.score,
                    worse_trajectory=_trajectory(bad),
                    worse_score=bad.score,
                )
        except DSPExError as exc:
            logger.warning("SIMBA advice %s failed: %s", rollout, exc)
            return False
        applied = False
        for name, advice in dict(prediction.advice).items():
            predictor = predictors.get(str(name))
            if predictor is not None and str(advice).strip():
                instructions = f"{predictor.signature.instructions}\n\n{str(advice).strip()}"
                predictor.signature = predictor.signature.with_instructions(instructions)
                applied = True
        return applied

    def _drop_demo(self, program: Module, rng: random.Random) -> None:
        most = max((len(p.demos) for p in program.predictors()), default=0)
        if self.max_demos and most >= self.max_demos:
            drop = rng.randrange(most)
            for predictor in program.predictors():
                predictor.demos = [d for i, d in enumerate(predictor.demos) if i != drop]

    async def _final(self, student: Module, winners: list[int], examples: list[Example]) -> Module:
        last, wanted = len(winners) - 1, self.num_candidates + 1
        picks = [0] if last < 1 else [round(i * last / (wanted - 1)) for i in range(wanted)]
        for index in dict.fromkeys(winners[p] for p in picks):
            program = self._pool[index]
            await self.evaluate_trial(
                len(self.trials),
                program,
                examples,
                {"final": True, "program": index, "state": digest(program.dump_state())},
            )
        return rebuild(student, self.best_trial(full_eval_only=True).state)

    # -- pool selection --------------------------------------------------------------

    def _average(self, index: int) -> float:
        scores = self._scores[index]
        return statistics.fmean(scores) if scores else 0.0

    def _top(self) -> list[int]:
        """The ``num_candidates`` best programs by average score, always with the baseline."""
        ranked = sorted(range(len(self._pool)), key=lambda i: -self._average(i))
        top = ranked[: self.num_candidates]
        if 0 not in top:
            top[-1] = 0
        return list(dict.fromkeys(top))

    def _softmax(self, indices: list[int], temperature: float, rng: random.Random) -> int:
        averages = [self._average(i) for i in indices]
        peak = max(averages)
        weights = [math.exp((a - peak) / temperature) for a in averages]
        return rng.choices(indices, weights=weights, k=1)[0]


def _at_temperature(program: Module, offset: float) -> Module:
    """A copy sampling at its own temperature (0 when unset) plus ``offset``."""
    copy = program.deepcopy()
    for predictor in copy.predictors():
        base = float(predictor.lm_kwargs.get("temperature") or 0.0)
        predictor.lm_kwargs["temperature"] = round(base + offset, 4)
    return copy


def _variability(bucket: list[ScoredOutput]) -> tuple[float, float, float]:
    best, worst = bucket[0].score, bucket[-1].score
    return best - worst, best, best - statistics.fmean(o.score for o in bucket)


def _append_demo(program: Module, bucket: list[ScoredOutput], low: float) -> bool:
    good = bucket[0]
    if not good.ok or good.score <= 0 or good.score < low:
        return False
    predictors = dict(program.named_predictors())
    demos = {step.predictor: step for step in good.trace if step.predictor in predictors}
    for name, step in demos.items():
        fields = {**step.inputs, **step.outputs}
        predictors[name].demos.append(Example(fields).with_inputs(*step.inputs))
    return bool(demos)


def _describe_modules(program: Module) -> str:
    parts = []
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        parts.append(
            f"Module `{name}`: inputs {list(signature.input_fields)}, outputs "
            f"{list(signature.output_fields)}\nInstructions: {signature.instructions}"
        )
    return "\n\n".join(parts)


def _trajectory(output: ScoredOutput) -> str:
    steps = [
        {"module": step.predictor, "inputs": step.inputs, "outputs": step.outputs}
        for step in output.trace
    ]
    if output.error is not None:
        steps.append({"error": f"{output.error.type}: {output.error.message}"})
    return _json(steps)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, indent=1)


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, as numpy computes it by default."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
