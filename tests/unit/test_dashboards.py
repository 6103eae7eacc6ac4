"""Grafana dashboards: generated from code, committed, built only from metrics that exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dspex.cli import main
from dspex.cli._common import EXIT_FAILURE
from dspex.observability.dashboards import (
    DATASOURCE_UID,
    PanelQuery,
    expand_variables,
    panel_queries,
    render_dashboards,
    stale_dashboards,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RECORDING_RULES = ROOT / "infra" / "prometheus" / "rules" / "recording.yml"

#: Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})
#: PromQL words that look like names: aggregations, operators, modifiers, literals.
PROMQL_WORDS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "by", "without", "on", "ignoring", "group_left",
        "group_right", "and", "or", "unless", "offset", "bool", "inf", "nan", "atan2",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*,?')
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: no functions, keywords or label names."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(r"\1 ", text)
    names = set()
    for match in _NAME.finditer(text):
        name, call = match.groups()
        if call is None and name not in PROMQL_WORDS:
            names.add(name)
    return names


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_left/group_right clauses."""
    return {
        label.strip()
        for _, labels in _GROUPING.findall(_STRING.sub('""', expr))
        for label in labels.split(",")
        if label.strip()
    }


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(name, matched label names) of each ``name{...}`` selector."""
    for name, body in _SELECTOR.findall(expr):
        assert _MATCHER.sub("", body).strip() == "", f"cannot parse matchers {body!r}"
        yield name, {label for (label,) in (m.groups() for m in _MATCHER.finditer(body))}


# -- what exists -----------------------------------------------------------------------


def _catalog() -> dict[str, set[str]]:
    """Series names of docs/metrics.md (histograms as _bucket/_sum/_count) and their labels."""
    rows = re.findall(
        r"^\| `([a-zA-Z_:][\w:]*)` \| (\w+) \| [^|]* \| ([^|]*) \|",
        METRICS_DOC.read_text("utf-8"),
        re.MULTILINE,
    )
    assert len(rows) >= 30, "docs/metrics.md has no metric table"
    catalog: dict[str, set[str]] = {}
    for name, kind, label_cell in rows:
        labels = set(re.findall(r"`(\w+)`", label_cell)) | TARGET_LABELS
        if kind == "histogram":
            catalog[f"{name}_bucket"] = labels | {"le"}
            catalog[f"{name}_sum"] = labels
            catalog[f"{name}_count"] = labels
        else:
            catalog[name] = labels
    return catalog


def _split_level(level: str, vocabulary: set[str]) -> list[str] | None:
    """``program_version_le`` -> [program, version, le], by labels that exist."""
    if not level:
        return []
    for label in sorted(vocabulary, key=len, reverse=True):
        if level == label or level.startswith(f"{label}_"):
            rest = _split_level(level[len(label) + 1 :], vocabulary)
            if rest is not None:
                return [label, *rest]
    return None


def _recording_rules(vocabulary: set[str]) -> dict[str, set[str]]:
    """Recorded series names and their labels: the level of level:metric:operations."""
    groups = yaml.safe_load(RECORDING_RULES.read_text("utf-8"))["groups"]
    rules: dict[str, set[str]] = {}
    for group in groups:
        for rule in group["rules"]:
            name = rule["record"]
            level = _split_level(name.split(":")[0], vocabulary)
            assert level is not None, f"{name}: level is not a list of known labels"
            rules.setdefault(name, set()).update(level, rule.get("labels", {}))
    assert rules, "no recording rules found"
    return rules


@pytest.fixture(scope="module")
def known_series() -> dict[str, set[str]]:
    catalog = _catalog()
    vocabulary = set().union(*catalog.values()) | {"quantile"}
    return {**catalog, **_recording_rules(vocabulary)}


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in render_dashboards().items()}


@pytest.fixture(scope="module")
def queries() -> list[PanelQuery]:
    return panel_queries()


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


# -- the committed files ---------------------------------------------------------------


def test_committed_dashboards_are_current() -> None:
    assert stale_dashboards(DASHBOARDS) == [], (
        "run `dspex dashboards --out infra/grafana/dashboards`"
    )


def test_rendering_is_byte_identical_across_processes() -> None:
    code = (
        "import json; from dspex.observability.dashboards import render_dashboards as r; "
        "print(json.dumps(r()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "1"},
        timeout=120,
    )
    assert json.loads(result.stdout) == render_dashboards()


def test_the_four_dashboards_have_unique_uids_and_titles(boards: dict[str, dict[str, Any]]) -> None:
    uids = [board["uid"] for board in boards.values()]
    titles = [board["title"] for board in boards.values()]
    assert sorted(uids) == ["dspex-lm", "dspex-optimization", "dspex-overview", "dspex-program"]
    assert len(set(titles)) == len(titles)
    for name, board in boards.items():
        assert name == f"{board['uid']}.json"
        assert len(board["uid"]) <= 40, "Grafana limits uids to 40 characters"
        assert "id" not in board, "a provisioned dashboard gets its id from Grafana"


def test_panels_have_unique_ids_and_do_not_overlap(boards: dict[str, dict[str, Any]]) -> None:
    for board in boards.values():
        panels = board["panels"]
        assert len({panel["id"] for panel in panels}) == len(panels), board["uid"]
        cells: dict[tuple[int, int], str] = {}
        for panel in panels:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


# -- queries ---------------------------------------------------------------------------


def test_the_name_parser_finds_every_series_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, program) (rate(a_bucket{x=~"sum(b)", le!="1"}[5m])))'
        " / ignoring (version) group_left sum(c:d:rate5m)\nor on (program) 0 * max(e) offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "c:d:rate5m", "e"}
    assert grouping_labels(expr) == {"le", "program", "version"}
    assert dict(selectors(expr)) == {"a_bucket": {"x", "le"}}


def test_every_panel_queries_only_metrics_and_rules_that_exist(
    queries: list[PanelQuery], known_series: dict[str, set[str]]
) -> None:
    assert len(queries) >= 40
    for query in queries:
        names = metric_names(query.expr)
        assert names, f"{query}: no metric found"
        unknown = names - known_series.keys()
        assert not unknown, f"{query.dashboard} / {query.panel}: unknown series {unknown}"


def test_every_label_a_query_uses_exists_on_its_series(
    queries: list[PanelQuery],
    known_series: dict[str, set[str]],
    boards: dict[str, dict[str, Any]],
) -> None:
    legends = {
        (board["uid"], panel["title"], target["refId"]): target["legendFormat"]
        for board in boards.values()
        for panel in board["panels"]
        for target in panel.get("targets", [])
    }
    for query in queries:
        where = f"{query.dashboard} / {query.panel}"
        for name, labels in selectors(query.expr):
            missing = labels - known_series[name]
            assert not missing, f"{where}: {name} has no label {missing}"
        present = set().union(*(known_series[name] for name in metric_names(query.expr)))
        grouped = grouping_labels(query.expr)
        assert grouped <= present, f"{where}: groups by labels {grouped - present}"
        legend = set(_LEGEND_LABEL.findall(legends[(query.dashboard, query.panel, query.ref_id)]))
        assert legend <= present, f"{where}: legend uses labels {legend - present}"


def test_every_query_is_valid_promql(queries: list[PanelQuery], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make install` installs Debian's prometheus package"
    # promtool parses rule expressions without a server; one rule per panel query.
    rules = [
        {"record": f"dashboard:query_{index}:check", "expr": expand_variables(query.expr)}
        for index, query in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_every_variable_a_query_uses_is_defined_and_every_variable_is_used(
    boards: dict[str, dict[str, Any]], queries: list[PanelQuery]
) -> None:
    for board in boards.values():
        defined = set(_variables(board))
        used = {
            match[1] or match[2]
            for query in queries
            if query.dashboard == board["uid"]
            for match in re.finditer(r"\$(?:\{(\w+)\}|(\w+))", query.expr)
        }
        assert used == defined, board["uid"]


def test_program_and_worker_variables(
    boards: dict[str, dict[str, Any]], known_series: dict[str, set[str]]
) -> None:
    variables = {board["uid"]: _variables(board) for board in boards.values()}
    assert set(variables["dspex-overview"]) == {"program", "worker"}
    assert set(variables["dspex-lm"]) == {"program", "worker"}
    assert set(variables["dspex-program"]) == {"program"}
    assert set(variables["dspex-optimization"]) == {"program"}
    for uid, by_name in variables.items():
        for name, variable in by_name.items():
            label = {"program": "program", "worker": "instance"}[name]
            match = re.fullmatch(r"label_values\((?:(\w+), )?(\w+)\)", variable["query"]["query"])
            assert match, f"{uid}: ${name} query {variable['query']['query']!r}"
            metric, queried = match.groups()
            assert queried == label, f"{uid}: ${name}"
            assert metric is None or label in known_series[metric], f"{uid}: ${name}"
            if variable["multi"]:
                # Every query matches with =~: "All" must be a regex, not a list of values.
                assert variable["includeAll"]
                assert variable["allValue"] == ".*"
    # The per-program dashboard shows the versions of one program at a time.
    assert not variables["dspex-program"]["program"]["multi"]


def test_expand_variables() -> None:
    expr = 'a{program=~"$program", instance=~"${worker}"}'
    assert expand_variables(expr, {"program": "qa|intent"}) == (
        'a{program=~"qa|intent", instance=~".*"}'
    )
    assert expand_variables("sum(b)") == "sum(b)"


def test_the_dashboards_show_what_the_issue_asks_for(queries: list[PanelQuery]) -> None:
    by_board: dict[str, str] = {}
    for query in queries:
        by_board[query.dashboard] = by_board.get(query.dashboard, "") + "\n" + query.expr
    overview = by_board["dspex-overview"]
    for wanted in (
        "program_version:dspex_inference_requests:rate5m",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "program_version:dspex_inference_request_failures",
        "dspex_inference_inflight_requests",
        "channel:dspex_consumer_lag_records:sum",
        "reason:dspex_inference_dead_letters:rate5m",
    ):
        assert wanted in overview, wanted
    program = by_board["dspex-program"]
    for wanted in (
        "sum by (version)",
        "program_version:dspex_eval_score_per_examples:ratio",
        "program:dspex_lm_cost_usd:rate5m",
        "program_kind:dspex_lm_tokens:rate5m",
    ):
        assert wanted in program, wanted
    lm = by_board["dspex-lm"]
    for wanted in (
        "provider_model:dspex_lm_calls:rate5m",
        "provider_model:dspex_lm_retries:rate5m",
        'error_type="lm_rate_limited"',
        "provider_model:dspex_lm_circuit_state:max",
        "provider_model:dspex_lm_cache_hits_per_calls:ratio_rate5m",
    ):
        assert wanted in lm, wanted
    optimization = by_board["dspex-optimization"]
    for wanted in (
        "dspex_optimizer_trials_total",
        "dspex_optimizer_best_score",
        "dspex_optimizer_active_score",
        "program_decision:dspex_optimizer_promotions:increase1h",
        "dspex_optimizer_rollbacks_total",
        'state:dspex_optimizer_active_jobs:sum{state="running"}',
    ):
        assert wanted in optimization, wanted


def test_the_rate_limited_error_type_is_the_one_lm_errors_carry() -> None:
    from dspex.errors import LMRateLimitError, error_type

    error = LMRateLimitError("too many requests", provider="openai", status=429)
    assert error_type(error) == "lm_rate_limited"


# -- provisioning ----------------------------------------------------------------------


def test_every_panel_and_variable_uses_the_provisioned_datasource(
    boards: dict[str, dict[str, Any]],
) -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text("utf-8")
    )["datasources"]
    (prometheus,) = [source for source in provisioned if source["type"] == "prometheus"]
    assert prometheus["uid"] == DATASOURCE_UID
    expected = {"type": "prometheus", "uid": DATASOURCE_UID}
    for board in boards.values():
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == expected, panel["title"]
                assert panel["targets"], panel["title"]
        for variable in board["templating"]["list"]:
            assert variable["datasource"] == expected, variable["name"]


def test_the_provider_reads_the_folder_docker_compose_mounts() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "dspex.yml").read_text("utf-8")
    )["providers"]
    (dspex,) = provider
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))["services"][
        "grafana"
    ]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./infra/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./infra/grafana/dashboards"] == dspex["options"]["path"]
    assert (ROOT / "infra" / "grafana" / "dashboards").resolve() == DASHBOARDS.resolve()


# -- the command -----------------------------------------------------------------------


def test_the_command_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "dashboards"
    runner = CliRunner()
    missing = runner.invoke(main, ["dashboards", "--out", str(out), "--check"])
    assert missing.exit_code == EXIT_FAILURE
    assert "dspex-overview.json is missing" in missing.output

    written = runner.invoke(main, ["dashboards", "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert sorted(path.name for path in out.iterdir()) == sorted(render_dashboards())
    assert runner.invoke(main, ["dashboards", "--out", str(out), "--check"]).exit_code == 0

    board = out / "dspex-lm.json"
    board.write_text(board.read_text("utf-8").replace("Circuit state", "Circuit"), "utf-8")
    (out / "hand-made.json").write_text("{}", "utf-8")
    stale = runner.invoke(main, ["dashboards", "--out", str(out), "--check"])
    assert stale.exit_code == EXIT_FAILURE
    assert "dspex-lm.json is stale" in stale.output
    assert "hand-made.json is not generated" in stale.output
    assert "error: " in stale.output
