"""Optimizers (teleprompters) that learn instructions, demos and settings from data.

Every optimizer evaluates through an :class:`Executor`: :class:`LocalExecutor`
in this process, or ``dspex.streams.executor.KafkaExecutor`` on the cluster's
workers. Search-based optimizers record numbered :class:`Trial` objects and
can resume an interrupted run from them.
"""

from dspex.optimizers.base import Optimizer, Trial, TrialCallback
from dspex.optimizers.bootstrap import BootstrapFewShot
from dspex.optimizers.copro import COPRO
from dspex.optimizers.demos import bootstrap_demo_sets, bootstrap_demos
from dspex.optimizers.embeddings import CallableEmbedder, Embedder, OpenAIEmbedder
from dspex.optimizers.ensemble import Ensemble, EnsembleProgram
from dspex.optimizers.executor import EvalSummary, Executor, LocalExecutor, ScoredOutput, ScoreError
from dspex.optimizers.knn import KNNFewShot, KNNProgram
from dspex.optimizers.labeled import LabeledFewShot
from dspex.optimizers.mipro import MIPROv2
from dspex.optimizers.random_search import BootstrapFewShotWithRandomSearch
from dspex.optimizers.simba import SIMBA
from dspex.optimizers.variables import SearchSpace, Variable

__all__ = [
    "COPRO",
    "SIMBA",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "CallableEmbedder",
    "Embedder",
    "Ensemble",
    "EnsembleProgram",
    "EvalSummary",
    "Executor",
    "KNNFewShot",
    "KNNProgram",
    "LabeledFewShot",
    "LocalExecutor",
    "MIPROv2",
    "OpenAIEmbedder",
    "Optimizer",
    "ScoreError",
    "ScoredOutput",
    "SearchSpace",
    "Trial",
    "TrialCallback",
    "Variable",
    "bootstrap_demo_sets",
    "bootstrap_demos",
]
