"""Grafana dashboards as code, rendered to the JSON that Grafana provisions.

Four dashboards, declared below as rows of panels and built with the typed
builders of ``grafana-foundation-sdk`` (generated for Grafana 11.3, the version
``docker-compose.yml`` runs):

- ``dspex-overview``: throughput, latency quantiles, errors, in-flight requests,
  consumer lag per channel, dead letters, process health;
- ``dspex-program``: one program's versions over time, eval score per version,
  LM cost and tokens;
- ``dspex-lm``: LM calls, latency, retries, rate-limited calls (429), errors,
  circuit breaker state, cache hit ratio;
- ``dspex-optimization``: jobs, trials, best and active score, promotion
  decisions, rollbacks.

``dspex dashboards --out infra/grafana/dashboards`` writes them; ``--check``
fails if the committed JSON is stale.

Queries use the recording rules of ``infra/prometheus/rules/recording.yml``
where one exists and the metrics of ``docs/metrics.md`` otherwise. Windows are
``[5m]`` like the recording rules' and no Grafana macro is used, so every query
runs unchanged through Prometheus' HTTP API once the template variables are
substituted (:func:`expand_variables`). Series born at their first event
(errors, rollbacks ...) are completed with ``or on (...) 0 * <a series that
exists>``: a healthy pipeline shows 0, not "No data".

Example:
    >>> files = render_dashboards()
    >>> sorted(files)
    ['dspex-lm.json', 'dspex-optimization.json', 'dspex-overview.json', 'dspex-program.json']
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.bargauge import Panel as BarGauge
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimeline
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

__all__ = [
    "DATASOURCE_UID",
    "PanelQuery",
    "expand_variables",
    "panel_queries",
    "render_dashboards",
    "stale_dashboards",
    "write_dashboards",
]

#: The uid of the Prometheus datasource in infra/grafana/provisioning/datasources/.
DATASOURCE_UID: Final = "prometheus"
#: Every dashboard carries this tag; the dashboards link to each other through it.
TAG: Final = "dspex"

_DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")

_Threshold = tuple[float | None, str]
#: A query and its legend (``{{label}}`` placeholders).
_Query = tuple[str, str]


@dataclass(frozen=True)
class _Panel:
    kind: Literal["timeseries", "stat", "bargauge", "circuit"]
    title: str
    description: str
    unit: str
    queries: tuple[_Query, ...]
    stack: bool = False
    max_val: float | None = None
    thresholds: tuple[_Threshold, ...] = ((None, "green"),)


@dataclass(frozen=True)
class _Variable:
    name: str
    label: str
    query: str
    multi: bool = True


@dataclass(frozen=True)
class _Dashboard:
    uid: str
    title: str
    description: str
    variables: tuple[_Variable, ...]
    rows: tuple[tuple[str, tuple[_Panel, ...]], ...]


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, as written in the dashboard JSON."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str


def _ts(
    title: str,
    description: str,
    unit: str,
    *queries: _Query,
    stack: bool = False,
    max_val: float | None = None,
) -> _Panel:
    return _Panel("timeseries", title, description, unit, queries, stack, max_val)


def _stat(
    title: str, description: str, unit: str, query: _Query, *thresholds: _Threshold
) -> _Panel:
    return _Panel(
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
_LATENCY: tuple[_Query, ...] = tuple(
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
_CIRCUIT_STATES = {"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("open", "red")}

OVERVIEW = _Dashboard(
    "dspex-overview",
    "DSPEx / Overview",
    "Requests, latency and errors of the inference path; Kafka lag and dead letters.",
    (
        _Variable("program", "Program", "label_values(dspex_inference_requests_total, program)"),
        _Variable("worker", "Worker", "label_values(dspex_inference_inflight_requests, instance)"),
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

PROGRAM = _Dashboard(
    "dspex-program",
    "DSPEx / Program",
    "One program: traffic per version, evaluation score per version, LM cost and tokens.",
    (_Variable("program", "Program", "label_values(program)", multi=False),),
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
            _Panel("bargauge", "Eval score per version, last hour",
                   "Mean score of the evaluation examples scored in the last hour.", "percentunit",
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

LM_PROVIDERS = _Dashboard(
    "dspex-lm",
    "DSPEx / LM providers",
    "Calls to language models: rate, latency, retries, failures, circuit breakers, cache.",
    (
        _Variable("program", "Program", "label_values(dspex_lm_calls_total, program)"),
        _Variable("worker", "Worker", "label_values(dspex_lm_calls_total, instance)"),
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
            _Panel("circuit", "Circuit state", "Worst state over all workers.", "short",
                   (("provider_model:dspex_lm_circuit_state:max", _MODEL),)),
            _Panel("circuit", "Circuit state per worker", "Each worker has its own breakers.",
                   "short",
                   ((f"max by (instance, provider, model) (dspex_lm_circuit_state{{{_WORKER}}})",
                     f"{{{{instance}}}} {_MODEL}"),)),
        )),
    ),
)  # fmt: skip

OPTIMIZATION = _Dashboard(
    "dspex-optimization",
    "DSPEx / Optimization",
    "Optimizer jobs: trials, best and active scores, promotion decisions, rollbacks.",
    (_Variable("program", "Program", "label_values(dspex_optimizer_promotions_total, program)"),),
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


# -- building with the SDK ------------------------------------------------------------


def _thresholds(steps: tuple[_Threshold, ...]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _targets(queries: tuple[_Query, ...], *, instant: bool) -> list[Builder[Any]]:
    targets: list[Builder[Any]] = []
    for index, (expr, legend) in enumerate(queries):
        target = Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
        targets.append(target.instant() if instant else target.range())
    return targets


def _panel(spec: _Panel) -> Builder[model.Panel]:
    last = common_builders.ReduceDataOptions().calcs(["lastNotNull"])
    if spec.kind == "stat":
        return (
            Stat()
            .targets(_targets(spec.queries, instant=True))
            .span(6)
            .height(4)
            .graph_mode(common.BigValueGraphMode.NONE)
            .reduce_options(last)
            .thresholds(_thresholds(spec.thresholds))
            .title(spec.title)
            .description(spec.description)
            .datasource(_DATASOURCE)
            .unit(spec.unit)
        )
    if spec.kind == "bargauge":
        return (
            BarGauge()
            .targets(_targets(spec.queries, instant=True))
            .span(12)
            .height(8)
            .orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .reduce_options(last)
            .thresholds(_thresholds(spec.thresholds))
            .min(0)
            .max(spec.max_val if spec.max_val is not None else 1)
            .title(spec.title)
            .description(spec.description)
            .datasource(_DATASOURCE)
            .unit(spec.unit)
        )
    if spec.kind == "circuit":
        mapping = model.ValueMap(
            options={
                value: model.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(_CIRCUIT_STATES.items())
            }
        )
        return (
            StateTimeline()
            .targets(_targets(spec.queries, instant=False))
            .span(12)
            .height(8)
            .mappings([mapping])
            .show_value(common.VisibilityMode.AUTO)
            .merge_values(True)
            .title(spec.title)
            .description(spec.description)
            .datasource(_DATASOURCE)
        )
    series = (
        Timeseries()
        .targets(_targets(spec.queries, instant=False))
        .span(12)
        .height(8)
        .min(0)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .title(spec.title)
        .description(spec.description)
        .datasource(_DATASOURCE)
        .unit(spec.unit)
    )
    if spec.stack:
        series = series.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if spec.max_val is not None:
        series = series.max(spec.max_val)
    return series


def _variable(spec: _Variable) -> QueryVariable:
    variable = (
        QueryVariable(spec.name)
        .label(spec.label)
        .datasource(_DATASOURCE)
        .query({"query": spec.query, "refId": f"{spec.name}-values"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(spec.multi)
        .include_all(spec.multi)
    )
    if spec.multi:
        # Every query matches with =~, so "All" is the regex ".*", not a list of values.
        variable = variable.all_value(".*").current(
            model.VariableOption(selected=True, text="All", value="$__all")
        )
    return variable


def _build(spec: _Dashboard) -> model.Dashboard:
    board = (
        Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags([TAG])
        .refresh("10s")
        .time("now-30m", "now")
        .timezone(common.TimeZoneBrowser)
        .link(
            DashboardLink("DSPEx")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for variable in spec.variables:
        board = board.with_variable(_variable(variable))
    for title, panels in spec.rows:
        board = board.with_row(Row(title))
        for panel in panels:
            board = board.with_panel(_panel(panel))
    built = board.build()
    # The builders leave every id at 0; Grafana needs them unique within a dashboard.
    for number, item in enumerate(built.panels or [], start=1):
        item.id_val = number
    return built


# -- files ----------------------------------------------------------------------------


def render_dashboards() -> dict[str, str]:
    """Every dashboard as JSON text (sorted keys, stable bytes), by file name."""
    files = {}
    for spec in DASHBOARDS:
        text = json.dumps(_build(spec), cls=JSONEncoder, indent=2, sort_keys=True)
        files[f"{spec.uid}.json"] = text + "\n"
    return dict(sorted(files.items()))


def write_dashboards(out: Path) -> list[Path]:
    """Write every dashboard into the folder ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_dashboards().items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def stale_dashboards(out: Path) -> list[str]:
    """Why the JSON files in ``out`` differ from what :func:`write_dashboards` writes."""
    expected = render_dashboards()
    problems = []
    for name, text in expected.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name} is stale")
    present = sorted(out.glob("*.json")) if out.is_dir() else []
    problems.extend(
        f"{path.name} is not generated by `dspex dashboards`"
        for path in present
        if path.name not in expected
    )
    return problems


def panel_queries(dashboards: Mapping[str, str] | None = None) -> list[PanelQuery]:
    """Every query of every panel in ``dashboards`` (JSON text by name; default: current)."""
    queries: list[PanelQuery] = []
    texts = dashboards if dashboards is not None else render_dashboards()
    for text in texts.values():
        board = json.loads(text)
        for panel in board.get("panels", []):
            queries.extend(
                PanelQuery(board["uid"], panel["title"], target["refId"], target["expr"])
                for target in panel.get("targets", [])
            )
    return queries


def expand_variables(expr: str, values: Mapping[str, str] | None = None) -> str:
    """``expr`` with ``$name`` and ``${name}`` replaced; unset ones as Grafana's "All" (``.*``).

    Example:
        >>> expand_variables('x{program=~"$program"}', {"program": "qa"})
        'x{program=~"qa"}'
    """
    chosen = values or {}
    return _VARIABLE.sub(lambda match: chosen.get(match[1] or match[2], ".*"), expr)
