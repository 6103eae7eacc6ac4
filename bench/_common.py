"""What every benchmark shares: flags, figures, the environment record, the LM server.

Every benchmark is ``python -m bench.NAME [--quick] [--output PATH]``: ``--quick``
runs in well under two minutes (the smoke test uses it), the full mode is
what ``make bench`` records; results go to ``bench/results/NAME.json`` unless
``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "RESULTS",
    "environment",
    "go_lm_server",
    "lm_server_process",
    "load_average",
    "parser",
    "result_record",
    "summary",
    "write_result",
]

RESULTS = Path(__file__).resolve().parent / "results"

_PACKAGES = ("dspex", "faust-streaming", "aiokafka", "httpx", "httpcore", "pydantic", "purgatory")


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """``{median, min, max}`` of repeated measurements (times ``scale``)."""
    if not values:
        raise ValueError("no measurements to summarise")
    return {
        "median": round(statistics.median(values) * scale, digits),
        "min": round(min(values) * scale, digits),
        "max": round(max(values) * scale, digits),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages now, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def environment(
    *, load_at_start: list[float] | None = None, **extra_versions: str | None
) -> dict[str, Any]:
    """The machine and the versions a result was measured with.

    With ``load_at_start`` (a :func:`load_average` reading when the benchmark
    began), also the load average then and now: how far to trust the figures
    on a shared machine.
    """
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions.update(extra_versions)
    record: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }
    if load_at_start is not None:
        record["load_average_1_5_15"] = {"start": load_at_start, "end": load_average()}
    return record


def parser(
    name: str, doc: str | None, *, quick: str, broker: bool = False
) -> argparse.ArgumentParser:
    """The flags every benchmark takes; ``quick`` says what ``--quick`` runs.

    With ``broker``, also ``--bootstrap-servers`` (default: a private broker the
    benchmark starts and stops itself).
    """
    result = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=(doc or name).strip().splitlines()[0],
    )
    result.add_argument("--quick", action="store_true", help=f"a short run (< 2 min): {quick}")
    result.add_argument(
        "--output",
        type=Path,
        default=RESULTS / f"{name}.json",
        help=f"where the JSON result goes [default: bench/results/{name}.json]",
    )
    if broker:
        result.add_argument(
            "--bootstrap-servers",
            default=None,
            help="use this Kafka broker [default: start a private one on free ports]",
        )
    return result


def result_record(
    name: str,
    *,
    quick: bool,
    started: float,
    setup: dict[str, Any],
    results: dict[str, Any],
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One benchmark's JSON record; ``started`` is a ``time.monotonic()`` reading."""
    return {
        "benchmark": name,
        "mode": "quick" if quick else "full",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "environment": env if env is not None else environment(),
        "setup": setup,
        "results": results,
    }


def write_result(record: dict[str, Any], output: Path) -> None:
    """Write ``record`` as JSON to ``output`` and show its results."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record["results"], indent=2))
    print(f"wrote {output}")


@contextlib.contextmanager
def lm_server_process(
    *,
    latency: str = "fixed:0",
    text: str = '{"answer": "ok"}',
    rate_limit: float | None = None,
    script: Path | None = None,
    engine: Literal["python", "go"] = "python",
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The benchmark LM server in its own process; yields its ``/v1`` URL and the process.

    ``engine="python"`` is ``bench.lm_server`` (every option); ``"go"`` is its
    fast twin in ``bench/lm_server_go`` (latency and text only), built on first
    use, for benchmarks whose contenders would outrun a Python server.
    """
    root = Path(__file__).resolve().parents[1]
    env = None
    if engine == "go":
        # One OS thread runs Go code: the contenders share this machine's two
        # cores, and a second thread's idle spinning costs CPU they need
        # (measured: ~0.06 ms of server CPU per request with one, ~0.09 with two).
        env = {**os.environ, "GOMAXPROCS": "1"}
        if rate_limit is not None or script is not None:
            raise ValueError("the Go LM server has no rate limit or script")
        command = [str(go_lm_server()), "--port", "0", "--latency", latency, "--text", text]
    else:
        command = [sys.executable, "-m", "bench.lm_server", "--port", "0"]
        command += ["--latency", latency, "--text", text]
        if rate_limit is not None:
            command += ["--rate-limit", str(rate_limit)]
        if script is not None:
            command += ["--script", str(script)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"the LM server exited before printing its port: {command}")
        yield f"http://127.0.0.1:{int(line)}/v1", server
    finally:
        server.terminate()
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def go_lm_server() -> Path:
    """The Go LM server's binary, built (by ``go build``, stdlib only) when missing or stale."""
    source = Path(__file__).resolve().parent / "lm_server_go"
    binary = source / "build" / "lmserver"
    newest = max(path.stat().st_mtime for path in source.glob("*.go"))
    if not binary.exists() or binary.stat().st_mtime < newest:
        try:
            subprocess.run(
                ["go", "build", "-o", str(binary), "."],
                cwd=source,
                check=True,
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            raise RuntimeError("the Go LM server needs Go (`go` on PATH) to build") from None
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"go build of {source} failed:\n{exc.stderr}") from None
    return binary
