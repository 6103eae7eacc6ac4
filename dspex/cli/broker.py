"""`dspex broker`: a local single-node Apache Kafka broker."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.cli._common import (
    EXIT_NOT_RUNNING,
    describe_status,
    handles_errors,
    overrides,
    run,
)
from dspex.programs._progress import StatusLine

# -- broker -------------------------------------------------------------------


@click.group()
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
    return KafkaBroker(BrokerSettings(**overrides(port=port, data_dir=data_dir, **extra)))


@broker.command("start")
@_port_option
@_data_dir_option
@click.option("--controller-port", type=int, help="KRaft controller port [default: port+1].")
@click.option("--kafka-version", help="Apache Kafka release to fetch and run.")
@click.option("--timeout", "start_timeout_s", type=float, help="Seconds to wait [default: 90].")
@click.option(
    "--secure",
    is_flag=True,
    default=None,
    help="SASL/SCRAM-SHA-512 over TLS on the client port, mutual TLS on --tls-port, ACLs "
    "enforced, no plaintext port. Credentials: <data dir>/security.",
)
@click.option("--tls-port", type=int, help="Mutual-TLS port of --secure [default: port+2].")
@handles_errors
def broker_start(
    port: int | None,
    data_dir: Path | None,
    controller_port: int | None,
    kafka_version: str | None,
    start_timeout_s: float | None,
    secure: bool | None,
    tls_port: int | None,
) -> None:
    """Start the broker in the background and wait until it accepts clients.

    The first start fetches the broker from Maven Central and formats storage.
    With --secure it also makes a local CA, certificates and the SCRAM users
    admin, dspex and reader (passwords in <data dir>/security/<user>.password),
    and prints the DSPEX_* settings a client needs.
    """
    kafka = _broker(
        port,
        data_dir,
        controller_port=controller_port,
        kafka_version=kafka_version,
        start_timeout_s=start_timeout_s,
        secure=secure,
        tls_port=tls_port,
    )
    with StatusLine() as progress:
        status = run(kafka.start(progress))
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
    if kafka.settings.secure:
        client = kafka.settings.client_settings("dspex")
        click.echo("clients connect with (SASL_SSL as user dspex; a topology's kafka: section "
                   "takes the same fields in lower case):")  # fmt: skip
        for name in ("security_protocol", "sasl_mechanism", "sasl_username",
                     "sasl_password_file", "ssl_cafile"):  # fmt: skip
            click.echo(f"  DSPEX_{name.upper()}={getattr(client, name)}")


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
    click.echo(describe_status(status))
    if not status.running:
        sys.exit(EXIT_NOT_RUNNING)


@broker.command("fetch")
@click.option("--kafka-version", help="Apache Kafka release to fetch.")
@handles_errors
def broker_fetch(kafka_version: str | None) -> None:
    """Download the broker jars from Maven Central (done by `start` if needed)."""
    kafka = _broker(None, None, kafka_version=kafka_version)
    with StatusLine() as progress:
        lib = run(kafka.fetch(progress))
    click.echo(f"Apache Kafka {kafka.settings.kafka_version} ready in {lib}")
