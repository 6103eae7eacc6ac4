"""Prometheus metrics of a worker, in base units, on an injectable registry.

Names follow Prometheus conventions: ``_total`` counters, ``_seconds``
histograms with buckets that fit LM calls (up to minutes), and bounded labels
(program, version, status, error type — never request ids).

Example:
    >>> metrics = WorkerMetrics.create(CollectorRegistry())
    >>> metrics.inflight.inc()
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dspex.streams.records import InferenceResult

__all__ = ["LATENCY_BUCKETS_S", "WorkerMetrics"]

#: From a cache hit to a slow multi-call program on a loaded provider.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


@dataclass(frozen=True)
class WorkerMetrics:
    """Every metric a worker exports."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    inflight: Gauge
    dead_letters: Counter
    lm_calls: Counter
    lm_tokens: Counter
    lm_cost: Counter
    programs: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        """Metrics registered on ``registry`` (a new one by default)."""
        registry = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=registry,
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
            lm_calls=Counter(
                "dspex_lm_calls_total",
                "LM calls made for requests; cached ones were answered by the response cache.",
                ["program", "cached"],
                registry=registry,
            ),
            lm_tokens=Counter(
                "dspex_lm_tokens_total",
                "Tokens used by LM calls, by kind (prompt or completion).",
                ["program", "kind"],
                registry=registry,
            ),
            lm_cost=Counter(
                "dspex_lm_cost_usd_total",
                "Cost of LM calls in US dollars (from the configured price table).",
                ["program"],
                registry=registry,
            ),
            programs=Gauge(
                "dspex_registry_programs",
                "Programs known to this worker's registry.",
                registry=registry,
            ),
        )

    def observe_result(self, result: InferenceResult) -> None:
        """Count one answered request and its LM usage."""
        program = result.program_id
        version = str(result.program_version) if result.program_version is not None else "none"
        error_type = result.error.type if result.error is not None else ""
        self.requests.labels(program, version, result.status, error_type).inc()
        self.request_duration.labels(program, version).observe(result.latency_ms / 1000)
        usage = result.usage
        if usage.calls:
            self.lm_calls.labels(program, "false").inc(usage.calls)
        if usage.cached_calls:
            self.lm_calls.labels(program, "true").inc(usage.cached_calls)
        self.lm_tokens.labels(program, "prompt").inc(usage.prompt_tokens)
        self.lm_tokens.labels(program, "completion").inc(usage.completion_tokens)
        self.lm_cost.labels(program).inc(usage.cost_usd)
