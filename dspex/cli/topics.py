"""`dspex topics`: create and list a deployment's topics."""

from __future__ import annotations

import sys

import click

from dspex.cli._common import (
    EXIT_FAILURE,
    handles_errors,
    kafka_options,
    kafka_or_default,
    overrides,
    prefix_option,
    run,
)
from dspex.programs._progress import StatusLine


@click.group()
def topics() -> None:
    """Create and list the Kafka topics of a deployment (DESIGN §4)."""


@topics.command("create")
@kafka_options
@click.option("--partitions", type=int, help="Partitions of data topics [default: 6].")
@handles_errors
def topics_create(
    bootstrap_servers: str | None, prefix: str | None, partitions: int | None
) -> None:
    """Create every missing topic; existing ones are left as they are.

    Exit code 1 if an existing topic differs from the plan (fewer partitions or
    another cleanup policy): dspex never alters a topic that holds data.
    """
    from dspex.streams.topics import ensure_topics
    from dspex.topologies.settings import TopicSettings

    servers = kafka_or_default(bootstrap_servers)
    settings = TopicSettings(**overrides(prefix=prefix, partitions=partitions))
    with StatusLine() as progress:
        progress(f"creating topics on {servers.bootstrap_servers}")
        report = run(ensure_topics(servers, settings))
    for name in report.created:
        click.echo(f"created  {name}")
    for name in report.existing:
        click.echo(f"exists   {name}")
    for name, problem in report.mismatched:
        click.echo(f"differs  {name}: {problem}", err=True)
    if report.mismatched:
        sys.exit(EXIT_FAILURE)


@topics.command("list")
@prefix_option
@handles_errors
def topics_list(prefix: str | None) -> None:
    """Show the planned topics: name, channel, key, partitions, cleanup policy."""
    from dspex.streams.topics import plan_topics
    from dspex.topologies.settings import TopicSettings

    for topic in plan_topics(TopicSettings(**overrides(prefix=prefix))):
        click.echo(
            f"{topic.name:<32} {topic.spec.channel.value:<13} key={topic.spec.key:<14} "
            f"partitions={topic.partitions:<3} {topic.configs['cleanup.policy']}"
        )
