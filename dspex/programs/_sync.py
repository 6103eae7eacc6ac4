"""Run a coroutine to completion from synchronous code (scripts, notebooks).

``module(**inputs)`` is a thin wrapper over ``await module.acall(**inputs)``.
It cannot use ``asyncio.run`` per call: LM clients keep an HTTP connection
pool bound to the event loop that opened it, and a notebook already runs a
loop of its own. So synchronous calls go to one background event loop in a
daemon thread, started on first use and reused; the caller blocks on the
result. This loop is an execution detail, not configuration: settings still
travel with each call through contextvars.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _BackgroundLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="dspex-sync-loop", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop


_RUNNER = _BackgroundLoop()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result.

    The caller's contextvars (e.g. ``dspex.context(lm=...)``) are carried over.
    """
    context = contextvars.copy_context()
    loop = _RUNNER.loop()
    if _running_loop() is loop:
        coro.close()
        raise RuntimeError("run_sync called from the dspex background loop; use await")

    future = asyncio.run_coroutine_threadsafe(_with_context(context, coro), loop)
    return future.result()


async def _with_context(context: contextvars.Context, coro: Coroutine[Any, Any, T]) -> T:
    # A task created with the caller's context sees its dspex settings.
    task = asyncio.get_running_loop().create_task(coro, context=context)
    return await task


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
