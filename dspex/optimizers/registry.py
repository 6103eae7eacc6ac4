"""The optimizers known by name, with the settings each accepts from JSON.

A command on the wire cannot carry a class, so ``dspex optimize`` and any
Kafka client name an optimizer and give its settings as JSON scalars; the
optimizer service builds it from this registry. It is the one list of those
names: the CLI's ``--optimizer`` choices, the ``optimizer`` enum of the
``dspex.control/v1`` record (:data:`OptimizerName`) and the service's
builder all read it.

Example:
    >>> OPTIMIZER_NAMES
    ('labeled', 'bootstrap', 'random_search', 'mipro', 'copro', 'simba')
    >>> optimizer = registered("bootstrap").build("exact_match", settings={"max_rounds": 2})
    >>> type(optimizer).__name__, optimizer.max_rounds
    ('BootstrapFewShot', 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from dspex.errors import ConfigurationError
from dspex.optimizers.base import Optimizer, Trial, TrialCallback
from dspex.optimizers.bootstrap import BootstrapFewShot
from dspex.optimizers.copro import COPRO
from dspex.optimizers.executor import Executor
from dspex.optimizers.labeled import LabeledFewShot
from dspex.optimizers.mipro import MIPROv2
from dspex.optimizers.random_search import BootstrapFewShotWithRandomSearch
from dspex.optimizers.simba import SIMBA
from dspex.programs.lm.base import LM

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "OptimizerName",
    "RegisteredOptimizer",
    "check_settings",
    "registered",
]

#: The names an ``optimize`` command may give (the wire record's enum, in this order).
OptimizerName = Literal["labeled", "bootstrap", "random_search", "mipro", "copro", "simba"]
OPTIMIZER_NAMES: tuple[OptimizerName, ...] = get_args(OptimizerName)


@dataclass(frozen=True)
class RegisteredOptimizer:
    """An optimizer as commands name it.

    Attributes:
        name: Its name in commands.
        optimizer: The class built.
        settings: The constructor arguments a command may set, with their
            types (``int``, ``float`` or ``bool``); others (a search space,
            teacher settings) cannot travel as JSON.
        resumable: Takes the trials of an interrupted run (``resume=``).
        uses_prompt_model: Takes the LM that writes its proposals
            (``prompt_model=``).
    """

    name: OptimizerName
    optimizer: type[Optimizer]
    settings: Mapping[str, type]
    resumable: bool = False
    uses_prompt_model: bool = False

    def build(
        self,
        metric: str,
        *,
        settings: Mapping[str, Any],
        executor: Executor | None = None,
        seed: int = 0,
        on_trial: TrialCallback | None = None,
        resume: Sequence[Trial] = (),
        prompt_model: LM | None = None,
    ) -> Optimizer:
        """The optimizer with ``settings`` checked and applied.

        ``resume`` and ``prompt_model`` reach only the optimizers that take them.

        Raises:
            ConfigurationError: Unknown or mistyped settings, or values the
                optimizer rejects.
        """
        options = check_settings(settings, self.settings, f"optimizer {self.name!r}")
        if self.resumable:
            options["resume"] = resume
        if self.uses_prompt_model:
            options["prompt_model"] = prompt_model
        return self.optimizer(
            metric=metric, executor=executor, seed=seed, on_trial=on_trial, **options
        )


#: Every optimizer a command may name, by name.
OPTIMIZERS: Mapping[OptimizerName, RegisteredOptimizer] = MappingProxyType(
    {
        "labeled": RegisteredOptimizer("labeled", LabeledFewShot, {"k": int, "sample": bool}),
        "bootstrap": RegisteredOptimizer(
            "bootstrap",
            BootstrapFewShot,
            {
                "max_bootstrapped_demos": int,
                "max_labeled_demos": int,
                "max_rounds": int,
                "metric_threshold": float,
                "batch_size": int,
            },
        ),
        "random_search": RegisteredOptimizer(
            "random_search",
            BootstrapFewShotWithRandomSearch,
            {
                "num_candidate_programs": int,
                "max_bootstrapped_demos": int,
                "max_labeled_demos": int,
                "max_rounds": int,
                "metric_threshold": float,
            },
            resumable=True,
        ),
        "mipro": RegisteredOptimizer(
            "mipro",
            MIPROv2,
            {
                "num_candidates": int,
                "num_trials": int,
                "minibatch": bool,
                "minibatch_size": int,
                "minibatch_full_eval_steps": int,
                "max_bootstrapped_demos": int,
                "max_labeled_demos": int,
                "init_temperature": float,
                "view_data_batch_size": int,
            },
            resumable=True,
            uses_prompt_model=True,
        ),
        "copro": RegisteredOptimizer(
            "copro",
            COPRO,
            {"breadth": int, "depth": int, "init_temperature": float},
            resumable=True,
            uses_prompt_model=True,
        ),
        "simba": RegisteredOptimizer(
            "simba",
            SIMBA,
            {
                "bsize": int,
                "num_candidates": int,
                "max_steps": int,
                "max_demos": int,
                "temperature_for_sampling": float,
                "temperature_for_candidates": float,
            },
            resumable=True,
            uses_prompt_model=True,
        ),
    }
)


def registered(name: str | None) -> RegisteredOptimizer:
    """The optimizer registered as ``name``.

    Raises:
        ConfigurationError: No optimizer has that name.
    """
    for entry in OPTIMIZERS.values():
        if entry.name == name:
            return entry
    raise ConfigurationError(f"unknown optimizer {name or ''!r}; known: {sorted(OPTIMIZERS)}")


def check_settings(
    settings: Mapping[str, Any], allowed: Mapping[str, type], what: str
) -> dict[str, Any]:
    """``settings`` checked against the names and types ``allowed``.

    An int given for a float becomes a float; a bool is never an int or a
    float here (JSON ``true`` is not ``1``).

    Raises:
        ConfigurationError: An unknown name, or a value of the wrong type
            (``what`` names the owner in the message).
    """
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {unknown} for {what}; known: {sorted(allowed)}"
        )
    typed: dict[str, Any] = {}
    for name, value in settings.items():
        kind = allowed[name]
        ok = (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, int | float) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, kind) and not isinstance(value, bool)
        )
        if not ok:
            raise ConfigurationError(
                f"setting {name!r} of {what} must be {kind.__name__}, got {value!r}"
            )
        typed[name] = float(value) if kind is float else value
    return typed
