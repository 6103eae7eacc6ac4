"""Metrics: ``metric(example, prediction, trace=None) -> float | bool``, like DSPy's.

String metrics normalise both sides the SQuAD way (lower case, no punctuation,
no articles, single spaces). The compared field defaults to the example's only
label, else ``answer``. :class:`SemanticF1` asks an LM to judge.

Example:
    >>> exact_match(Example(q="?", answer="Paris").with_inputs("q"), Prediction(answer="paris."))
    True
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from dspex.errors import ConfigurationError, InputError
from dspex.programs.example import Example, Prediction
from dspex.programs.predict import Predict
from dspex.programs.signature import InputField, OutputField, Signature

__all__ = [
    "BUILTIN_METRICS",
    "Metric",
    "SemanticF1",
    "contains",
    "exact_match",
    "f1",
    "metric_name",
    "normalize_text",
    "resolve_metric",
]

#: What Evaluate and the optimizers accept as a metric (sync or async).
Metric = Callable[..., float | bool | Awaitable[float | bool]]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: Any) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace."""
    lowered = str(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def _values(example: Example, prediction: Prediction, field: str | None) -> tuple[Any, Any]:
    if field is None:
        labels = list(example.labels().keys()) if example.input_keys else []
        field = labels[0] if len(labels) == 1 else "answer"
    if field not in example:
        raise InputError(f"metric: the example has no field `{field}`", fields=[field])
    if field not in prediction:
        raise InputError(f"metric: the prediction has no field `{field}`", fields=[field])
    return example[field], prediction[field]


def _golds(gold: Any) -> list[Any]:
    return list(gold) if isinstance(gold, list | tuple | set) else [gold]


def exact_match(
    example: Example, prediction: Prediction, trace: Any = None, *, field: str | None = None
) -> bool:
    """Whether the normalised prediction equals a normalised gold answer (any of a list)."""
    gold, predicted = _values(example, prediction, field)
    return any(normalize_text(g) == normalize_text(predicted) for g in _golds(gold))


def contains(
    example: Example, prediction: Prediction, trace: Any = None, *, field: str | None = None
) -> bool:
    """Whether a normalised gold answer occurs in the normalised prediction."""
    gold, predicted = _values(example, prediction, field)
    text = f" {normalize_text(predicted)} "
    return any(f" {normalize_text(g)} " in text for g in _golds(gold))


def f1(
    example: Example, prediction: Prediction, trace: Any = None, *, field: str | None = None
) -> float:
    """Token-level F1 between prediction and gold answer (best over a list of golds)."""
    gold, predicted = _values(example, prediction, field)
    return max(_token_f1(str(g), str(predicted)) for g in _golds(gold))


def _token_f1(gold: str, predicted: str) -> float:
    gold_tokens = normalize_text(gold).split()
    predicted_tokens = normalize_text(predicted).split()
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    common = sum((Counter(gold_tokens) & Counter(predicted_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


class _JudgeOverlap(Signature):
    """Compare a system's response to the ground truth. Estimate recall (the share
    of the ground truth's key ideas present in the response) and precision (the
    share of the response's key ideas supported by the ground truth), each 0 to 1."""

    question: str = InputField()
    ground_truth: str = InputField()
    system_response: str = InputField()
    recall: float = OutputField(desc="0.0 to 1.0")
    precision: float = OutputField(desc="0.0 to 1.0")


class SemanticF1:
    """LM-judged F1 of key ideas between prediction and gold answer (async metric).

    Args:
        question_field: The example's input field holding the question.
        field: The answer field compared (default as for the string metrics).
        threshold: If set, return ``score >= threshold`` instead of the score.
        **predict_kwargs: For the judge's Predict (e.g. ``lm=``).
    """

    def __init__(
        self,
        *,
        question_field: str = "question",
        field: str | None = None,
        threshold: float | None = None,
        **predict_kwargs: Any,
    ) -> None:
        self.question_field = question_field
        self.field = field
        self.threshold = threshold
        self.judge = Predict(_JudgeOverlap, **predict_kwargs)

    async def __call__(
        self, example: Example, prediction: Prediction, trace: Any = None
    ) -> float | bool:
        gold, predicted = _values(example, prediction, self.field)
        verdict = await self.judge.acall(
            question=str(example.get(self.question_field, "")),
            ground_truth=str(gold),
            system_response=str(predicted),
        )
        recall = min(max(float(verdict.recall), 0.0), 1.0)
        precision = min(max(float(verdict.precision), 0.0), 1.0)
        score = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
        return score >= self.threshold if self.threshold is not None else score


#: Metrics known by name everywhere: evaluation records on Kafka name one of
#: these (or one a worker registered), since functions do not travel.
BUILTIN_METRICS: Mapping[str, Metric] = MappingProxyType(
    {"exact_match": exact_match, "f1": f1, "contains": contains}
)


def resolve_metric(
    metric: Metric | str, *, known: Mapping[str, Metric] = BUILTIN_METRICS
) -> Metric:
    """The metric function for ``metric`` (a function is returned as is).

    Raises:
        ConfigurationError: ``metric`` is a name that ``known`` does not have.
    """
    if not isinstance(metric, str):
        return metric
    try:
        return known[metric]
    except KeyError:
        raise ConfigurationError(
            f"unknown metric {metric!r} (known: {', '.join(sorted(known))})"
        ) from None


def metric_name(metric: Metric | str, *, known: Mapping[str, Metric] = BUILTIN_METRICS) -> str:
    """The name under which ``metric`` is known, for records that cross processes.

    Raises:
        ConfigurationError: ``metric`` is a function that ``known`` does not list.
    """
    if isinstance(metric, str):
        resolve_metric(metric, known=known)
        return metric
    for name, function in known.items():
        if function is metric:
            return name
    raise ConfigurationError(
        f"metric {getattr(metric, '__name__', metric)!r} has no name workers know: use one of "
        f"{', '.join(sorted(known))} or register it on the workers"
    )
