"""Worker processes for worker tests, and the benchmark LM server as their LM.

The rest of a test deployment (topology file, request backlog, reading a
topic back) is the benchmarks' too: :mod:`bench._deployment`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
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


class WorkerProcess(subprocess.Popen[str]):
    """A worker process whose output goes to a file, read back when it stops.

    A pipe would fill up with a chatty worker's log (64 KiB) and block it
    mid-write until someone reads; a file never does.
    """

    log_path: Path

    def output(self) -> str:
        """What the worker has written so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def communicate(
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[str, str]:
        """Wait for the process; its output (from the file) as stdout."""
        self.wait(timeout)
        return self.output(), ""


def start_worker(topology: Path, worker_id: str, *, cwd: Path | None = None) -> WorkerProcess:
    """``dspex worker TOPOLOGY`` as a process; its output is kept for failures."""
    return start_dspex(
        ["worker", str(topology), "--worker-id", worker_id], f"worker-{worker_id}", cwd=cwd
    )


def start_dspex(args: list[str], name: str, *, cwd: Path | None = None) -> WorkerProcess:
    """``dspex ARGS`` (a worker, the optimizer service) as a process with its output in a file."""
    log_path = Path(tempfile.mkstemp(prefix=f"dspex-{name}-", suffix=".log")[1])
    with log_path.open("w", encoding="utf-8") as log:
        worker = WorkerProcess(
            [sys.executable, "-m", "dspex", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
    worker.log_path = log_path
    return worker


def stop_worker(worker: WorkerProcess) -> tuple[int, str]:
    """SIGTERM the worker; its exit code and output (fails if it takes over 60 s)."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        # SIGUSR1 makes the worker print every thread's stack and every pending
        # task before it is killed: the output then says where it hung.
        worker.send_signal(signal.SIGUSR1)
        time.sleep(3)
        worker.kill()
        worker.wait()
        raise AssertionError(
            f"worker did not stop within 60s after SIGTERM:\n{worker.output()}"
        ) from None
    output = worker.output()
    worker.log_path.unlink(missing_ok=True)
    return worker.returncode, output
