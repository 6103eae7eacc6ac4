"""Running a benchmark to completion from a test, and what every benchmark record must say."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Far above the minute a quick run is meant to take: a loaded machine must not fail it.
RUN_TIMEOUT_S = 600
#: How long an interrupted benchmark gets to stop its workers and servers.
STOP_GRACE_S = 60


def run_to_completion(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` from the repository root; stop it if it overruns or the test ends."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop(process)
        pytest.fail(
            f"{' '.join(command)} did not finish within {RUN_TIMEOUT_S} s:\n"
            f"{stdout[-3000:]}\n{stderr[-3000:]}"
        )
    except BaseException:  # interrupted, or the test's own timeout: leave nothing running
        stop(process)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Interrupt a benchmark, then kill its process group if it does not stop.

    SIGINT first, so the benchmark's own clean-up stops the workers and LM
    servers it started; the process group catches whatever is left.
    """
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()


def figures(value: Any, path: str = "results") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``{median, min, max}`` mapping anywhere in ``value``, with where it is."""
    if isinstance(value, dict):
        if {"median", "min", "max"} <= value.keys():
            yield path, value
        for key, item in value.items():
            yield from figures(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from figures(item, f"{path}[{index}]")


def check_record(name: str, record: Any) -> None:
    """Fail unless ``record`` is a well-formed quick-mode record of benchmark ``name``.

    Nothing here looks at how fast anything was.
    """
    assert isinstance(record, dict)
    assert record["benchmark"] == name
    assert record["mode"] == "quick"
    datetime.fromisoformat(record["recorded_at"])
    duration = record["duration_s"]
    assert isinstance(duration, int | float)
    assert math.isfinite(duration)
    assert duration >= 0
    environment = record["environment"]
    assert isinstance(environment["cpu_count"], int)
    assert environment["cpu_count"] >= 1
    assert isinstance(environment["versions"], dict)
    assert environment["versions"]
    setup = record.get("setup", record.get("params"))
    assert isinstance(setup, dict), "no setup or params"
    assert setup, "empty setup or params"
    results = record["results"]
    assert isinstance(results, dict | list), "no results"
    assert results, "empty results"
    for where, figure in figures(results):
        values = [figure[key] for key in ("min", "median", "max")]
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), (
            f"{where}: {figure}"
        )
        assert all(math.isfinite(v) for v in values), f"{where}: {figure}"
        assert values[0] <= values[1] <= values[2], f"{where}: {figure}"
