"""MIPROv2: data- and program-aware instruction proposals, Bayesian search over prompts.

1. **Demo candidates**: ``num_candidates`` demo sets from
   :func:`~dspex.optimizers.bootstrap.bootstrap_demo_sets` (zero-shot,
   labelled, bootstrapped ...).
2. **Instruction candidates**: per predictor, the current instruction plus
   ``num_candidates - 1`` proposals by the prompt model, each grounded in an
   LM-written summary of trainset examples, a description of the program's
   predictors and fields, one of the demo sets, and a random style tip.
3. **Search**: Optuna's TPE sampler (seeded) picks per predictor an
   instruction index and a demo set index, plus a value for every variable
   of the optional :class:`~dspex.optimizers.variables.SearchSpace`. Each
   pick is scored on a random minibatch of the valset (``full_eval=False``);
   every ``minibatch_full_eval_steps`` trials, the configuration with the
   best mean minibatch score that has not been fully evaluated yet is scored
   on the whole valset (``full_eval=True``). Trial 0 scores the unchanged
   student on the whole valset.
4. The best fully evaluated candidate is returned, rebuilt from its trial.

Resume: the study is replayed by asking the sampler again, trial by trial,
and telling it the recorded score whenever a recorded trial has the same
params (which :meth:`Optimizer.evaluate_trial` reuses). The sampler then
sees the history an uninterrupted run saw, so a resumed run continues
exactly where the interrupted one stopped. Proposals and bootstrapping are
repeated (cached per rollout id where the LM caches); a recorded trial
counts only if the candidate pools fingerprint (``pool``) still matches.

Example:
    >>> optimizer = MIPROv2("exact_match", num_candidates=4, num_trials=12)   # doctest: +SKIP
    >>> with dspex.context(lm=lm):                                           # doctest: +SKIP
    ...     compiled = await optimizer.acompile(program, trainset=train, valset=val)
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError, DSPExError
from dspex.optimizers.base import Optimizer, Trial, TrialCallback
from dspex.optimizers.copro import describe_predictor, propose_instructions
from dspex.optimizers.demos import bootstrap_demo_sets
from dspex.optimizers.executor import Executor
from dspex.optimizers.labeled import DemoSet, check_trainset, with_demos
from dspex.optimizers.random_search import demo_set_digest
from dspex.optimizers.variables import (
    SearchSpace,
    Variable,
    digest,
    rebuild,
    target_predictors,
    with_instructions,
)
from dspex.programs.adapters.base import format_value
from dspex.programs.context import context
from dspex.programs.example import Example
from dspex.programs.lm.base import LM
from dspex.programs.metrics import Metric
from dspex.programs.module import Module
from dspex.programs.predict import Predict
from dspex.programs.signature import InputField, OutputField, Signature

__all__ = ["MIPROv2"]

# Optuna is imported when a search runs, not with this module: `import dspex`
# (and every client of the wire records) must not pay a third of a second for it.
if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution, CategoricalDistribution

logger = logging.getLogger("dspex.optimizers.mipro")

#: Style tips, one drawn per proposal so the candidates differ in kind.
TIPS = (
    "",
    "Be inventive: an unusual framing of the task is welcome.",
    "Keep it short and plain.",
    "Spell out in detail what a good answer contains.",
    "Stress that mistakes would be costly, so the model must be careful.",
    "Open by giving the model a fitting role, such as 'You are an expert ...'.",
)


class DescribeDataset(Signature):
    """Read these examples from a dataset and describe the dataset in a few sentences:
    what the inputs are, what the expected outputs are, and any pattern a model
    needs to know to produce them."""

    examples: str = InputField(desc="Examples of the dataset, one JSON object per line")
    summary: str = OutputField(desc="A short description of the dataset")


class ProposeGroundedInstruction(Signature):
    """Write the instruction for one module of a language-model program. Use what you
    are told about the dataset, the program and the module, and the worked examples of
    the module's task, and follow the style tip. The instruction should make a model
    doing this module's task as accurate as possible. Answer with the instruction only."""

    dataset_summary: str = InputField(desc="What the program's data looks like")
    program_description: str = InputField(desc="The program's modules and their fields")
    module: str = InputField(desc="The module whose instruction is wanted, with its fields")
    task_demos: str = InputField(desc="Worked examples of the module's task")
    basic_instruction: str = InputField(desc="The module's current instruction")
    tip: str = InputField(desc="A style tip for the instruction")
    proposed_instruction: str = OutputField(desc="The instruction for the module")


