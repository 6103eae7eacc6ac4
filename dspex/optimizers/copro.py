"""COPRO: instructions proposed by an LM, improved by coordinate ascent.

For each predictor, a *prompt model* proposes new instructions: first from
the predictor's current instruction and fields, then, at every further depth,
from the instructions already tried and their scores (worst first, so the
best attempts are freshest). Predictors are optimized one at a time while the
others keep their best instruction so far: every candidate is a full program
evaluated as a numbered trial on the valset (or trainset), and the
best-scoring trial is returned.

What differs from DSPy's COPRO: only the instruction is proposed (not an
output-field prefix as well); a configuration already evaluated is not
evaluated again; proposals come from one request with ``n`` choices, topped up
by single requests with their own rollout ids when a server returns fewer.

Example:
    >>> optimizer = COPRO("exact_match", breadth=6, depth=2, seed=3)   # doctest: +SKIP
    >>> with dspex.context(lm=lm):                                    # doctest: +SKIP
    ...     compiled = await optimizer.acompile(program, trainset=trainset)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dspex.errors import ConfigurationError, DSPExError, OptimizationError
from dspex.optimizers.base import Optimizer, Trial, TrialCallback
from dspex.optimizers.executor import Executor
from dspex.optimizers.labeled import check_trainset
from dspex.optimizers.variables import rebuild, with_instructions
from dspex.programs.context import context
from dspex.programs.example import Example
from dspex.programs.lm.base import LM
from dspex.programs.metrics import Metric
from dspex.programs.module import Module
from dspex.programs.predict import Predict
from dspex.programs.signature import InputField, OutputField, Signature

__all__ = ["COPRO", "describe_predictor", "propose_instructions"]

logger = logging.getLogger("dspex.optimizers.copro")


class ProposeInstruction(Signature):
    """You improve the instructions given to a language model for one task. Read the
    task's fields and its current instruction, then write one better instruction:
    specific about what to produce and how, so that a capable model following it
    would do the task more accurately. Answer with the instruction only."""

    task: str = InputField(desc="The task's input and output fields")
    basic_instruction: str = InputField(desc="The instruction used so far")
    proposed_instruction: str = OutputField(desc="The improved instruction")


class ProposeFromAttempts(Signature):
    """You improve the instructions given to a language model for one task. Below are
    instructions already tried with their scores on a validation set (higher is
    better), worst first. Study what the better ones do differently and write one
    new instruction that should score higher than all of them. Answer with the
    instruction only."""

    task: str = InputField(desc="The task's input and output fields")
    attempted_instructions: str = InputField(desc="Instructions tried, each with its score")
    proposed_instruction: str = OutputField(desc="A new instruction that should score higher")


class COPRO(Optimizer):
    """Search instructions with LM proposals and coordinate ascent.

    Args:
        metric: ``metric(example, prediction, trace=None)`` or a built-in name.
        prompt_model: The LM that proposes instructions; default the context's.
        breadth: Candidates per predictor and depth (the current instruction
            counts as one at depth 0).
        depth: Rounds of proposal and evaluation.
        init_temperature: Sampling temperature of the proposals.
        executor: Where evaluations run; default a LocalExecutor.
        seed: Names the proposal rollouts, so a cached run repeats exactly.
        on_trial: Called with each finished trial.
        resume: Trials of an interrupted run; matching ones are not re-evaluated.

    Raises:
        ConfigurationError: ``breadth < 2`` or ``depth < 1``.
    """

    def __init__(
        self,
        metric: Metric | str,
        *,
        prompt_model: LM | None = None,
        breadth: int = 10,
        depth: int = 3,
        init_temperature: float = 1.4,
        executor: Executor | None = None,
        seed: int = 0,
        on_trial: TrialCallback | None = None,
        resume: Sequence[Trial] = (),
    ) -> None:
        if breadth < 2:
            raise ConfigurationError(f"breadth must be >= 2 (one is the current), got {breadth}")
        if depth < 1:
            raise ConfigurationError(f"depth must be >= 1, got {depth}")
        super().__init__(
            metric=metric, executor=executor, seed=seed, on_trial=on_trial, resume=resume
        )
        self.prompt_model = prompt_model
        self.breadth = breadth
        self.depth = depth
        self.init_temperature = init_temperature

    async def acompile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
    ) -> Module:
        """Return a copy of ``student`` with the best instructions found.

        Args:
            student: The program to improve (not modified).
            trainset: Examples the candidates are scored on when there is no valset.
            valset: Examples the candidates are scored on.

        Raises:
            ConfigurationError: Empty examples or a program without predictors.
            OptimizationError: No instruction could be proposed, or every trial failed.
        """
        examples = list(valset) if valset else list(trainset)
        check_trainset(examples, name="valset" if valset else "trainset")
        predictors = dict(student.named_predictors())
        if not predictors:
            raise ConfigurationError(f"{type(student).__name__} has no predictors to optimize")
        self.trials = []
        best = {path: p.signature.instructions for path, p in predictors.items()}
        #: Per predictor, every instruction tried and its score (None: failed).
        tried: dict[str, dict[str, float | None]] = {path: {} for path in predictors}
        scored: dict[str, float | None] = {}  # configuration key -> score
        pending: dict[str, list[str]] = {}
        for path, predictor in predictors.items():
            proposals = await self._propose(
                ProposeInstruction,
                {"task": describe_predictor(predictor), "basic_instruction": best[path]},
                count=self.breadth - 1,
                rollout=f"copro-{self.seed}-0-{path}",
            )
            if not proposals:
                raise OptimizationError(
                    f"the prompt model proposed no instruction for `{path}`; see the log"
                )
            pending[path] = _unique([best[path], *proposals])
        for level in range(self.depth):
            for path in predictors:
                for text in pending[path]:
                    config = {**best, path: text}
                    key = repr(sorted(config.items()))
                    if key not in scored:
                        trial = await self.evaluate_trial(
                            len(self.trials),
                            with_instructions(student, config),
                            examples,
                            {"depth": level, "predictor": path, "instructions": config},
                        )
                        scored[key] = trial.score
                    tried[path][text] = scored[key]
                # Coordinate ascent: later predictors are tuned against this choice.
                best[path] = _best_instruction(tried[path], best[path])
            if level + 1 < self.depth:
                for path, predictor in predictors.items():
                    pending[path] = await self._propose(
                        ProposeFromAttempts,
                        {
                            "task": describe_predictor(predictor),
                            "attempted_instructions": _attempts(tried[path], self.breadth),
                        },
                        count=self.breadth,
                        rollout=f"copro-{self.seed}-{level + 1}-{path}",
                    )
        winner = self.best_trial()
        return rebuild(student, winner.state)

    async def _propose(
        self, signature: type[Signature], inputs: Mapping[str, Any], *, count: int, rollout: str
    ) -> list[str]:
        return await propose_instructions(
            signature,
            inputs,
            count=count,
            lm=self.prompt_model,
            temperature=self.init_temperature,
            rollout=rollout,
        )


async def propose_instructions(
    signature: type[Signature],
    inputs: Mapping[str, Any],
    *,
    count: int,
    lm: LM | None,
    temperature: float,
    rollout: str,
    field: str = "proposed_instruction",
) -> list[str]:
    """Up to ``count`` distinct instructions from ``signature``'s ``field``.

    One request asks for ``count`` choices; servers that ignore ``n`` (or
    fail) are topped up with single requests, each with its own rollout id,
    so every proposal is a distinct, cacheable sample. Failed requests are
    logged and skipped.
    """
    proposals: list[str] = []
    for attempt in range(count):
        wanted = count - len(proposals)
        if wanted <= 0:
            break
        kwargs: dict[str, Any] = {"temperature": temperature}
        if attempt == 0 and wanted > 1:
            kwargs["n"] = wanted
        proposer = Predict(signature, lm=lm, **kwargs)
        try:
            with context(rollout_id=f"{rollout}-{attempt}"):
                prediction = await proposer.acall(**inputs)
        except DSPExError as exc:
            logger.warning("instruction proposal %s-%d failed: %s", rollout, attempt, exc)
            continue
        for completion in prediction.completions or (dict(prediction.items()),):
            text = _clean(completion.get(field))
            if text and text not in proposals:
                proposals.append(text)
    return proposals[:count]


def describe_predictor(predictor: Predict) -> str:
    """The fields of a predictor's signature, one per line, for proposal prompts."""
    lines = []
    for kind, fields in (
        ("input", predictor.signature.input_fields),
        ("output", predictor.signature.output_fields),
    ):
        for name, spec in fields.items():
            description = f": {spec.description}" if spec.description else ""
            lines.append(f"- {kind} `{name}`{description}")
    return "\n".join(lines)


def _best_instruction(tried: Mapping[str, float | None], current: str) -> str:
    successful = [(score, text) for text, score in tried.items() if score is not None]
    if not successful:
        return current
    top = max(score for score, _ in successful)
    return next(text for score, text in successful if score == top)  # earliest among equals


def _attempts(tried: Mapping[str, float | None], limit: int) -> str:
    ranked = sorted(
        ((score, text) for text, score in tried.items() if score is not None),
        key=lambda pair: pair[0],
    )[-limit:]
    return "\n\n".join(
        f"Instruction {i}: {text}\nScore {i}: {score:.3f}"
        for i, (score, text) in enumerate(ranked, start=1)
    )


def _clean(value: Any) -> str:
    text = str(value or "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _unique(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(texts))
