"""A one-line progress display for long CLI work.

On a terminal the line is redrawn in place with a spinner and the elapsed
time; elsewhere (CI logs, pipes) each new message is printed once, so logs
stay readable.
"""

from __future__ import annotations

import itertools
import sys
import time
from types import TracebackType
from typing import TextIO


class StatusLine:
    """Show the latest status message of a long operation on stderr.

    Example:
        >>> with StatusLine() as status:  # doctest: +SKIP
        ...     status("fetching Apache Kafka")
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._spinner = itertools.cycle("|/-\\")
        self._last = ""
        self._started = time.monotonic()
        self._width = 0

    def __call__(self, message: str) -> None:
        if self._tty:
            elapsed = time.monotonic() - self._started
            line = f"{next(self._spinner)} {message} [{elapsed:4.0f}s]"
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self._stream.flush()
        elif _stem(message) != _stem(self._last):
            self._stream.write(message + "\n")
            self._stream.flush()
        self._last = message

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tty and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()


def _stem(message: str) -> str:
    """The message without a trailing ``(12s)`` counter, to print each step once."""
    head, _, tail = message.rpartition(" (")
    return head if head and tail.endswith("s)") else message