class MIPROv2(Optimizer):
    """Propose instructions and demo sets, then search them (and variables) with Optuna.

    Args:
        metric: ``metric(example, prediction, trace=None)`` or a built-in name.
        prompt_model: LM for the dataset summary and proposals; default the context's.
        num_candidates: Instructions per predictor (the current one included)
            and demo sets.
        num_trials: Minibatch trials (full evaluations come on top).
        minibatch: Score trials on minibatches when the valset is larger than one.
        minibatch_size: Examples per minibatch.
        minibatch_full_eval_steps: Minibatch trials between full evaluations.
        max_bootstrapped_demos: Most bootstrapped demos per predictor.
        max_labeled_demos: Most demos per predictor in all.
        space: Further variables searched jointly, or None. Its ``instructions``
            variables are not searched apart: their texts join the instruction
            candidates of their predictors (after the current instruction).
        init_temperature: Sampling temperature of the proposals.
        view_data_batch_size: Trainset examples the dataset summary reads.
        teacher_settings: ``dspex.context`` settings while the teacher runs.
        executor: Where runs and evaluations happen; default a LocalExecutor.
        seed: Seeds demo sets, tips, minibatches and the sampler.
        on_trial: Called with each finished trial.
        resume: Trials of an interrupted run; matching ones are not re-evaluated.

    Raises:
        ConfigurationError: A count is out of range.
    """

    def __init__(
        self,
        metric: Metric | str,
        *,
        prompt_model: LM | None = None,
        num_candidates: int = 6,
        num_trials: int = 20,
        minibatch: bool = True,
        minibatch_size: int = 25,
        minibatch_full_eval_steps: int = 10,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        space: SearchSpace | None = None,
        init_temperature: float = 1.0,
        view_data_batch_size: int = 10,
        teacher_settings: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
        seed: int = 0,
        on_trial: TrialCallback | None = None,
        resume: Sequence[Trial] = (),
    ) -> None:
        for name, value in (
            ("num_candidates", num_candidates),
            ("num_trials", num_trials),
            ("minibatch_size", minibatch_size),
            ("minibatch_full_eval_steps", minibatch_full_eval_steps),
            ("view_data_batch_size", view_data_batch_size),
        ):
            if value < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {value}")
        super().__init__(
            metric=metric, executor=executor, seed=seed, on_trial=on_trial, resume=resume
        )
        self.prompt_model = prompt_model
        self.num_candidates = num_candidates
        self.num_trials = num_trials
        self.minibatch = minibatch
        self.minibatch_size = minibatch_size
        self.minibatch_full_eval_steps = minibatch_full_eval_steps
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.space = space
        self.init_temperature = init_temperature
        self.view_data_batch_size = view_data_batch_size
        self.teacher_settings = dict(teacher_settings or {})
        #: Instruction candidates of the last compile, per predictor path.
        self.instruction_candidates: dict[str, list[str]] = {}
        #: Demo set candidates of the last compile.
        self.demo_candidates: list[DemoSet] = []
        #: The space without its instruction variables: what Optuna searches besides.
        self._searched: SearchSpace | None = None

    async def acompile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
        teacher: Module | None = None,
    ) -> Module:
        """Return the best fully evaluated candidate (``student`` is not modified).

        Raises:
            ConfigurationError: Empty sets, a program without predictors, or
                space variables clashing with the optimizer's params.
            OptimizationError: Every full evaluation failed.
        """
        check_trainset(trainset)
        examples = list(valset) if valset else list(trainset)
        check_trainset(examples, name="valset" if valset else "trainset")
        paths = [path for path, _ in student.named_predictors()]
        if not paths:
            raise ConfigurationError(f"{type(student).__name__} has no predictors to optimize")
        distributions = self._distributions(student, paths)  # checks the space early
        seeded = self._seeded_instructions(student)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.trials = []
        self.demo_candidates = await self._demo_sets(student, trainset, teacher)
        self.instruction_candidates = await self._instructions(student, trainset, seeded)
        for path in paths:
            distributions[f"{path}.instruction"] = _choices(self.instruction_candidates[path])
            distributions[f"{path}.demo_set"] = _choices(self.demo_candidates)
        pool = digest(
            {
                "instructions": self.instruction_candidates,
                "demos": [demo_set_digest(s) for s in self.demo_candidates],
            }
        )
        await self.evaluate_trial(0, student.deepcopy(), examples, {"baseline": True})
        await self._search(student, examples, distributions, pool)
        best = self.best_trial(full_eval_only=True)
        return rebuild(student, best.state, space=self._searched, params=best.params)

    # -- search ------------------------------------------------------------------------

    async def _search(
        self,
        student: Module,
        examples: list[Example],
        distributions: dict[str, BaseDistribution],
        pool: str,
    ) -> None:
        import optuna
        from optuna.trial import TrialState

        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=self.seed)
        )
        rng = random.Random(self.seed)
        use_minibatches = self.minibatch and len(examples) > self.minibatch_size
        observed: dict[str, list[float]] = {}  # config key -> minibatch scores
        configs: dict[str, dict[str, Any]] = {}
        fully_evaluated: set[str] = set()
        for step in range(self.num_trials):
            asked = study.ask(distributions)
            params = {**asked.params, "pool": pool}
            batch = examples
            if use_minibatches:
                picked = sorted(rng.sample(range(len(examples)), self.minibatch_size))
                batch = [examples[i] for i in picked]
            trial = await self.evaluate_trial(
                len(self.trials),
                self._candidate(student, params),
                batch,
                params,
                full_eval=not use_minibatches,
            )
            if trial.score is None:
                study.tell(asked, state=TrialState.FAIL)
            else:
                study.tell(asked, trial.score)
                key = json.dumps(asked.params, sort_keys=True)
                observed.setdefault(key, []).append(trial.score)
                configs[key] = params
            last = step == self.num_trials - 1
            if use_minibatches and ((step + 1) % self.minibatch_full_eval_steps == 0 or last):
                pending = [k for k in observed if k not in fully_evaluated]
                if pending:
                    chosen = max(pending, key=lambda k: statistics.fmean(observed[k]))
                    fully_evaluated.add(chosen)
                    await self.evaluate_trial(
                        len(self.trials),
                        self._candidate(student, configs[chosen]),
                        examples,
                        configs[chosen],
                    )

    def _candidate(self, student: Module, params: Mapping[str, Any]) -> Module:
        predictors = [path for path, _ in student.named_predictors()]
        program = with_instructions(
            student,
            {p: self.instruction_candidates[p][params[f"{p}.instruction"]] for p in predictors},
        )
        program = with_demos(
            program, {p: self.demo_candidates[params[f"{p}.demo_set"]][p] for p in predictors}
        )
        if self._searched is not None:
            program = self._searched.apply(program, self._searched.choice_from(params))
        return program

    def _distributions(self, student: Module, paths: list[str]) -> dict[str, BaseDistribution]:
        # Instruction variables join the instruction candidates instead (see
        # _seeded_instructions); searching them apart would override the proposals.
        kept = [v for v in self.space or () if v.kind != "instructions"]
        self._searched = SearchSpace(kept) if kept else None
        if self.space is None:
            return {}
        self.space.validate(student)
        reserved = {"baseline", "pool"} | {
            f"{p}.{what}" for p in paths for what in ("instruction", "demo_set")
        }
        clash = sorted(reserved & set(self.space.names))
        if clash:
            raise ConfigurationError(f"variable names {clash} are reserved by MIPROv2")
        return {variable.name: _distribution(variable) for variable in kept}

    def _seeded_instructions(self, student: Module) -> dict[str, list[str]]:
        """Instruction texts that ``instructions`` variables of the space offer, per predictor."""
        seeded: dict[str, list[str]] = {}
        for variable in self.space or ():
            if variable.kind == "instructions":
                for path in target_predictors(student, variable.target):
                    seeded.setdefault(path, []).extend(str(text) for text in variable.values)
        return seeded

    # -- candidates --------------------------------------------------------------------

    async def _demo_sets(
        self, student: Module, trainset: Sequence[Example], teacher: Module | None
    ) -> list[DemoSet]:
        wants_demos = self.max_bootstrapped_demos > 0 or self.max_labeled_demos > 0
        return await bootstrap_demo_sets(
            student,
            trainset,
            self.metric,
            self.executor,
            num_sets=self.num_candidates if wants_demos else 1,
            seed=self.seed,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            min_bootstrapped_demos=min(1, self.max_bootstrapped_demos),
            max_labeled_demos=self.max_labeled_demos,
            teacher=teacher,
            teacher_settings=self.teacher_settings,
        )

    async def _instructions(
        self, student: Module, trainset: Sequence[Example], seeded: Mapping[str, list[str]]
    ) -> dict[str, list[str]]:
        rng = random.Random(self.seed)
        summary = await self._summarize(trainset, rng)
        predictors = student.named_predictors()
        description = "\n\n".join(
            f"Module `{path}`:\n{describe_predictor(predictor)}" for path, predictor in predictors
        )
        candidates: dict[str, list[str]] = {}
        for path, predictor in predictors:
            jobs = []
            for index in range(1, self.num_candidates):
                demo_set = self.demo_candidates[index % len(self.demo_candidates)]
                inputs = {
                    "dataset_summary": summary,
                    "program_description": description,
                    "module": f"`{path}`\n{describe_predictor(predictor)}",
                    "task_demos": _render_demos(demo_set.get(path, []), predictor),
                    "basic_instruction": predictor.signature.instructions,
                    "tip": TIPS[rng.randrange(len(TIPS))] or "No particular style.",
                }
                jobs.append(
                    propose_instructions(
                        ProposeGroundedInstruction,
                        inputs,
                        count=1,
                        lm=self.prompt_model,
                        temperature=self.init_temperature,
                        rollout=f"mipro-{self.seed}-{path}-{index}",
                    )
                )
            proposals = [text for found in await asyncio.gather(*jobs) for text in found]
            current = predictor.signature.instructions
            candidates[path] = list(dict.fromkeys([current, *seeded.get(path, []), *proposals]))
        return candidates

    async def _summarize(self, trainset: Sequence[Example], rng: random.Random) -> str:
        sample = rng.sample(list(trainset), min(self.view_data_batch_size, len(trainset)))
        lines = "\n".join(json.dumps(ex.to_dict(), default=str) for ex in sample)
        try:
            with context(rollout_id=f"mipro-{self.seed}-summary"):
                prediction = await Predict(DescribeDataset, lm=self.prompt_model).acall(
                    examples=lines
                )
        except DSPExError as exc:
            logger.warning("MIPROv2 dataset summary failed, proposing without it: %s", exc)
            return "No summary available."
        return str(prediction.summary)


def _choices(candidates: Sequence[Any]) -> CategoricalDistribution:
    from optuna.distributions import CategoricalDistribution

    return CategoricalDistribution(list(range(len(candidates))))


def _distribution(variable: Variable) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if variable.options:
        return CategoricalDistribution(list(variable.options))
    low, high = float(variable.low or 0), float(variable.high or 0)
    if variable.integer:
        return IntDistribution(int(low), int(high), log=variable.log)
    return FloatDistribution(low, high, log=variable.log)


def _render_demos(demos: Sequence[Example], predictor: Predict) -> str:
    if not demos:
        return "No examples."
    fields = list(predictor.signature.fields)
    return "\n\n".join(
        "\n".join(f"{name}: {format_value(demo[name])}" for name in fields if name in demo)
        for demo in demos
    )
