"""`dspex schema`, `metrics-doc`, `dashboards`, `report`: generated documents and pictures."""

from __future__ import annotations

import time
from pathlib import Path

import click

from dspex.cli._common import (
    fail,
    handles_errors,
    print_write_or_check,
    run,
)
from dspex.programs._progress import StatusLine


@click.command("schema")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the Markdown here [default: print it].",
)
@click.option("--check", is_flag=True, help="Exit 1 if --out differs from what would be written.")
@handles_errors
def schema(out: Path | None, check: bool) -> None:
    """The wire format of every record (examples + JSON Schema) as Markdown.

    `dspex schema --out docs/wire-format.md` regenerates the published doc.
    """
    from dspex.streams.records.wire_doc import render_wire_format

    print_write_or_check(render_wire_format(), out, check=check, command="schema")


@click.command("metrics-doc")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the Markdown here [default: print it].",
)
@click.option("--check", is_flag=True, help="Exit 1 if --out differs from what would be written.")
@handles_errors
def metrics_doc(out: Path | None, check: bool) -> None:
    """Every Prometheus metric of the worker and optimizer services as Markdown.

    `dspex metrics-doc --out docs/metrics.md` regenerates the published catalog.
    """
    from dspex.observability.metrics_doc import render_metrics_doc

    print_write_or_check(render_metrics_doc(), out, check=check, command="metrics-doc")


@click.command("dashboards")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the dashboard JSON files (infra/grafana/dashboards).",
)
@click.option("--check", is_flag=True, help="Exit 1 if the files in --out differ from the code.")
@handles_errors
def dashboards(out: Path, check: bool) -> None:
    """The Grafana dashboards, generated from code, as one JSON file each.

    `dspex dashboards --out infra/grafana/dashboards` regenerates the provisioned ones.
    """
    from dspex.observability.dashboards import stale_dashboards, write_dashboards

    if check:
        problems = stale_dashboards(out)
        if problems:
            fail(f"{out}: {'; '.join(problems)}: run `dspex dashboards --out {out}`")
        click.echo(f"{out} is up to date")
        return
    for path in write_dashboards(out):
        click.echo(f"wrote {path}")


def _report_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from dspex.errors import ConfigurationError
    from dspex.observability.report import check_program_id, parse_duration

    check = parse_duration if param.name == "since" else check_program_id
    try:
        if value is not None:
            check(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


@click.command("report")
@click.option(
    "--since",
    default="15m",
    show_default=True,
    callback=_report_value,
    help="How far back from now: 30s, 15m, 2h, 1d.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG to write.",
)
@click.option(
    "--prometheus",
    "url",
    envvar="DSPEX_PROMETHEUS_URL",
    default="http://127.0.0.1:9090",
    show_default=True,
    help="Prometheus' base URL [env: DSPEX_PROMETHEUS_URL].",
)
@click.option("--program", callback=_report_value, help="Only this program [default: all].")
@handles_errors
def report(since: str, out: Path, url: str, program: str | None) -> None:
    """Draw the key dashboard panels from Prometheus' query API as one PNG.

    Throughput, latency p50/p95/p99 and error ratio per program version, and
    eval score per version, over the last --since (the dashboards' queries).
    Panels without data are drawn as "no data" and named on stderr; with no
    data at all nothing is written and the exit code is 1, as it is when
    Prometheus does not answer.
    """
    from dspex.observability.report import fetch_panels, parse_duration, report_panels, write_report

    panels = report_panels(program)
    end = time.time()
    with StatusLine() as status:
        status(f"querying {len(panels)} panels from {url}")
        found = run(
            fetch_panels(
                url,
                panels,
                since_s=parse_duration(since),
                end=end,
                on_query=lambda title: status(f"querying {title}"),
            )
        )
    empty = [data.panel.title for data in found if data.empty]
    scope = f"{program}, " if program else ""
    where = f"in the last {since} ({scope}{url})"
    if len(empty) == len(found):
        fail(f"no data {where} for any panel: {', '.join(empty)}; no picture written")
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(end))
    title = f"DSPEx, {scope}last {since} until {until} ({url})"
    write_report(found, out, title=title, start=end - parse_duration(since), end=end)
    if empty:
        click.echo(f"no data {where} for: {', '.join(empty)} (drawn as 'no data')", err=True)
    series = sum(len(data.series) for data in found)
    click.echo(f"wrote {out}: {len(found) - len(empty)} of {len(found)} panels, {series} series")
