"""docs/metrics.md: committed, current, complete, and every metric follows the conventions."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from dspex.cli import main
from dspex.cli._common import EXIT_FAILURE
from dspex.observability.metrics_doc import SERVICES, MetricDoc, metric_catalog, render_metrics_doc
from dspex.streams.metrics import OptimizerMetrics, WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
RULES = sorted((ROOT / "infra" / "prometheus" / "rules").glob("*.yml"))

#: Labels whose values are one per request, run, job, candidate or trace: unbounded.
ID_LABELS = {"id", "request_id", "run_id", "job_id", "candidate_id", "trace_id"}
#: Every label a metric may carry; each takes a bounded set of values.
BOUNDED_LABELS = {
    # dspex metrics
    "program",
    "version",
    "status",
    "error_type",
    "reason",
    "provider",
    "model",
    "kind",
    "channel",
    "topic",
    "outcome",
    "optimizer",
    "decision",
    "state",
    "matched",
    # python_info
    "implementation",
    "major",
    "minor",
    "patchlevel",
}
NON_BASE_UNITS = ("_milliseconds", "_ms", "_minutes", "_hours", "_kilobytes", "_percent")
TIME_WORDS = re.compile(r"\b(time|duration|latency|wait)\b", re.IGNORECASE)
PROMQL_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@pytest.fixture(scope="module")
def catalog() -> list[MetricDoc]:
    return metric_catalog()


def test_committed_doc_is_current() -> None:
    committed = DOC.read_text("utf-8") if DOC.exists() else ""
    assert committed == render_metrics_doc(), (
        "docs/metrics.md is stale: run `dspex metrics-doc --out docs/metrics.md`"
    )


def test_rendering_is_byte_identical_across_processes() -> None:
    # Another process with other string hashes (this one's are randomised) renders the same bytes.
    code = (
        "import sys; from dspex.observability.metrics_doc import render_metrics_doc as r; "
        "sys.stdout.write(r())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        timeout=120,
    )
    assert result.stdout == render_metrics_doc().encode()


def _touch_every_metric(
    metrics: WorkerMetrics | OptimizerMetrics, docs: dict[str, MetricDoc]
) -> None:
    """Give every labelled metric one child, so that the exposition shows it."""
    for field in dataclasses.fields(metrics):
        metric = getattr(metrics, field.name)
        if not isinstance(metric, MetricWrapperBase):
            continue
        (family,) = metric.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = docs[name].labels
        if labels:
            # labels() rejects names that are not exactly the declared ones.
            metric.labels(**dict.fromkeys(labels, "x"))


def _exposed(registry: CollectorRegistry) -> Iterator[tuple[str, str, tuple[str, ...], str]]:
    """(name, type, sorted label names, help) of each metric in the OpenMetrics exposition."""
    # OpenMetrics keeps a counter's _created sample in its family; the client's
    # OpenMetrics functions carry no annotations.
    text = openmetrics.generate_latest(registry).decode()  # type: ignore[no-untyped-call]
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        labels: dict[str, None] = {}
        for sample in family.samples:
            labels.update(dict.fromkeys(k for k in sample.labels if k not in {"le", "quantile"}))
        name = f"{family.name}_total" if family.type == "counter" else family.name
        yield name, family.type, tuple(sorted(labels)), family.documentation


@pytest.mark.parametrize(
    ("service", "create"),
    [("worker", WorkerMetrics.create), ("optimizer", OptimizerMetrics.create)],
)
def test_catalog_lists_exactly_what_each_service_exposes(
    catalog: list[MetricDoc], service: str, create: Any
) -> None:
    metrics = create(CollectorRegistry())
    docs = {doc.name: doc for doc in catalog}
    _touch_every_metric(metrics, docs)
    exposed = set(_exposed(metrics.registry))
    documented = {
        (doc.name, doc.type, tuple(sorted(doc.labels)), doc.help)
        for doc in catalog
        if service in doc.services
    }
    assert exposed == documented
    # Every service's metrics, and nothing else, are in the catalog.
    assert {service for doc in catalog for service in doc.services} == {s for s, _ in SERVICES}


def test_the_catalog_covers_every_area_of_the_issue(catalog: list[MetricDoc]) -> None:
    names = {doc.name for doc in catalog}
    for name in (
        "dspex_inference_request_duration_seconds",
        "dspex_eval_score_total",
        "dspex_optimizer_trials_total",
        "dspex_optimizer_best_score",
        "dspex_optimizer_promotions_total",
        "dspex_lm_tokens_total",
        "dspex_lm_cost_usd_total",
        "dspex_lm_retries_total",
        "dspex_lm_circuit_state",
        "dspex_lm_cache_hits_total",
        "dspex_consumer_lag_records",
        "dspex_inference_inflight_requests",
        "dspex_consumer_paused_partitions",
        "dspex_inference_dead_letters_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert name in names
    assert "Other" not in {doc.area for doc in catalog}


def test_every_metric_follows_the_naming_conventions(catalog: list[MetricDoc]) -> None:
    for doc in catalog:
        assert doc.help.strip(), f"{doc.name} has no help text"
        assert PROMQL_NAME.fullmatch(doc.name), doc.name
        assert ":" not in doc.name, f"{doc.name}: colons are for recording rules"
        if doc.area != "Process health":
            assert doc.name.startswith("dspex_"), doc.name
        # A gauge or histogram named like a counter would be summed as one.
        assert doc.name.endswith("_total") == (doc.type == "counter"), doc.name
        assert not any(unit in doc.name for unit in NON_BASE_UNITS), doc.name
        if doc.type == "histogram" and TIME_WORDS.search(f"{doc.name} {doc.help}"):
            assert doc.name.endswith("_seconds"), f"{doc.name} measures time: name it _seconds"
        if doc.type == "histogram" and doc.name.endswith("_seconds"):
            assert max(doc.buckets) >= 60, f"{doc.name}: LM calls take up to minutes"
        if doc.unit:
            assert doc.unit in doc.name.replace("_", " ") or doc.unit == "US dollars", doc


def test_no_metric_has_an_unbounded_label(catalog: list[MetricDoc]) -> None:
    for doc in catalog:
        for label in doc.labels:
            assert label not in ID_LABELS, (doc.name, label)
            assert not label.endswith("_id"), (doc.name, label)
            assert label in BOUNDED_LABELS, f"{doc.name}: is label {label!r} bounded?"


def test_both_services_report_process_health() -> None:
    for service, build in SERVICES:
        registry = build()
        resident = registry.get_sample_value("process_resident_memory_bytes")
        assert resident is not None, service
        assert resident > 0, service
        assert registry.get_sample_value("process_cpu_seconds_total") is not None, service


def test_one_registry_for_both_services_has_one_set_of_process_metrics() -> None:
    registry = CollectorRegistry()
    WorkerMetrics.create(registry)
    OptimizerMetrics.create(registry)
    text = generate_latest(registry).decode()
    assert text.count("# TYPE process_resident_memory_bytes ") == 1
    assert text.count("# TYPE python_info ") == 1


def test_every_dead_letter_reason_starts_at_zero() -> None:
    registry = WorkerMetrics.create().registry
    value = registry.get_sample_value("dspex_inference_dead_letters_total", {"reason": "too_large"})
    assert value == 0


def _rule_names(expr: str) -> Iterator[str]:
    # Drop label matchers, strings and the words of PromQL itself.
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    for match in PROMQL_NAME.finditer(expr):
        name = match.group()
        if name.startswith(("dspex_", "process_")) or ":" in name:
            yield name


def test_rules_use_only_catalogued_metrics_and_defined_recordings(catalog: list[MetricDoc]) -> None:
    assert RULES, "no rule files in infra/prometheus/rules"
    rules = [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text("utf-8"))["groups"]
        for rule in group["rules"]
    ]
    recorded = {rule["record"] for rule in rules if "record" in rule}
    series = {doc.name for doc in catalog}
    series |= {
        f"{doc.name}{suffix}"
        for doc in catalog
        if doc.type == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
    }
    used = {name for rule in rules for name in _rule_names(rule["expr"])}
    assert "dspex_lm_circuit_state" in used
    for name in used:
        if ":" in name:
            assert name in recorded, f"{name} is not recorded by any rule"
        else:
            assert name in series, f"{name} is not a metric in docs/metrics.md"
    for name in recorded:
        level, metric, operations = name.split(":")
        assert level, name
        assert metric.startswith("dspex_"), name
        assert operations, name


def test_cli_checks_and_writes_the_doc(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["metrics-doc", "--out", str(DOC), "--check"])
    assert result.exit_code == 0, result.output
    stale = tmp_path / "metrics.md"
    stale.write_text("# Metrics\n", encoding="utf-8")
    result = runner.invoke(main, ["metrics-doc", "--out", str(stale), "--check"])
    assert result.exit_code == EXIT_FAILURE
    assert "is stale: run `dspex metrics-doc --out" in result.output
    assert runner.invoke(main, ["metrics-doc", "--out", str(stale)]).exit_code == 0
    assert stale.read_bytes() == DOC.read_bytes()
    assert runner.invoke(main, ["metrics-doc", "--out", str(stale), "--check"]).exit_code == 0
    printed = runner.invoke(main, ["metrics-doc"])
    assert printed.exit_code == 0
    assert printed.output == render_metrics_doc()
