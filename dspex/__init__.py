"""DSPEx: language-model programs, served as a Kafka stream processor.

The public API is what ``__all__`` lists; everything else is private and may
change without notice. Programs are written as in DSPy::

    import dspex

    qa = dspex.ChainOfThought("question -> answer")
    async with dspex.OpenAIChat(model="smollm2-135m-instruct",
                                base_url="http://127.0.0.1:8080/v1") as lm:
        with dspex.context(lm=lm):
            prediction = await qa.acall(question="Why is the sky blue?")
"""

from dspex import errors
from dspex.errors import DSPExError
from dspex.programs import (
    LM,
    Adapter,
    AnthropicChat,
    BestOfN,
    ChainOfThought,
    ChatAdapter,
    CircuitBreakerPolicy,
    Evaluate,
    EvaluationResult,
    Example,
    ExampleResult,
    InputField,
    JSONAdapter,
    Module,
    MultiChainComparison,
    OpenAIChat,
    OutputField,
    Parallel,
    Predict,
    Prediction,
    PriceTable,
    ProgramRegistry,
    ProgramSpec,
    RateLimit,
    ReAct,
    Refine,
    ResponseCache,
    RetryPolicy,
    SemanticF1,
    Settings,
    Signature,
    TokenUsage,
    Tool,
    TraceStep,
    contains,
    context,
    current_settings,
    ensure_signature,
    exact_match,
    f1,
    load_dspy_state,
    majority,
    make_signature,
)

__version__ = "0.1.0"

__all__ = [
    "LM",
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
]
