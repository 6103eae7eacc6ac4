"""What the four Grafana dashboards show: their rows of panels and the PromQL of each.

Declarations only, as frozen dataclasses; :mod:`dspex.observability._grafana_builders`
turns them into Grafana's JSON model and :mod:`dspex.observability.dashboards`
writes the files. Read :mod:`dspex.observability.dashboards` for the conventions
the queries follow (recording rules first, ``[5m]`` windows, ``or on (...) 0``
for series born at their first event).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DASHBOARDS",
    "LM_PROVIDERS",
    "OPTIMIZATION",
    "OVERVIEW",
    "PROGRAM",
    "DashboardSpec",
    "PanelSpec",
    "Query",
    "Threshold",
    "VariableSpec",
]

#: A step of a panel's thresholds: from this value (None: from the lowest) on, this colour.
Threshold = tuple[float | None, str]
#: A query and its legend (``{{label}}`` placeholders).
Query = tuple[str, str]


@dataclass(frozen=True)
class PanelSpec:
    """One panel: its kind, texts, unit and queries (``max_val``: the axis or gauge top)."""

    kind: Literal["timeseries", "stat", "bargauge", "circuit"]
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    stack: bool = False
    max_val: float | None = None
    thresholds: tuple[Threshold, ...] = ((None, "green"),)


@dataclass(frozen=True)
class VariableSpec:
    """A template variable filled by a query; ``multi`` ones offer "All"."""

    name: str
    label: str
    query: str
    multi: bool = True


@dataclass(frozen=True)
class DashboardSpec:
    """One dashboard: its uid (and file name), texts, variables and titled rows of panels."""

    uid: str
    title: str
    description: str
    variables: tuple[VariableSpec, ...]
    rows: tuple[tuple[str, tuple[PanelSpec, ...]], ...]


def _ts(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    stack: bool = False,
    max_val: float | None = None,
) -> PanelSpec:
    return PanelSpec("timeseries", title, description, unit, queries, stack, max_val)


def _stat(
    title: str, description: str, unit: str, query: Query, *thresholds: Threshold
) -> PanelSpec:
    return PanelSpec(
        "stat", title, description, unit, (query,), thresholds=thresholds or ((None, "green"),)
    )


def _or_zero(expr: str, *, on: str, base: str) -> str:
    """``expr``, or 0 for each ``on`` group of ``base`` that ``expr`` has no series for."""
    return f"{expr}\nor on ({on}) 0 * {base}"


# -- the dashboards -------------------------------------------------------------------

_PROGRAM = 'program=~"$program"'
_WORKER = 'instance=~"$worker"'
_REQUESTS = f"program_version:dspex_inference_requests:rate5m{{{_PROGRAM}}}"
_FAILURES = f"program_version:dspex_inference_request_failures:rate5m{{{_PROGRAM}}}"
_ERROR_RATIO = (
    f"program_version:dspex_inference_request_failures_per_requests:ratio_rate5m{{{_PROGRAM}}}"
)
_BUCKETS = (
    f"program_version_le:dspex_inference_request_duration_seconds_bucket:rate5m{{{_PROGRAM}}}"
)
_QUANTILE = "program_version_quantile:dspex_inference_request_duration_seconds:histogram_quantile"
_LATENCY: tuple[Query, ...] = tuple(
    (f"histogram_quantile({q}, sum by (le) ({_BUCKETS}))", f"p{q[2:].ljust(2, '0')}")
    for q in ("0.5", "0.95", "0.99")
)
_LM_CALLS = "provider_model:dspex_lm_calls:rate5m"
_LM_ERRORS = "provider_model_error_type:dspex_lm_errors:rate5m"
_MODEL = "{{provider}}/{{model}}"
_TRIAL_BUCKETS = (
    f"sum by (program, le) (rate(dspex_optimizer_trial_score_bucket{{{_PROGRAM}}}[5m]))"
)
# Exists from a job's start (the optimizer creates the series): the base of fallbacks.
_JOBS_SEEN = f"sum by (program) (dspex_optimizer_promotions_total{{{_PROGRAM}}})"
_PER_VERSION = "version {{version}}"
_BY_VERSION = f"sum by (version) ({_REQUESTS})"

OVERVIEW = DashboardSpec(
    "dspex-overview",
    "DSPEx / Overview",
    "Requests, latency and errors of the inference path; Kafka lag and dead letters.",
    (
        VariableSpec("program", "Program", "label_values(dspex_inference_requests_total, program)"),
        VariableSpec("worker", "Worker",
                     "label_values(dspex_inference_inflight_requests, instance)"),
    ),
    (
        ("Inference", (
            _stat("Throughput", "Requests answered per second.", "reqps",
                  (f"sum({_REQUESTS})", "requests/s")),
            _stat("Error ratio", "Failed requests / all requests, last 5 minutes.", "percentunit",
                  (f"sum({_FAILURES}) / sum({_REQUESTS})", "error ratio"),
                  (None, "green"), (0.01, "orange"), (0.05, "red")),
            _stat("Latency p99", "99th percentile of request latency, last 5 minutes.", "s",
                  _LATENCY[2], (None, "green"), (30, "red")),
            _stat("In flight", "Requests being answered now.", "short",
                  (f"sum(dspex_inference_inflight_requests{{{_WORKER}}})", "in flight")),
            _ts("Throughput by program version", "Requests answered per second.", "reqps",
                (_REQUESTS, "{{program}} {{version}}"), stack=True),
            _ts("Latency p50 / p95 / p99", "Request latency quantiles over the selected programs.",
                "s", *_LATENCY),
            _ts("Error ratio by program version", "Failed requests / all requests.",
                "percentunit", (_ERROR_RATIO, "{{program}} {{version}}")),
            _ts("Errors by type", "Failed requests per second, by error type.", "reqps",
                (_or_zero("sum by (program, error_type) (program_version_error_type"
                          f":dspex_inference_request_failures:rate5m{{{_PROGRAM}}})",
                          on="program", base=f"sum by (program) ({_REQUESTS})"),
                 "{{program}} {{error_type}}")),
            _ts("Latency p99 by program version", "99th percentile of request latency.", "s",
                (f'{_QUANTILE}{{{_PROGRAM}, quantile="0.99"}}', "{{program}} {{version}}")),
            _ts("In-flight requests per worker", "Requests being answered now.", "short",
                (f"sum by (instance) (dspex_inference_inflight_requests{{{_WORKER}}})",
                 "{{instance}}")),
        )),
        ("Kafka", (
            _ts("Consumer lag per channel", "Records not yet processed, all workers.", "short",
                ("channel:dspex_consumer_lag_records:sum", "{{channel}}")),
            _ts("Consumer lag per worker", "Records not yet processed, per worker.", "short",
                (f"sum by (instance, channel) (dspex_consumer_lag_records{{{_WORKER}}})",
                 "{{instance}} {{channel}}")),
            _ts("Paused partitions per channel",
                "Partitions whose fetching waits for a full buffer to drain.", "short",
                ("channel:dspex_consumer_paused_partitions:sum", "{{channel}}")),
            _ts("Dead letters by reason", "Records sent to the dead-letter topic per second.",
                "short", ("reason:dspex_inference_dead_letters:rate5m", "{{reason}}")),
        )),
        ("Process health", (
            _ts("CPU per process", "CPU seconds used per second.", "short",
                (f"rate(process_cpu_seconds_total{{{_WORKER}}}[5m])", "{{job}} {{instance}}")),
            _ts("Resident memory per process", "Resident set size.", "bytes",
                (f"process_resident_memory_bytes{{{_WORKER}}}", "{{job}} {{instance}}")),
        )),
    ),
)  # fmt: skip

PROGRAM = DashboardSpec(
    "dspex-program",
    "DSPEx / Program",
    "One program: traffic per version, evaluation score per version, LM cost and tokens.",
    (VariableSpec("program", "Program", "label_values(program)", multi=False),),
    (
        ("Versions", (
            _ts("Requests by version", "Requests answered per second, per version.", "reqps",
                (_BY_VERSION, _PER_VERSION), stack=True),
            _ts("Share of requests by version", "Each version's part of the traffic.",
                "percentunit",
                (f"{_BY_VERSION}\n/ ignoring (version) group_left sum({_REQUESTS})", _PER_VERSION),
                stack=True, max_val=1),
            _ts("Latency p95 by version", "95th percentile of request latency.", "s",
                (f'{_QUANTILE}{{{_PROGRAM}, quantile="0.95"}}', _PER_VERSION)),
            _ts("Error ratio by version", "Failed requests / all requests.", "percentunit",
                (_ERROR_RATIO, _PER_VERSION)),
        )),
        ("Evaluation", (
            _ts("Eval score by version",
                "Mean score of the evaluation examples since the workers started "
                "(failed examples score 0).", "percentunit",
                (f"program_version:dspex_eval_score_per_examples:ratio{{{_PROGRAM}}}",
                 _PER_VERSION), max_val=1),
            PanelSpec("bargauge", "Eval score per version, last hour",
                      "Mean score of the evaluation examples scored in the last hour.",
                      "percentunit",
                      ((f"program_version:dspex_eval_score_per_examples:ratio_rate1h{{{_PROGRAM}}}",
                        _PER_VERSION),),
                      max_val=1, thresholds=((None, "red"), (0.5, "orange"), (0.8, "green"))),
            _ts("Eval examples by version", "Evaluation examples scored per second.", "short",
                (f"program_version:dspex_eval_examples:rate5m{{{_PROGRAM}}}", _PER_VERSION)),
        )),
        ("Cost and tokens", (
            _ts("Tokens per second", "LM tokens used by the program, by kind.", "short",
                (f"program_kind:dspex_lm_tokens:rate5m{{{_PROGRAM}}}", "{{kind}}"), stack=True),
            _ts("Cost per hour", "LM cost at the current rate, from the price table.",
                "currencyUSD", (f"program:dspex_lm_cost_usd:rate5m{{{_PROGRAM}}} * 3600", "USD/h")),
            _stat("Cost, last 24 h", "LM cost of the program in the last 24 hours.",
                  "currencyUSD",
                  (f"sum(increase(dspex_lm_cost_usd_total{{{_PROGRAM}}}[24h]))", "USD")),
            _stat("Tokens, last 24 h", "LM tokens used by the program in the last 24 hours.",
                  "short", (f"sum(increase(dspex_lm_tokens_total{{{_PROGRAM}}}[24h]))", "tokens")),
        )),
    ),
)  # fmt: skip

LM_PROVIDERS = DashboardSpec(
    "dspex-lm",
    "DSPEx / LM providers",
    "Calls to language models: rate, latency, retries, failures, circuit breakers, cache.",
    (
        VariableSpec("program", "Program", "label_values(dspex_lm_calls_total, program)"),
        VariableSpec("worker", "Worker", "label_values(dspex_lm_calls_total, instance)"),
    ),
    (
        ("Calls", (
            _ts("LM calls by model", "Calls per second, cache hits included.", "reqps",
                (_LM_CALLS, _MODEL)),
            _ts("LM calls by program and outcome", "Calls per second.", "reqps",
                ("sum by (program, status) "
                 f"(rate(dspex_lm_calls_total{{{_PROGRAM}, {_WORKER}}}[5m]))",
                 "{{program}} {{status}}"), stack=True),
            _ts("LM call latency", "Quantiles of one call, retries and waits included.", "s",
                ("provider_model_quantile:dspex_lm_call_duration_seconds:histogram_quantile",
                 f"{_MODEL} q{{{{quantile}}}}")),
            _ts("Cache hit ratio", "Calls answered by the response cache / all calls.",
                "percentunit",
                ("provider_model:dspex_lm_cache_hits_per_calls:ratio_rate5m", _MODEL), max_val=1),
        )),
        ("Failures", (
            _ts("Retries", "Attempts retried after a failure, per second.", "short",
                ("provider_model:dspex_lm_retries:rate5m", _MODEL)),
            _ts("Rate-limited calls (429)",
                "Calls that still failed with HTTP 429 after their retries, per second.", "reqps",
                (_or_zero("sum by (provider, model) "
                          f'({_LM_ERRORS}{{error_type="lm_rate_limited"}})',
                          on="provider, model", base=_LM_CALLS), _MODEL)),
            _ts("Errors by type", "Calls failed after their retries, per second.", "reqps",
                (_or_zero(_LM_ERRORS, on="provider, model", base=_LM_CALLS),
                 f"{_MODEL} {{{{error_type}}}}")),
            _ts("Error ratio", "Calls failed after their retries / all calls.", "percentunit",
                ("provider_model:dspex_lm_errors_per_calls:ratio_rate5m", _MODEL)),
        )),
        ("Circuit breakers", (
            PanelSpec("circuit", "Circuit state", "Worst state over all workers.", "short",
                      (("provider_model:dspex_lm_circuit_state:max", _MODEL),)),
            PanelSpec("circuit", "Circuit state per worker", "Each worker has its own breakers.",
                      "short",
                      ((f"max by (instance, provider, model) (dspex_lm_circuit_state{{{_WORKER}}})",
                        f"{{{{instance}}}} {_MODEL}"),)),
        )),
    ),
)  # fmt: skip

OPTIMIZATION = DashboardSpec(
    "dspex-optimization",
    "DSPEx / Optimization",
    "Optimizer jobs: trials, best and active scores, promotion decisions, rollbacks.",
    (VariableSpec("program", "Program",
                  "label_values(dspex_optimizer_promotions_total, program)"),),
    (
        ("Jobs", (
            _stat("Running jobs", "Optimization jobs running now.", "short",
                  ('sum(state:dspex_optimizer_active_jobs:sum{state="running"})', "running")),
            _stat("Paused jobs", "Optimization jobs paused now.", "short",
                  ('sum(state:dspex_optimizer_active_jobs:sum{state="paused"})', "paused")),
            _stat("Trials, last hour", "Candidates evaluated in the last hour.", "short",
                  (f"sum(increase(dspex_optimizer_trials_total{{{_PROGRAM}}}[1h]))", "trials")),
            _stat("Promotions, last 24 h", "Versions promoted in the last 24 hours.", "short",
                  ("sum(increase(dspex_optimizer_promotions_total"
                   f'{{{_PROGRAM}, decision="promoted"}}[24h]))', "promoted")),
            _ts("Jobs by state", "Optimization jobs of the optimizer service.", "short",
                ("state:dspex_optimizer_active_jobs:sum", "{{state}}")),
            _ts("Jobs ended, last hour", "Jobs that finished or failed.", "short",
                (_or_zero("sum by (program, outcome) "
                          f"(increase(dspex_optimizer_jobs_total{{{_PROGRAM}}}[1h]))",
                          on="program", base=_JOBS_SEEN), "{{program}} {{outcome}}")),
        )),
        ("Trials and scores", (
            _ts("Trials by status", "Candidates evaluated per second.", "short",
                (f"program_status:dspex_optimizer_trials:rate5m{{{_PROGRAM}}}",
                 "{{program}} {{status}}"), stack=True),
            _ts("Best candidate vs active version",
                "Best candidate score of the latest job, and the valset score of the active "
                "version.", "percentunit",
                (f"dspex_optimizer_best_score{{{_PROGRAM}}}", "{{program}} best"),
                (f"dspex_optimizer_active_score{{{_PROGRAM}}}", "{{program}} active"), max_val=1),
            _ts("Trial score quantiles", "Scores of the candidates evaluated recently.",
                "percentunit",
                (f"histogram_quantile(0.5, {_TRIAL_BUCKETS})", "{{program}} p50"),
                (f"histogram_quantile(0.9, {_TRIAL_BUCKETS})", "{{program}} p90"), max_val=1),
        )),
        ("Promotions", (
            _ts("Promotion decisions, last hour", "Promoted, rejected and manual.", "short",
                (f"program_decision:dspex_optimizer_promotions:increase1h{{{_PROGRAM}}}",
                 "{{program}} {{decision}}")),
            _ts("Rollbacks, last hour", "Rollbacks to an earlier version.", "short",
                (_or_zero("sum by (program) "
                          f"(increase(dspex_optimizer_rollbacks_total{{{_PROGRAM}}}[1h]))",
                          on="program", base=_JOBS_SEEN), "{{program}}")),
            _ts("Production traces held", "Scored traces kept for online candidates.", "short",
                (_or_zero(f"sum by (program) (dspex_optimizer_traces{{{_PROGRAM}}})",
                          on="program", base=_JOBS_SEEN), "{{program}}")),
        )),
    ),
)  # fmt: skip

DASHBOARDS: Final = (OVERVIEW, PROGRAM, LM_PROVIDERS, OPTIMIZATION)
