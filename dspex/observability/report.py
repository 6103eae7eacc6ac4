"""``dspex report``: the key dashboard panels as one PNG, from Prometheus' query API.

For people without Grafana and for CI artifacts. The panels are the dashboards'
own (:mod:`dspex.observability.dashboards`), so the picture shows what Grafana shows: the
same queries over the recording rules of ``infra/prometheus/rules``, run
through ``/api/v1/query_range``. A panel whose queries return no finite sample
in the range is drawn as "no data"; the caller decides what no data at all
means (``dspex report`` refuses to write such a picture).

Example:
    >>> parse_duration("15m"), parse_duration("1.5h")
    (900.0, 5400.0)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy
from numpy.typing import NDArray

from dspex.errors import ConfigurationError, PrometheusError
from dspex.observability.dashboards import expand_variables, render_dashboards

__all__ = [
    "REPORT_PANELS",
    "PanelData",
    "ReportPanel",
    "check_program_id",
    "fetch_panels",
    "parse_duration",
    "report_panels",
    "write_report",
]

#: The panels drawn, as (dashboard uid, panel title, legend; None keeps the dashboard's).
REPORT_PANELS: Final = (
    ("dspex-overview", "Throughput by program version", "{{program}} version {{version}}"),
    ("dspex-overview", "Latency p50 / p95 / p99", None),
    ("dspex-overview", "Error ratio by program version", "{{program}} version {{version}}"),
    ("dspex-program", "Eval score by version", "{{program}} version {{version}}"),
)
#: Points per series at most: Grafana draws about as many on a wide panel.
_POINTS: Final = 300
_UNITS: Final = {"reqps": "requests/s", "s": "seconds", "percentunit": "ratio"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
#: What a program id may contain (the wire format's rule).
_PROGRAM_ID = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class ReportPanel:
    """One panel: its title, Grafana unit, and queries with their legends."""

    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PanelData:
    """What the queries of one panel returned: (legend, times, values) per series."""

    panel: ReportPanel
    series: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]

    @property
    def empty(self) -> bool:
        return not self.series


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``2h`` or ``1d``.

    Raises:
        ConfigurationError: Not a positive number followed by s, m, h or d.
    """
    match = _DURATION.match(text)
    if match is None or float(match[1]) <= 0:
        raise ConfigurationError(f"{text!r} is not a duration such as 30s, 15m, 2h or 1d")
    return float(match[1]) * _SECONDS[match[2]]


def check_program_id(text: str) -> str:
    """``text`` if it is a valid program id.

    Raises:
        ConfigurationError: It is not (letters, digits, ``.``, ``_`` and ``-`` only).
    """
    if not _PROGRAM_ID.match(text):
        raise ConfigurationError(f"{text!r} is not a program id (letters, digits, . _ -)")
    return text


def report_panels(program: str | None = None) -> list[ReportPanel]:
    """The panels of :data:`REPORT_PANELS`, their variables set (``program`` or all).

    Raises:
        ConfigurationError: ``program`` is not a valid program id.
    """
    if program is not None:
        check_program_id(program)
    # A regex literal inside a PromQL string: escape for RE2, then for the string.
    pattern = re.escape(program).replace("\\", "\\\\") if program else ".*"
    boards = {board["uid"]: board for board in map(json.loads, render_dashboards().values())}
    panels = []
    for uid, title, legend in REPORT_PANELS:
        found = [p for p in boards[uid]["panels"] if p["title"] == title]
        if not found:
            raise ConfigurationError(f"dashboard {uid} has no panel {title!r}")
        queries = tuple(
            (expand_variables(t["expr"], {"program": pattern}), legend or t["legendFormat"])
            for t in found[0]["targets"]
        )
        unit = found[0].get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        panels.append(ReportPanel(title, unit, queries))
    return panels


async def _query_range(
    http: httpx.AsyncClient, url: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"}
    try:
        response = await http.get(f"{url}/api/v1/query_range", params=params)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise PrometheusError(f"Prometheus at {url} does not answer: {reason}", url=url) from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "status" not in body:
        raise PrometheusError(
            f"{url} does not answer like Prometheus' query API (HTTP {response.status_code} "
            f"from {response.request.url.path})",
            url=url,
        )
    if body["status"] != "success":
        raise PrometheusError(
            f"Prometheus at {url} refused the query {expr!r}: {body.get('error')}", url=url
        )
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _legend(template: str, labels: dict[str, str]) -> str:
    text = _LEGEND.sub(lambda match: labels.get(match[1], ""), template).strip()
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


async def fetch_panels(
    url: str,
    panels: Sequence[ReportPanel],
    *,
    since_s: float,
    end: float,
    client: httpx.AsyncClient | None = None,
    on_query: Callable[[str], None] | None = None,
) -> list[PanelData]:
    """Run every query of ``panels`` over ``[end - since_s, end]``; NaN samples dropped.

    Args:
        url: Prometheus' base URL (``http://host:9090``).
        on_query: Called with each panel's title before its queries run.
        client: The HTTP client to use (default: a new one with a 30 s timeout).

    Raises:
        PrometheusError: Prometheus does not answer, or refuses a query.
    """
    base = url.rstrip("/")
    step = max(1.0, since_s / _POINTS)
    http = client or httpx.AsyncClient(timeout=30)
    found = []
    try:
        for panel in panels:
            if on_query is not None:
                on_query(panel.title)
            series = []
            for expr, legend in panel.queries:
                for item in await _query_range(http, base, expr, end - since_s, end, step):
                    points = [(float(t), float(v)) for t, v in item["values"]]
                    points = [(t, v) for t, v in points if math.isfinite(v)]
                    if points:
                        times, values = zip(*points, strict=True)
                        series.append((_legend(legend, item["metric"]), times, values))
            found.append(PanelData(panel, tuple(series)))
    finally:
        if client is None:
            await http.aclose()
    return found


def _utc(times: Sequence[float]) -> NDArray[numpy.datetime64]:
    """Unix seconds as datetimes matplotlib draws (naive, in UTC)."""
    return (numpy.array(times) * 1000).astype("datetime64[ms]")


def write_report(
    panels: Sequence[PanelData], out: Path, *, title: str, start: float, end: float
) -> None:
    """Draw ``panels`` over ``[start, end]`` (Unix seconds) in a grid and save the PNG.

    ``out`` is replaced whole or not at all.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(7 * columns, 4 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    for index, data in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.set_title(data.panel.title)
        if data.empty:
            axes.text(
                0.5,
                0.5,
                "no data",
                ha="center",
                va="center",
                fontsize=16,
                color="gray",
                transform=axes.transAxes,
            )
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        for legend, times, values in data.series:
            moments = _utc(times)
            marker = "o" if len(times) < 3 else None  # a lone point draws no line
            axes.plot(moments, values, label=legend, linewidth=1.5, marker=marker)
        axes.set_xlim(*_utc((start, end)))
        axes.set_ylabel(_UNITS.get(data.panel.unit, data.panel.unit))
        axes.set_ylim(bottom=0)
        if data.panel.unit == "percentunit":
            axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="upper left")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(partial, format="png")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
