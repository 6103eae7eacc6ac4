"""Every benchmark's ``--quick`` mode runs and writes a well-formed JSON record.

Benchmarks are found, not listed: every ``bench/NAME.py`` that is not private
(``_*.py``), the package, the report renderer, the LM server or its scripted
LM is run as ``python -m bench.NAME --quick --output TMP/NAME.json`` from the
repository root, against the session's broker when it takes ``--bootstrap-servers``.
Nothing here looks at how fast anything was: only that the run succeeded and
that its record says what every record must say.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "bench"
#: Modules of bench/ that are not benchmarks.
NOT_BENCHMARKS = frozenset({"__init__", "report", "lm_server", "scripted_lm"})
#: Far above the minute a quick run is meant to take: a loaded machine must not fail it.
RUN_TIMEOUT_S = 600
#: How long an interrupted benchmark gets to stop its workers and servers.
STOP_GRACE_S = 60

pytestmark = pytest.mark.kafka


def benchmark_names() -> list[str]:
    return sorted(
        path.stem
        for path in BENCH.glob("*.py")
        if not path.stem.startswith("_") and path.stem not in NOT_BENCHMARKS
    )


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


def result_file_state(name: str) -> tuple[int, int] | None:
    """(mtime, size) of ``bench/results/NAME.json``, None when there is none."""
    path = BENCH / "results" / f"{name}.json"
    if not path.exists():
        return None
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def test_benchmarks_are_found() -> None:
    names = benchmark_names()
    assert {"lm_client_overhead", "pipeline_overhead", "eval_memory"} <= set(names)
    assert not NOT_BENCHMARKS & set(names)


@pytest.mark.timeout(RUN_TIMEOUT_S + STOP_GRACE_S + 120)
@pytest.mark.parametrize("name", benchmark_names())
def test_quick_mode_writes_a_valid_record(name: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    module = [sys.executable, "-m", f"bench.{name}"]
    usage = subprocess.run(
        [*module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert usage.returncode == 0, usage.stderr
    assert "--quick" in usage.stdout, usage.stdout
    assert "--output" in usage.stdout, usage.stdout
    output = tmp_path / f"{name}.json"
    command = [*module, "--quick", "--output", str(output)]
    if "--bootstrap-servers" in usage.stdout:
        command += ["--bootstrap-servers", kafka_bootstrap]
    recorded_before = result_file_state(name)

    run = run_to_completion(command)

    assert run.returncode == 0, (
        f"{' '.join(command)} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    assert result_file_state(name) == recorded_before, f"--quick wrote bench/results/{name}.json"
    record = json.loads(output.read_text(encoding="utf-8"))
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
