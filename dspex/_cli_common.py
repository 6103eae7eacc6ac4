"""What every ``dspex`` subcommand shares: exit codes and one-line errors.

Exit codes:
    0  success
    1  the operation failed (a one-line ``error:`` message says why)
    2  bad usage (unknown option, invalid value or setting)
    3  ``status``: the service is not running
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Final, NoReturn, ParamSpec, TypeVar

import click
from pydantic import ValidationError

from dspex._validation import describe_validation_error
from dspex.errors import DSPExError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "fail",
    "handles_errors",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_RUNNING: Final = 3
EXIT_INTERRUPTED: Final = 130

P = ParamSpec("P")
T = TypeVar("T")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: <message>`` on one line to stderr and exit with ``code``."""
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def handles_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Turn dspex errors into one ``error:`` line and exit code 1 (settings: 2)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except DSPExError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(f"invalid setting: {describe_validation_error(exc, whole='')}", EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper
