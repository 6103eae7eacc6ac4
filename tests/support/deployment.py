"""Worker processes for worker tests, and the benchmark LM server as their LM.

The rest of a test deployment (topology file, request backlog, reading a
topic back) is the benchmarks' too: :mod:`bench._deployment`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench._common import lm_server_process


@contextmanager
def scripted_lm_process(*, text: str, delay_s: float = 0.0) -> Iterator[str]:
    """``bench.lm_server`` answering ``text`` after ``delay_s``; yields its /v1 URL."""
    with lm_server_process(latency=f"fixed:{delay_s}", text=text) as (url, _server):
        yield url


def start_worker(
    topology: Path, worker_id: str, *, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """``dspex worker TOPOLOGY`` as a process; its output is kept for failures."""
    return subprocess.Popen(
        [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", worker_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )


def stop_worker(worker: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM the worker; its exit code and output (fails if it takes over 60 s)."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        output, _ = worker.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # SIGUSR1 makes the worker print every thread's stack and every pending
        # task before it is killed: the output then says where it hung.
        worker.send_signal(signal.SIGUSR1)
        time.sleep(3)
        worker.kill()
        output, _ = worker.communicate()
        raise AssertionError(f"worker did not stop within 60s after SIGTERM:\n{output}") from None
    return worker.returncode, output
