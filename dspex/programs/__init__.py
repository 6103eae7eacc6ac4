"""Signatures, modules, adapters and LM clients: DSPy's vocabulary, async-first.

This package must never import Faust or aiokafka: a program runs in a notebook
with no broker at all.
"""

from dspex.programs.adapters import Adapter, ChatAdapter, JSONAdapter
from dspex.programs.compose import BestOfN, MultiChainComparison, Parallel, Refine, majority
from dspex.programs.context import Settings, context, current_settings
from dspex.programs.evaluate import Evaluate, EvaluationResult, ExampleResult
from dspex.programs.example import Example, Prediction, TraceStep
from dspex.programs.lm import (
    LM,
    AnthropicChat,
    CircuitBreakerPolicy,
    OpenAIChat,
    PriceTable,
    RateLimit,
    ResponseCache,
    RetryPolicy,
    TokenUsage,
)
from dspex.programs.metrics import SemanticF1, contains, exact_match, f1
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict
from dspex.programs.react import ReAct, Tool
from dspex.programs.signature import (
    InputField,
    OutputField,
    Signature,
    ensure_signature,
    make_signature,
)
from dspex.programs.state import ProgramRegistry, ProgramSpec, load_dspy_state

__all__ = [
    "LM",
    "Adapter",
    "AnthropicChat",
    "BestOfN",
    "ChainOfThought",
    "ChatAdapter",
    "CircuitBreakerPolicy",
    "Evaluate",
    "EvaluationResult",
    "Example",
    "ExampleResult",
    "InputField",
    "JSONAdapter",
    "Module",
    "MultiChainComparison",
    "OpenAIChat",
    "OutputField",
    "Parallel",
    "Predict",
    "Prediction",
    "PriceTable",
    "ProgramRegistry",
    "ProgramSpec",
    "RateLimit",
    "ReAct",
    "Refine",
    "ResponseCache",
    "RetryPolicy",
    "SemanticF1",
    "Settings",
    "Signature",
    "TokenUsage",
    "Tool",
    "TraceStep",
    "contains",
    "context",
    "current_settings",
    "ensure_signature",
    "exact_match",
    "f1",
    "load_dspy_state",
    "majority",
    "make_signature",
]
