"""The ``dspex`` command, one module per command group.

Exit codes: see :mod:`dspex.cli._common`.
"""

from __future__ import annotations

import logging

import click

from dspex import __version__
from dspex.cli.broker import broker
from dspex.cli.docs import dashboards, metrics_doc, report, schema
from dspex.cli.eval import eval_command
from dspex.cli.lm import lm
from dspex.cli.optimize import optimize, optimizer
from dspex.cli.programs import programs
from dspex.cli.serve import optimizer_serve, worker
from dspex.cli.submit import submit
from dspex.cli.topics import topics
from dspex.cli.up import down_command, up_command

__all__ = ["main"]


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


for command in (
    broker,
    lm,
    topics,
    schema,
    metrics_doc,
    dashboards,
    report,
    worker,
    programs,
    up_command,
    down_command,
    submit,
    eval_command,
    optimize,
    optimizer,
):
    main.add_command(command)
optimizer.add_command(optimizer_serve)
