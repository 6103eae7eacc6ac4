"""The public surface is small and explicit; the program core stays broker-free."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import dspex
import dspex.errors
from dspex.errors import DSPExError

EXPECTED_PUBLIC = {
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "COPRO",
    "Ensemble",
    "KNNFewShot",
    "LabeledFewShot",
    "LocalExecutor",
    "MIPROv2",
    "SIMBA",
    "SearchSpace",
    "Variable",
    "Adapter",
    "AnthropicChat",
    "BestOfN",
    "ChainOfThought",
    "ChatAdapter",
    "CircuitBreakerPolicy",
    "DSPExError",
    "Evaluate",
    "EvaluationResult",
    "Example",
    "ExampleResult",
    "InputField",
    "JSONAdapter",
    "LM",
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
    "__version__",
    "contains",
    "context",
    "current_settings",
    "ensure_signature",
    "errors",
    "exact_match",
    "f1",
    "load_dspy_state",
    "majority",
    "make_signature",
}


def test_all_lists_exactly_the_public_api() -> None:
    assert set(dspex.__all__) == EXPECTED_PUBLIC
    for name in dspex.__all__:
        assert hasattr(dspex, name), name


def test_every_error_derives_from_the_one_base() -> None:
    classes = [
        obj for name in dspex.errors.__all__ if inspect.isclass(obj := getattr(dspex.errors, name))
    ]
    assert classes, "errors module exports no classes"
    for cls in classes:
        assert issubclass(cls, DSPExError), cls


def test_every_error_class_is_drawn_in_the_tree() -> None:
    doc = dspex.errors.__doc__ or ""
    for name in dspex.errors.__all__:
        assert name in doc, f"{name} missing from the exception tree in errors.py"


def test_programs_package_imports_no_kafka_library() -> None:
    code = (
        "import sys, dspex.programs; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('faust', 'aiokafka', 'mode')]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


EXPECTED_STREAMS_PUBLIC = {
    "CandidateRecord",
    "ClientStats",
    "ControlCommand",
    "DSPExClient",
    "DSPExClientSync",
    "DeadLetter",
    "ErrorInfo",
    "ErrorType",
    "EvalReport",
    "EvalRequest",
    "EvalScore",
    "FeedbackRecord",
    "InferenceRequest",
    "InferenceResult",
    "JournalRecord",
    "KafkaExecutor",
    "KafkaSettings",
    "OptimizerClient",
    "OptimizerEvent",
    "ProgramRecord",
    "RequestItem",
    "TelemetryEvent",
    "TopicNames",
    "decode",
    "encode",
    "ensure_topics",
    "error_from_result",
    "load_catalog",
    "register_program",
}


def test_streams_all_lists_exactly_the_kafka_side_api() -> None:
    import dspex.streams

    assert set(dspex.streams.__all__) == EXPECTED_STREAMS_PUBLIC
    for name in dspex.streams.__all__:
        assert getattr(dspex.streams, name) is not None, name


def test_streams_rejects_a_name_it_does_not_export() -> None:
    import dspex.streams

    with pytest.raises(AttributeError, match="NotAThing"):
        dspex.streams.NotAThing  # type: ignore[attr-defined]  # noqa: B018
