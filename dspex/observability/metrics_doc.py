"""Render ``docs/metrics.md``: every metric each service exposes, from its registry.

The catalog is read from the :class:`~prometheus_client.CollectorRegistry` that
:meth:`WorkerMetrics.create` and :meth:`OptimizerMetrics.create` fill, one
collector at a time, so it cannot drift from the code: a test compares the
committed file with :func:`render_metrics_doc`, and
``dspex metrics-doc --out docs/metrics.md`` rewrites it.

Example:
    >>> markdown = render_metrics_doc()
    >>> markdown.startswith("# Metrics")
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from dspex.errors import ConfigurationError
from dspex.streams.metrics import OptimizerMetrics, WorkerMetrics, registered_collectors

__all__ = [
    "AREAS",
    "SERVICES",
    "MetricDoc",
    "metric_catalog",
    "render_metrics_doc",
    "service_metrics",
]

#: Each service and how to build its registry, in the order the catalog names them.
SERVICES: tuple[tuple[str, Callable[[], CollectorRegistry]], ...] = (
    ("worker", lambda: WorkerMetrics.create().registry),
    ("optimizer", lambda: OptimizerMetrics.create().registry),
)

#: Catalog sections: (title, name prefixes, what the section is about), in page order.
AREAS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Inference", ("dspex_inference_",), "Requests answered by workers, and dead letters."),
    ("LM calls", ("dspex_lm_",), "Calls programs make to language models, per provider and model."),
    ("Kafka consumers", ("dspex_consumer_",), "How far workers are behind their input topics."),
    ("Evaluation", ("dspex_eval_",), "Scored evaluation examples, per program version."),
    ("Program registry", ("dspex_registry_",), "Programs a worker can serve."),
    ("Optimization", ("dspex_optimizer_",), "Optimizer jobs, trials, scores and promotions."),
    (
        "Process health",
        ("process_", "python_"),
        "Memory, CPU, file descriptors and Python version of each process.",
    ),
)
_OTHER_AREA = "Other"

#: Unit suffixes (before ``_total``) and how the catalog names the unit.
_UNIT_SUFFIXES = (
    ("_seconds", "seconds"),
    ("_bytes", "bytes"),
    ("_ratio", "ratio"),
    ("_usd", "US dollars"),
    ("_records", "records"),
    ("_tokens", "tokens"),
)
#: Labels the client library adds to samples of one series; not labels of the metric.
_SAMPLE_LABELS = frozenset({"le", "quantile"})


@dataclass(frozen=True)
class MetricDoc:
    """One metric as Prometheus sees it.

    Attributes:
        name: The name to query: counters with ``_total``, histograms without
            their ``_bucket``/``_sum``/``_count`` suffixes.
        type: ``counter``, ``gauge``, ``histogram``, ...
        unit: From the name's suffix (``seconds``, ``bytes``, ...); ``""`` for counts.
        labels: Label names in declaration order.
        help: The metric's help text.
        services: The services exposing it, in :data:`SERVICES` order.
        buckets: Upper bounds of a histogram's buckets (``+Inf`` left out).
    """

    name: str
    type: str
    unit: str
    labels: tuple[str, ...]
    help: str
    services: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def area(self) -> str:
        """The catalog section this metric belongs to."""
        for title, prefixes, _about in AREAS:
            if self.name.startswith(prefixes):
                return title
        return _OTHER_AREA


def _unit(name: str) -> str:
    base = name.removesuffix("_total")
    for suffix, unit in _UNIT_SUFFIXES:
        if base.endswith(suffix):
            return unit
    return ""


def _exposed_name(family_name: str, metric_type: str) -> str:
    # The client stores counters without ``_total`` and adds it when exposing them.
    return f"{family_name}_total" if metric_type == "counter" else family_name


def _collector_metrics(collector: Collector, service: str) -> Iterator[MetricDoc]:
    if isinstance(collector, MetricWrapperBase):
        # Counter, Gauge, Histogram...: labelled ones have no samples until first
        # used, so their label names come from the declaration.
        labels = tuple(str(label) for label in collector._labelnames)
        buckets: tuple[float, ...] = ()
        if isinstance(collector, Histogram):
            buckets = tuple(float(b) for b in collector._upper_bounds if b != float("inf"))
        for family in collector.describe():
            name = _exposed_name(family.name, family.type)
            yield MetricDoc(
                name, family.type, _unit(name), labels, family.documentation, (service,), buckets
            )
        return
    for family in collector.collect():
        names: dict[str, None] = {}
        for sample in family.samples:
            names.update(
                dict.fromkeys(label for label in sample.labels if label not in _SAMPLE_LABELS)
            )
        name = _exposed_name(family.name, family.type)
        yield MetricDoc(
            name, family.type, _unit(name), tuple(names), family.documentation, (service,)
        )


def service_metrics(service: str, registry: CollectorRegistry) -> list[MetricDoc]:
    """Every metric the collectors on ``registry`` expose, attributed to ``service``."""
    return [
        metric
        for collector in registered_collectors(registry)
        for metric in _collector_metrics(collector, service)
    ]


def metric_catalog(
    services: Sequence[tuple[str, Callable[[], CollectorRegistry]]] = SERVICES,
) -> list[MetricDoc]:
    """Every metric of every service; one entry per name, grouped by area.

    Raises:
        ConfigurationError: Two services expose the same name with a different
            type, labels or help text.
    """
    by_name: dict[str, MetricDoc] = {}
    for service, build in services:
        for metric in service_metrics(service, build()):
            seen = by_name.get(metric.name)
            if seen is None:
                by_name[metric.name] = metric
                continue
            if (seen.type, seen.labels, seen.help) != (metric.type, metric.labels, metric.help):
                raise ConfigurationError(
                    f"metric {metric.name} differs between services {', '.join(seen.services)}"
                    f" and {service}"
                )
            if service not in seen.services:
                by_name[metric.name] = MetricDoc(
                    seen.name,
                    seen.type,
                    seen.unit,
                    seen.labels,
                    seen.help,
                    (*seen.services, service),
                    seen.buckets,
                )
    order = [title for title, _prefixes, _about in AREAS] + [_OTHER_AREA]
    # Stable sort: within an area, metrics keep their declaration order.
    return sorted(by_name.values(), key=lambda metric: order.index(metric.area))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _number(value: float) -> str:
    return f"{value:g}"


def _meaning(metric: MetricDoc) -> str:
    meaning = _cell(metric.help)
    if metric.buckets:
        unit = f" ({metric.unit})" if metric.unit else ""
        bounds = ", ".join(_number(bound) for bound in metric.buckets)
        meaning += f" Buckets{unit}: {bounds}."
    return meaning


def _table(metrics: Sequence[MetricDoc]) -> Iterator[str]:
    yield "| Metric | Type | Unit | Labels | Service | Meaning |"
    yield "|---|---|---|---|---|---|"
    for metric in metrics:
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "—"
        yield (
            f"| `{metric.name}` | {metric.type} | {metric.unit or '—'} | {labels}"
            f" | {', '.join(metric.services)} | {_meaning(metric)} |"
        )


def render_metrics_doc() -> str:
    """The Markdown of ``docs/metrics.md``; the same bytes on every run."""
    catalog = metric_catalog()
    lines = [
        "# Metrics",
        "",
        "<!-- Generated by `dspex metrics-doc --out docs/metrics.md`; do not edit. -->",
        "",
        "Every DSPEx service serves Prometheus metrics at `/metrics`: a worker on its",
        "topology's `metrics_port`, the optimizer service on `optimizer.metrics_port`.",
        "This page lists all of them.",
        "",
        "- Counters end in `_total`; query them with `rate()` or `increase()`.",
        "- A histogram `x` is exposed as `x_bucket`, `x_sum` and `x_count`; use",
        "  `histogram_quantile()` on the buckets for latency quantiles.",
        "- A unit in the name is the unit of the value; latency is in seconds.",
        "- Labels take a bounded set of values (program, version, model, channel, error",
        "  type ...), never request or run ids.",
        "- Recording and alert rules built on these metrics are in `infra/prometheus/`.",
    ]
    about = {title: text for title, _prefixes, text in AREAS}
    for title in [*about, _OTHER_AREA]:
        section = [metric for metric in catalog if metric.area == title]
        if not section:
            continue
        lines += ["", f"## {title}", ""]
        if title in about:
            lines += [about[title], ""]
        lines += _table(section)
    return "\n".join(lines) + "\n"
