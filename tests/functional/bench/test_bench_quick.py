"""Every benchmark's ``--quick`` mode runs and writes a well-formed JSON record.

Benchmarks are found, not listed: every ``bench/NAME.py`` that is not private
(``_*.py``), the package, the report renderer, the LM server or its scripted
LM is run as ``python -m bench.NAME --quick --output TMP/NAME.json`` from the
repository root, against the session's broker when it takes ``--bootstrap-servers``
(``bench.chaos`` runs in tests/integration/test_chaos.py, which also checks what
it found). Nothing here looks at how fast anything was: only that the run succeeded and
that its record says what every record must say.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.benchmarks import (
    ROOT,
    RUN_TIMEOUT_S,
    STOP_GRACE_S,
    check_record,
    run_to_completion,
)

BENCH = ROOT / "bench"
#: Modules of bench/ that are not benchmarks.
NOT_BENCHMARKS = frozenset({"__init__", "report", "lm_server", "scripted_lm"})
#: Benchmarks whose quick run is a test of its own that also checks what it found.
RUN_ELSEWHERE = frozenset({"chaos"})  # tests/integration/test_chaos.py

pytestmark = pytest.mark.kafka


def benchmark_names() -> list[str]:
    return sorted(
        path.stem
        for path in BENCH.glob("*.py")
        if not path.stem.startswith("_") and path.stem not in NOT_BENCHMARKS | RUN_ELSEWHERE
    )


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
    check_record(name, json.loads(output.read_text(encoding="utf-8")))
