"""`dspex worker` and `dspex optimizer serve`: the two long-running services."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from dspex.cli._common import (
    handles_errors,
)

__all__ = ["optimizer_serve", "worker"]

_loglevel_option = click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)


@click.command("worker")
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--worker-id", help="Name in results and telemetry [default: host-pid].")
@_loglevel_option
@handles_errors
def worker(topology: Path, worker_id: str | None, loglevel: str) -> None:
    """Serve the programs of TOPOLOGY (YAML/JSON) until SIGTERM or Ctrl-C.

    Creates missing topics first, loads the program registry, then answers
    inference requests with at most `inflight_limit` in flight.
    """
    from dspex.streams.worker.app import run_worker
    from dspex.topologies import Topology

    logging.getLogger().setLevel(loglevel.upper())
    run_worker(Topology.from_file(topology), worker_id=worker_id, loglevel=loglevel)


@click.command("serve")
@click.argument("topology", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--service-id", default="optimizer", show_default=True)
@_loglevel_option
@handles_errors
def optimizer_serve(topology: Path, service_id: str, loglevel: str) -> None:
    """Run the optimizer service of TOPOLOGY until SIGTERM or Ctrl-C.

    Resumes the jobs its journal (the candidates topic) shows running, then
    carries out commands from the control topic. Run one per deployment.
    """
    from dspex.streams.optimizer_service.service import run_optimizer
    from dspex.topologies import Topology

    logging.getLogger().setLevel(loglevel.upper())
    run_optimizer(Topology.from_file(topology), service_id=service_id, loglevel=loglevel)
