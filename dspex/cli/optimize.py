"""``dspex optimize`` and ``dspex optimizer ...``: the optimizer service from the command line.

``dspex optimize PROGRAM_ID --optimizer mipro --trainset train.jsonl --valset
val.jsonl`` sends an ``optimize`` command, prints each trial as the service
finishes it, the gate's decision, and writes a PNG of score per trial with the
best so far. ``dspex optimizer serve`` (in :mod:`dspex.cli.serve`) runs the service; ``promote``,
``rollback``, ``pause``, ``resume`` and ``feedback`` send the other commands.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dspex.cli._common import (
    EXIT_FAILURE,
    fail,
    handles_errors,
    kafka_options,
    kafka_or_default,
    prefix_or_default,
)
from dspex.cli.submit import parse_value
from dspex.errors import ConfigurationError
from dspex.optimizers.registry import OPTIMIZER_NAMES

if TYPE_CHECKING:
    from dspex.streams.client.optimizer import JournalRecord
    from dspex.streams.records import ControlCommand
    from dspex.topologies.settings import KafkaTarget

__all__ = ["optimize", "optimizer"]

_HELP = {"help_option_names": ["-h", "--help"]}


def _settings(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", ctx, param)
        settings[key.strip()] = parse_value(value)
    return settings


def _read_rows(
    path: Path, record: Any, inputs: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[str]]:
    """A dataset's lines as objects, checked like ``dspex eval`` checks them."""
    from dspex.cli._datasets import DatasetFields, check_dataset, read_examples

    fields = DatasetFields.of(record, inputs)
    check_dataset(path, fields)
    return [example.to_dict() for example in read_examples(path, fields)], list(fields.inputs)


async def _follow(
    command: ControlCommand, *, bootstrap_servers: KafkaTarget | None, prefix: str, timeout_s: float
) -> list[JournalRecord]:
    from dspex.streams.client.optimizer import OptimizerClient

    seen: list[JournalRecord] = []
    async with OptimizerClient(
        bootstrap_servers=bootstrap_servers, prefix=prefix, idle_timeout_s=timeout_s
    ) as client:
        async for record in client.run(command):
            seen.append(record)
            click.echo(describe(record))
    return seen


def describe(record: JournalRecord) -> str:
    """One line about a journal record, for people."""
    from dspex.streams.records import CandidateRecord

    if isinstance(record, CandidateRecord):
        score = "failed" if record.score is None else f"{record.score:.4f}"
        over = f"{record.examples} examples" + ("" if record.full_eval else ", minibatch")
        cost = record.usage.cost_usd
        label = {"trial": f"trial {record.number:>3}", "final": "final    ", "online": "online   "}
        line = f"{label[record.kind]}  score {score:>7} ({over})  cost ${cost:.4f}"
        line += f"  {record.candidate_id}"
        return line + (f"  error: {record.error}" if record.error else "")
    parts = [f"{record.event:<14}"]
    if record.version is not None:
        parts.append(f"version {record.version}")
    parts.append(record.message)
    return "  ".join(part for part in parts if part)


def _outcome(records: list[JournalRecord]) -> int:
    from dspex.streams.records import OptimizerEvent

    last = records[-1] if records else None
    if isinstance(last, OptimizerEvent) and last.event in ("job_failed", "command_failed"):
        return EXIT_FAILURE
    return 0


@click.command("optimize", context_settings=_HELP)
@click.argument("program_id")
@click.option(
    "--optimizer",
    "optimizer_name",
    type=click.Choice(OPTIMIZER_NAMES),
    default="bootstrap",
    show_default=True,
    help="Which optimizer the service runs.",
)
@click.option("--trainset", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--valset",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="JSONL; the promotion gate scores candidates and the active version on it.",
)
@click.option("--metric", default="exact_match", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--margin", type=click.FloatRange(0, 1), help="Promotion margin [default: the service's]."
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    callback=_settings,
    metavar="NAME=VALUE",
    help="An optimizer setting, e.g. --set num_trials=12 (repeatable).",
)
@click.option(
    "--inputs", default="", help="Comma-separated input fields [default: the signature's]."
)
@click.option("--online", is_flag=True, help="Start an online job (feedback traces) instead.")
@click.option("--job-id", help="Name the job [default: a new id].")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG of score per trial [default: optimize-JOB.png]; --no-plot for none.",
)
@click.option("--no-plot", is_flag=True, help="Do not write a plot.")
@click.option("--no-wait", is_flag=True, help="Send the command and exit.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Give up when the service says nothing for this many seconds.",
)
@kafka_options
@handles_errors
def optimize(
    program_id: str,
    optimizer_name: str,
    trainset: Path | None,
    valset: Path,
    metric: str,
    seed: int,
    margin: float | None,
    settings: dict[str, Any],
    inputs: str,
    online: bool,
    job_id: str | None,
    plot: Path | None,
    no_plot: bool,
    no_wait: bool,
    timeout_s: float,
    bootstrap_servers: str | None,
    prefix: str | None,
) -> None:
    """Optimize PROGRAM_ID on the cluster with the optimizer service.

    Prints each trial as it finishes (score, examples, cost, candidate id),
    the active version's baseline and the gate's decision: the result becomes
    the active version only if it beats the baseline on --valset by the
    margin. Writes a PNG of score per trial and best so far.

    Exit code 0 when the job finished (promoted or not), 1 when it failed or
    the command was refused, 2 for bad usage or a bad dataset.
    """
    from dspex.streams.records import ControlCommand
    from dspex.streams.registry import load_catalog
    from dspex.streams.topics import TopicNames

    if not online and trainset is None:
        raise click.UsageError("--trainset is needed (except with --online)")
    names = TopicNames(prefix_or_default(prefix))
    servers = kafka_or_default(bootstrap_servers)
    record = asyncio.run(load_catalog(servers, names)).record(program_id)
    wanted = tuple(name.strip() for name in inputs.split(",") if name.strip())
    try:
        valrows, keys = _read_rows(valset, record, wanted)
        trainrows = _read_rows(trainset, record, wanted)[0] if trainset is not None else []
    except ConfigurationError as exc:
        fail(str(exc), 2)
    command = ControlCommand(
        command="online" if online else "optimize",
        program_id=program_id,
        job_id=job_id,
        optimizer=None if online else optimizer_name,  # type: ignore[arg-type]
        settings=settings,
        trainset=trainrows,
        valset=valrows,
        input_keys=keys,
        metric=metric,
        seed=seed,
        margin=margin,
    )
    size = len(json.dumps(command.model_dump(mode="json", by_alias=True)))
    if size > 900_000:
        fail(f"the datasets make a {size:,}-byte command; the limit is 900,000 bytes", 2)
    if no_wait:
        asyncio.run(_send(command, bootstrap_servers=servers, prefix=names.prefix))
        click.echo(f"job {command.job} sent")
        return
    click.echo(f"job {command.job}: {command.optimizer or 'online'} on {program_id}", err=True)
    records = asyncio.run(
        _follow(command, bootstrap_servers=servers, prefix=names.prefix, timeout_s=timeout_s)
    )
    if not no_plot:
        from dspex.observability.plot import write_trial_plot

        target = plot or Path(f"optimize-{command.job}.png")
        if write_trial_plot(records, target, title=f"{program_id}: job {command.job}"):
            click.echo(f"plot: {target}", err=True)
    raise SystemExit(_outcome(records))


