"""A deadline on a worker's graceful stop.

A stop signal starts the graceful stop (finish or hand back what is in
flight, commit, leave the group). If that has not ended within the deadline,
the process logs every task it was still waiting on — in every event loop it
runs, the Kafka consumer's thread included — and exits with
:data:`EXIT_STOP_DEADLINE`. Nothing is lost by that: offsets not committed are
read again by the partition's next owner (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["EXIT_STOP_DEADLINE", "StopDeadline", "pending_tasks"]

log = logging.getLogger(__name__)

#: Exit status of a process whose graceful stop overran its deadline.
EXIT_STOP_DEADLINE = 3

#: ``(name, loop)`` pairs to describe when the deadline passes.
LoopSource = Callable[[], list[tuple[str, asyncio.AbstractEventLoop]]]


def pending_tasks(loops: list[tuple[str, asyncio.AbstractEventLoop]], *, limit: int = 12) -> str:
    """Every unfinished task of ``loops`` with its stack (innermost ``limit`` frames).

    Read from another thread: a loop may change its task set meanwhile, so a
    read that races is tried again.
    """
    out = io.StringIO()
    for name, loop in loops:
        for _ in range(5):
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:  # the set changed while it was read
                continue
        else:
            tasks = []
        out.write(f"== {name}: {len(tasks)} pending task(s)\n")
        for task in tasks:
            task.print_stack(limit=limit, file=out)
    return out.getvalue()


class StopDeadline:
    """Exit the process if its graceful stop outlasts ``timeout_s``.

    Args:
        timeout_s: Seconds from :meth:`arm` to the forced exit.
        loops: Gives the event loops to describe when the deadline passes.
        exit: Ends the process (``os._exit`` unless a test gives another).
    """

    def __init__(
        self,
        timeout_s: float,
        loops: LoopSource,
        *,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.timeout_s = timeout_s
        self._loops = loops
        self._exit = exit
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start the countdown (once; later calls change nothing)."""
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        """The stop ended in time."""
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        try:
            report = pending_tasks(self._loops())
        except Exception as exc:  # the exit must happen whatever the report does
            report = f"(could not list pending tasks: {type(exc).__name__}: {exc})"
        log.error(
            "the worker did not stop within %g s of the stop signal; exiting with status %d "
            "(uncommitted records will be read again by the next owner). Still pending:\n%s",
            self.timeout_s,
            EXIT_STOP_DEADLINE,
            report,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        self._exit(EXIT_STOP_DEADLINE)
