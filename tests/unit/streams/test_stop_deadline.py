"""The deadline on a worker's graceful stop: past it, say what is pending, then exit."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from dspex.streams._shutdown import EXIT_STOP_DEADLINE, StopDeadline


async def waits_for_a_commit_that_never_comes(never: asyncio.Event) -> None:
    await never.wait()


def test_an_overrun_stop_names_the_pending_task_and_exits_with_its_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    never = asyncio.Event()
    asyncio.run_coroutine_threadsafe(waits_for_a_commit_that_never_comes(never), loop)
    exited = threading.Event()
    codes: list[int] = []

    def exit(code: int) -> None:
        codes.append(code)
        exited.set()

    deadline = StopDeadline(0.2, lambda: [("consumer", loop)], exit=exit)
    with caplog.at_level(logging.ERROR, logger="dspex.streams._shutdown"):
        deadline.arm()
        deadline.arm()  # a second signal does not start a second countdown
        assert exited.wait(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    assert codes == [EXIT_STOP_DEADLINE]
    assert "did not stop within 0.2 s of the stop signal; exiting with status 3" in caplog.text
    assert "consumer: 1 pending task(s)" in caplog.text
    assert "waits_for_a_commit_that_never_comes" in caplog.text


def test_a_stop_that_ends_in_time_does_not_exit() -> None:
    codes: list[int] = []
    deadline = StopDeadline(0.2, list, exit=codes.append)
    deadline.arm()
    deadline.cancel()
    threading.Event().wait(0.5)
    assert codes == []
