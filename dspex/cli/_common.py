"""What every ``dspex`` subcommand shares: exit codes and one-line errors.

Exit codes:
    0  success
    1  the operation failed (a one-line ``error:`` message says why)
    2  bad usage (unknown option, invalid value or setting)
    3  ``status``: the service is not running
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, ParamSpec, TypeVar

import click
from pydantic import ValidationError

from dspex._local._process import ServiceStatus
from dspex._validation import describe_validation_error
from dspex.errors import DSPExError, KafkaAuthError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_KAFKA_AUTH",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "bootstrap_option",
    "describe_status",
    "fail",
    "handles_errors",
    "kafka_options",
    "kafka_or_default",
    "overrides",
    "prefix_option",
    "prefix_or_default",
    "print_write_or_check",
    "run",
    "topology_option",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RUNNING: Final = 3
#: Kafka refused the credentials (a SASL login or a TLS handshake).
EXIT_KAFKA_AUTH: Final = 4
EXIT_INTERRUPTED: Final = 130

P = ParamSpec("P")
T = TypeVar("T")


if TYPE_CHECKING:
    from dspex.topologies.settings import KafkaSettings


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: <message>`` on one line to stderr and exit with ``code``."""
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def handles_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Turn dspex errors into one ``error:`` line and exit code 1 (settings: 2; refused
    Kafka credentials: 4)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except KafkaAuthError as exc:
            fail(str(exc), EXIT_KAFKA_AUTH)
        except DSPExError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(f"invalid setting: {describe_validation_error(exc, whole='')}", EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine to completion."""
    return asyncio.run(coro)


def overrides(**values: object) -> dict[str, Any]:
    """The options the user gave, for a settings model's defaults to fill the rest."""
    return {key: value for key, value in values.items() if value is not None}


def describe_status(status: ServiceStatus) -> str:
    """A local service's status, as `dspex broker status` and `dspex lm status` print it."""
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


bootstrap_option = click.option(
    "--bootstrap-servers",
    help="Kafka brokers [default: $DSPEX_BOOTSTRAP_SERVERS or 127.0.0.1:9092].",
)
prefix_option = click.option(
    "--prefix", help="Topic name prefix [default: $DSPEX_TOPICS_PREFIX or dspex]."
)


def print_write_or_check(text: str, out: Path | None, *, check: bool, command: str) -> None:
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


topology_option = click.option(
    "--topology",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Topology to run [default: examples/topology.yaml]; its Kafka and LM must be local.",
)


def kafka_options(func: Callable[P, T]) -> Callable[P, T]:
    """``--bootstrap-servers`` and ``--prefix``, as every Kafka-facing command takes them."""
    return bootstrap_option(prefix_option(func))


def kafka_or_default(bootstrap_servers: str | None) -> KafkaSettings:
    """The given brokers, else ``DSPEX_BOOTSTRAP_SERVERS``, else the local broker.

    The rest of the connection (TLS, SASL) comes from the ``DSPEX_*`` variables.
    """
    from dspex.topologies.settings import KafkaSettings

    return KafkaSettings(**overrides(bootstrap_servers=bootstrap_servers))


def prefix_or_default(prefix: str | None) -> str:
    """The given topic prefix, else ``DSPEX_TOPICS_PREFIX``, else ``dspex``."""
    from dspex.topologies.settings import TopicSettings

    return TopicSettings(**overrides(prefix=prefix)).prefix
