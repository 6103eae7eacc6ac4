"""Building the declared dashboards with ``grafana-foundation-sdk``'s typed builders.

The SDK is generated for Grafana 11.3, the version ``docker-compose.yml`` runs.
Every panel queries the provisioned Prometheus datasource, and every
dashboard carries one tag through which they link to each other.
"""

from __future__ import annotations

from typing import Any, Final

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
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dspex.observability._dashboard_specs import (
    DashboardSpec,
    PanelSpec,
    Query,
    Threshold,
    VariableSpec,
)

__all__ = ["DATASOURCE_UID", "TAG", "build_dashboard"]

#: The uid of the Prometheus datasource in infra/grafana/provisioning/datasources/.
DATASOURCE_UID: Final = "prometheus"
#: Every dashboard carries this tag; the dashboards link to each other through it.
TAG: Final = "dspex"

_DATASOURCE = model.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
_CIRCUIT_STATES = {"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("open", "red")}


def _thresholds(steps: tuple[Threshold, ...]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _targets(queries: tuple[Query, ...], *, instant: bool) -> list[Builder[Any]]:
    targets: list[Builder[Any]] = []
    for index, (expr, legend) in enumerate(queries):
        target = Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
        targets.append(target.instant() if instant else target.range())
    return targets


def _panel(spec: PanelSpec) -> Builder[model.Panel]:
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


def _variable(spec: VariableSpec) -> QueryVariable:
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


def build_dashboard(spec: DashboardSpec) -> model.Dashboard:
    """``spec`` as Grafana's dashboard model, panel ids numbered from 1."""
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