async def _send(command: ControlCommand, *, bootstrap_servers: KafkaTarget, prefix: str) -> None:
    from dspex.streams.client.optimizer import OptimizerClient

    async with OptimizerClient(bootstrap_servers=bootstrap_servers, prefix=prefix) as client:
        await client.send(command)


@click.group("optimizer", context_settings=_HELP)
def optimizer() -> None:
    """Run the optimizer service and send it commands."""


def _command(
    timeout_s: float, bootstrap_servers: str | None, prefix: str | None, **fields: Any
) -> None:
    from dspex.streams.records import ControlCommand

    command = ControlCommand(**fields)
    records = asyncio.run(
        _follow(
            command,
            bootstrap_servers=bootstrap_servers,
            prefix=prefix_or_default(prefix),
            timeout_s=timeout_s,
        )
    )
    raise SystemExit(_outcome(records))


_timeout = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Give up when the service does not answer within this many seconds.",
)


@optimizer.command("promote")
@click.argument("program_id")
@click.argument("candidate_id")
@_timeout
@kafka_options
@handles_errors
def promote(program_id: str, candidate_id: str, timeout_s: float, **kafka: Any) -> None:
    """Make CANDIDATE_ID (from the candidates topic) the active version of PROGRAM_ID."""
    _command(
        timeout_s, command="promote", program_id=program_id, candidate_id=candidate_id, **kafka
    )


@optimizer.command("rollback")
@click.argument("program_id")
@click.option(
    "--to-version", type=click.IntRange(min=1), help="[default: the one before the active]"
)
@_timeout
@kafka_options
@handles_errors
def rollback(program_id: str, to_version: int | None, timeout_s: float, **kafka: Any) -> None:
    """Make an earlier version of PROGRAM_ID active again (registered as a new version)."""
    _command(timeout_s, command="rollback", program_id=program_id, version=to_version, **kafka)


@optimizer.command("pause")
@click.argument("program_id")
@click.argument("job_id")
@_timeout
@kafka_options
@handles_errors
def pause(program_id: str, job_id: str, timeout_s: float, **kafka: Any) -> None:
    """Stop JOB_ID; `resume` continues it from its recorded trials."""
    _command(timeout_s, command="pause", program_id=program_id, job_id=job_id, **kafka)


@optimizer.command("resume")
@click.argument("program_id")
@click.argument("job_id")
@_timeout
@kafka_options
@handles_errors
def resume(program_id: str, job_id: str, timeout_s: float, **kafka: Any) -> None:
    """Continue a paused JOB_ID."""
    _command(timeout_s, command="resume", program_id=program_id, job_id=job_id, **kafka)


@optimizer.command("feedback")
@click.argument("request_id")
@click.option("--score", type=click.FloatRange(0, 1), help="How good the result was, 0..1.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_settings,
    metavar="FIELD=VALUE",
    help="A correct output field (repeatable).",
)
@kafka_options
@handles_errors
def feedback(
    request_id: str,
    score: float | None,
    labels: dict[str, Any],
    bootstrap_servers: str | None,
    prefix: str | None,
) -> None:
    """Attach a score or gold label to the result of REQUEST_ID (for online jobs)."""
    from dspex.streams.client.optimizer import OptimizerClient
    from dspex.streams.records import FeedbackRecord

    record = FeedbackRecord(request_id=request_id, score=score, label=labels or None)

    async def send() -> None:
        async with OptimizerClient(
            bootstrap_servers=bootstrap_servers, prefix=prefix_or_default(prefix)
        ) as client:
            await client.feedback(record)

    asyncio.run(send())
