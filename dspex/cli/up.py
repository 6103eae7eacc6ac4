"""`dspex up` / `dspex down`: everything local in one command."""

from __future__ import annotations

from pathlib import Path

import click

from dspex.cli._common import (
    handles_errors,
    run,
    topology_option,
)
from dspex.programs._progress import StatusLine


@click.command("up")
@topology_option
@handles_errors
def up_command(topology: Path | None) -> None:
    """Start broker, local LM, topics, one worker and the example programs.

    Each piece starts only if it is not running yet; the worker serves
    examples/topology.yaml. Then try:  dspex submit sentiment --input review="Great!"
    """
    from dspex._local.up import up

    with StatusLine() as progress:
        lines = run(up(progress, topology))
    for line in lines:
        click.echo(line)


@click.command("down")
@topology_option
@handles_errors
def down_command(topology: Path | None) -> None:
    """Stop what `dspex up` started: the worker, the local LM and the broker."""
    from dspex._local.up import down

    for line in down(topology):
        click.echo(line)
