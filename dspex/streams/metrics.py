"""Prometheus metrics of a worker, in base units, on an injectable registry.

Names follow Prometheus conventions: ``_total`` counters, ``_seconds``
histograms with buckets that fit LM calls (up to minutes), and bounded labels
(program, version, status, error type — never request ids). Both registries
also carry process health (``process_resident_memory_bytes``,
``process_cpu_seconds_total``, ``python_info`` ...). ``docs/metrics.md`` is
generated from these registries (``dspex metrics-doc``).

Example:
    >>> metrics = WorkerMetrics.create(CollectorRegistry())
    >>> metrics.inflight.inc()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.registry import Collector

from dspex.programs.lm import LMCallEvent
from dspex.streams.records import DEAD_LETTER_REASON_DESCRIPTIONS, EvalScore, InferenceResult

__all__ = [
    "CIRCUIT_STATE_VALUES",
    "LATENCY_BUCKETS_S",
    "OptimizerMetrics",
    "WorkerMetrics",
    "registered_collectors",
]

#: From a cache hit to a slow multi-call program on a loaded provider.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


#: Circuit breaker states as gauge values: alert on ``== 2``.
CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def registered_collectors(registry: CollectorRegistry) -> tuple[Collector, ...]:
    """The collectors registered on ``registry``, in registration order.

    prometheus-client has no public listing; the catalog in ``docs/metrics.md``
    needs the collectors themselves (label names of metrics without samples yet).
    """
    with registry._lock:
        return tuple(registry._collector_to_names)


def _register_process_health(registry: CollectorRegistry) -> None:
    # Once per registry: one registry may carry both services' metrics, or be
    # prometheus-client's default REGISTRY, which has both collectors already.
    # They declare no names, so registering twice would not fail but duplicate series.
    present = {type(collector) for collector in registered_collectors(registry)}
    if ProcessCollector not in present:
        ProcessCollector(registry=registry)
    if PlatformCollector not in present:
        PlatformCollector(registry=registry)


@dataclass(frozen=True)
class WorkerMetrics:
    """Every metric a worker exports."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    inflight: Gauge
    dead_letters: Counter
    lm_calls: Counter
    lm_call_duration: Histogram
    lm_errors: Counter
    lm_retries: Counter
    lm_cache_hits: Counter
    lm_tokens: Counter
    lm_cost: Counter
    circuit_state: Gauge
    consumer_lag: Gauge
    paused_partitions: Gauge
    buffer_full: Counter
    consumer_step_age: Gauge
    consumer_stalls: Counter
    eval_examples: Counter
    eval_score: Counter
    programs: Gauge
    #: Label children by metric and values (``labels()`` checks and locks at every call).
    _children: dict[tuple[object, tuple[str, ...]], Any] = field(
        default_factory=dict, repr=False, compare=False
    )

    def child(self, metric: Counter | Histogram | Gauge, *values: str) -> Any:
        """``metric.labels(*values)``, remembered (children are never removed)."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        """Metrics registered on ``registry`` (a new one by default), process health included."""
        registry = registry if registry is not None else CollectorRegistry()
        # Registration order is docs/metrics.md's order within each of its areas.
        metrics = cls(
            registry=registry,
            **_inference_metrics(registry),
            **_lm_metrics(registry),
            **_consumer_metrics(registry),
            **_evaluation_metrics(registry),
            programs=Gauge(
                "dspex_registry_programs",
                "Programs known to this worker's registry.",
                registry=registry,
            ),
        )
        # A series born at its first increment hides that increment from
        # increase() and rate(); the reasons are few and known, so start them at 0.
        for reason in DEAD_LETTER_REASON_DESCRIPTIONS:
            metrics.dead_letters.labels(reason)
        _register_process_health(registry)
        return metrics

    def observe_result(self, result: InferenceResult) -> None:
        """Count one answered request."""
        program = result.program_id
        version = str(result.program_version) if result.program_version is not None else "none"
        error_type = result.error.type if result.error is not None else ""
        self.child(self.requests, program, version, result.status, error_type).inc()
        self.child(self.request_duration, program, version).observe(result.latency_ms / 1000)

    def observe_lm_call(self, program: str, call: LMCallEvent) -> None:
        """Count one LM call a program made: outcome, time, retries, tokens and cost."""
        child = self.child
        labels = (program, call.provider, call.model)
        child(self.lm_calls, *labels, call.status).inc()
        child(self.lm_call_duration, call.provider, call.model).observe(call.latency_s)
        if call.error_type is not None:
            child(self.lm_errors, *labels, call.error_type).inc()
        if call.retries:
            child(self.lm_retries, *labels).inc(call.retries)
        if call.cached:
            child(self.lm_cache_hits, *labels).inc()
        usage = call.usage
        child(self.lm_tokens, *labels, "prompt").inc(usage.prompt_tokens)
        child(self.lm_tokens, *labels, "completion").inc(usage.completion_tokens)
        child(self.lm_cost, *labels).inc(usage.cost_usd)

    def observe_score(self, score: EvalScore) -> None:
        """Count one scored evaluation example (a candidate's version is ``candidate``)."""
        version = str(score.program_version) if score.program_version is not None else "candidate"
        outcome = score.error.type if score.error is not None else "ok"
        self.child(self.eval_examples, score.program_id, version, outcome).inc()
        # Scores are 0..1 for the built-in metrics; a counter cannot go down.
        self.child(self.eval_score, score.program_id, version).inc(max(score.score, 0.0))

    def set_circuit_state(self, provider: str, model: str, state: str | None) -> None:
        """Record a breaker's state (``closed``, ``half_open``, ``open``)."""
        if state is not None:
            self.circuit_state.labels(provider, model).set(CIRCUIT_STATE_VALUES.get(state, 0))


# -- the parts of WorkerMetrics, in registration order ---------------------------------


class _InferenceMetrics(TypedDict):
    """The request path: answers by outcome, their latency, load, dead letters."""

    requests: Counter
    request_duration: Histogram
    inflight: Gauge
    dead_letters: Counter


def _inference_metrics(registry: CollectorRegistry) -> _InferenceMetrics:
    """Register the request path's metrics on ``registry``."""
    return _InferenceMetrics(
        requests=Counter(
            "dspex_inference_requests_total",
            "Inference requests answered, by outcome.",
            ["program", "version", "status", "error_type"],
            registry=registry,
        ),
        request_duration=Histogram(
            "dspex_inference_request_duration_seconds",
            "Time from starting a request to its result.",
            ["program", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ),
        inflight=Gauge(
            "dspex_inference_inflight_requests",
            "Requests being answered by this worker now.",
            registry=registry,
        ),
        dead_letters=Counter(
            "dspex_inference_dead_letters_total",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        ),
    )


class _LMMetrics(TypedDict):
    """LM calls made by programs: outcome, time, failures, cache, tokens, cost, breakers."""

    lm_calls: Counter
    lm_call_duration: Histogram
    lm_errors: Counter
    lm_retries: Counter
    lm_cache_hits: Counter
    lm_tokens: Counter
    lm_cost: Counter
    circuit_state: Gauge


def _lm_metrics(registry: CollectorRegistry) -> _LMMetrics:
    """Register the LM call metrics on ``registry``."""
    lm_labels = ["program", "provider", "model"]
    return _LMMetrics(
        lm_calls=Counter(
            "dspex_lm_calls_total",
            "LM calls made by programs (cache hits included), by outcome.",
            [*lm_labels, "status"],
            registry=registry,
        ),
        lm_call_duration=Histogram(
            "dspex_lm_call_duration_seconds",
            "Time of one LM call, retries and waits for the rate limiter included.",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ),
        lm_errors=Counter(
            "dspex_lm_errors_total",
            "LM calls that failed after retries, by error type.",
            [*lm_labels, "error_type"],
            registry=registry,
        ),
        lm_retries=Counter(
            "dspex_lm_retries_total",
            "Attempts of LM calls that were retried after a failure.",
            lm_labels,
            registry=registry,
        ),
        lm_cache_hits=Counter(
            "dspex_lm_cache_hits_total",
            "LM calls answered by the response cache.",
            lm_labels,
            registry=registry,
        ),
        lm_tokens=Counter(
            "dspex_lm_tokens_total",
            "Tokens used by LM calls, by kind (prompt or completion).",
            [*lm_labels, "kind"],
            registry=registry,
        ),
        lm_cost=Counter(
            "dspex_lm_cost_usd_total",
            "Cost of LM calls in US dollars (from the configured price table).",
            lm_labels,
            registry=registry,
        ),
        circuit_state=Gauge(
            "dspex_lm_circuit_state",
            "Circuit breaker per provider and model: 0 closed, 1 half-open, 2 open.",
            ["provider", "model"],
            registry=registry,
        ),
    )


class _ConsumerMetrics(TypedDict):
    """Reading Kafka: lag, paused partitions, full stream buffers."""

    consumer_lag: Gauge
    paused_partitions: Gauge
    buffer_full: Counter
    consumer_step_age: Gauge
    consumer_stalls: Counter


def _consumer_metrics(registry: CollectorRegistry) -> _ConsumerMetrics:
    """Register the Kafka consumer metrics on ``registry``."""
    return _ConsumerMetrics(
        consumer_lag=Gauge(
            "dspex_consumer_lag_records",
            "Records not yet processed on the partitions this worker owns, per channel.",
            ["channel", "topic"],
            registry=registry,
        ),
        paused_partitions=Gauge(
            "dspex_consumer_paused_partitions",
            "Partitions whose fetching is paused because the channel's work in flight is full.",
            ["channel"],
            registry=registry,
        ),
        buffer_full=Counter(
            "dspex_consumer_buffer_full_total",
            "Times the channel's work in flight filled up and it stopped taking records.",
            ["channel"],
            registry=registry,
        ),
        consumer_step_age=Gauge(
            "dspex_consumer_step_age_seconds",
            "Seconds since the channel's consumer loop last stepped (grows when it is wedged).",
            ["channel"],
            registry=registry,
        ),
        consumer_stalls=Counter(
            "dspex_consumer_stalls_total",
            "Times the channel's consumer stalled, left its group and was replaced.",
            ["channel"],
            registry=registry,
        ),
    )


class _EvaluationMetrics(TypedDict):
    """Evaluation examples scored: how many, by outcome, and the sum of their scores."""

    eval_examples: Counter
    eval_score: Counter


def _evaluation_metrics(registry: CollectorRegistry) -> _EvaluationMetrics:
    """Register the evaluation metrics on ``registry``."""
    return _EvaluationMetrics(
        eval_examples=Counter(
            "dspex_eval_examples_total",
            "Evaluation examples scored, by outcome (`ok`, or the error type).",
            ["program", "version", "outcome"],
            registry=registry,
        ),
        eval_score=Counter(
            "dspex_eval_score_total",
            "Sum of the scores of evaluation examples; divide by the examples for the mean.",
            ["program", "version"],
            registry=registry,
        ),
    )


@dataclass(frozen=True)
class OptimizerMetrics:
    """Every metric the optimizer service exports."""

    registry: CollectorRegistry
    trials: Counter
    trial_score: Histogram
    best_score: Gauge
    active_score: Gauge
    decisions: Counter
    rollbacks: Counter
    jobs: Gauge
    job_outcomes: Counter
    feedback: Counter
    traces: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> OptimizerMetrics:
        """Metrics registered on ``registry`` (a new one by default), process health included."""
        registry = registry if registry is not None else CollectorRegistry()
        # Registration order is docs/metrics.md's order within each of its areas.
        metrics = cls(
            registry=registry,
            **_trial_metrics(registry),
            **_decision_metrics(registry),
            **_job_metrics(registry),
            **_online_metrics(registry),
        )
        _register_process_health(registry)
        return metrics


# -- the parts of OptimizerMetrics, in registration order ------------------------------


class _TrialMetrics(TypedDict):
    """Candidates evaluated by jobs, their scores, and the scores they are measured against."""

    trials: Counter
    trial_score: Histogram
    best_score: Gauge
    active_score: Gauge


def _trial_metrics(registry: CollectorRegistry) -> _TrialMetrics:
    """Register the trial and score metrics on ``registry``."""
    return _TrialMetrics(
        trials=Counter(
            "dspex_optimizer_trials_total",
            "Candidates evaluated by optimizer jobs, by outcome (`ok` or `failed`).",
            ["program", "optimizer", "status"],
            registry=registry,
        ),
        trial_score=Histogram(
            "dspex_optimizer_trial_score",
            "Scores of evaluated candidates (0..1).",
            ["program", "optimizer"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=registry,
        ),
        best_score=Gauge(
            "dspex_optimizer_best_score",
            "Best candidate score of the program's latest job so far.",
            ["program"],
            registry=registry,
        ),
        active_score=Gauge(
            "dspex_optimizer_active_score",
            "Valset score of the program's active version, as last measured.",
            ["program"],
            registry=registry,
        ),
    )


class _DecisionMetrics(TypedDict):
    """Versions changed: promotion gate decisions, manual promotions, rollbacks."""

    decisions: Counter
    rollbacks: Counter


def _decision_metrics(registry: CollectorRegistry) -> _DecisionMetrics:
    """Register the promotion and rollback metrics on ``registry``."""
    return _DecisionMetrics(
        decisions=Counter(
            "dspex_optimizer_promotions_total",
            "Promotion gate decisions (`promoted`, `rejected`) and manual promotions.",
            ["program", "decision"],
            registry=registry,
        ),
        rollbacks=Counter(
            "dspex_optimizer_rollbacks_total",
            "Rollbacks to an earlier version.",
            ["program"],
            registry=registry,
        ),
    )


class _JobMetrics(TypedDict):
    """Jobs of the service: by state now, and how they ended."""

    jobs: Gauge
    job_outcomes: Counter


def _job_metrics(registry: CollectorRegistry) -> _JobMetrics:
    """Register the job metrics on ``registry``."""
    return _JobMetrics(
        jobs=Gauge(
            "dspex_optimizer_active_jobs",
            "Jobs of this service by state (`running`, `paused`).",
            ["state"],
            registry=registry,
        ),
        job_outcomes=Counter(
            "dspex_optimizer_jobs_total",
            "Jobs ended, by outcome (`finished`, `failed`).",
            ["program", "outcome"],
            registry=registry,
        ),
    )


class _OnlineMetrics(TypedDict):
    """What online jobs learn from: feedback read, traces held."""

    feedback: Counter
    traces: Gauge


def _online_metrics(registry: CollectorRegistry) -> _OnlineMetrics:
    """Register the online-job metrics on ``registry``."""
    return _OnlineMetrics(
        feedback=Counter(
            "dspex_optimizer_feedback_total",
            "Feedback records read, by whether they joined a known result.",
            ["matched"],
            registry=registry,
        ),
        traces=Gauge(
            "dspex_optimizer_traces",
            "Scored production traces held per program for online candidates.",
            ["program"],
            registry=registry,
        ),
    )
