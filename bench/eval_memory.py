"""Memory of ``dspex eval`` and of its worker over long runs: does it stay flat?

For each dataset size N the benchmark writes N examples as JSON Lines, starts
one worker (``dspex worker``) against a scripted LM that answers at once, and
runs ``dspex eval`` as a subprocess, as a user would. Every 0.5 s it reads the
resident set size (``VmRSS`` in ``/proc/PID/status``) of the submitter and of
the worker, and the run's progress from the progress lines ``dspex eval``
writes on stderr. Recorded per size: RSS when 10 %, 50 % and 90 % of the
examples were scored, the growth from 10 % to 90 %, the median over that
window, and the peak (``VmHWM``, the kernel's high-water mark, which includes
start-up). Flat memory means the growth from 10 % to 90 % does not scale
with N.

Run: ``python -m bench.eval_memory [--quick] [--bootstrap-servers HOST:PORT]``
from the repository root. Without ``--bootstrap-servers`` a private broker is
started on free ports. Results: ``bench/results/eval_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import dspex
from bench._deployment import echo_deployment, start_private_broker
from dspex._local.broker import BrokerSettings, KafkaBroker
from tests.support.deployment import scripted_lm_process

RESULTS = Path(__file__).parent / "results" / "eval_memory.json"
PARTITIONS = 4
INFLIGHT = 64
MAX_OUTSTANDING = 1000
SAMPLE_EVERY_S = 0.5
#: Progress points (percent of examples scored) at which RSS is reported.
CHECKPOINTS = (10, 50, 90)
#: ``dspex eval``'s progress line: "1234/100000 (1%)  mean ...".
_PROGRESS = re.compile(r"(\d+)/(\d+) \(")


def rss_kb(pid: int, key: str = "VmRSS") -> int | None:
    """A ``/proc/PID/status`` memory figure in kB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Progress:
    """The latest progress ``dspex eval`` reported, read from its stderr by a thread."""

    done: int = 0
    lines: list[str] = field(default_factory=list)

    def follow(self, stream: TextIO) -> None:
        for line in stream:
            match = _PROGRESS.search(line)
            if match:
                self.done = int(match.group(1))
            else:
                self.lines.append(line.rstrip())  # anything else: kept for failures


@dataclass(frozen=True)
class Sample:
    at_s: float
    done: int
    submitter_kb: int
    worker_kb: int


def write_dataset(path: Path, count: int) -> float:
    """``count`` distinct questions, every other one answered "ok"; the mean that implies."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            answer = "ok" if i % 2 else "no"
            out.write(json.dumps({"question": f"question {i}", "answer": answer}) + "\n")
    return (count // 2) / count


def at_progress(samples: list[Sample], total: int, percent: int) -> Sample:
    """The first sample taken once ``percent`` of the examples were scored."""
    for sample in samples:
        if sample.done * 100 >= percent * total:
            return sample
    raise RuntimeError(f"no sample at {percent}% progress ({len(samples)} samples)")


def mb(kb: float) -> float:
    return round(kb / 1024, 1)


def run_one(bootstrap: str, lm_url: str, count: int, workdir: Path) -> dict[str, Any]:
    """One ``dspex eval`` run of ``count`` examples against one fresh worker."""
    prefix = f"evm{uuid.uuid4().hex[:6]}"
    topology = asyncio.run(
        echo_deployment(
            bootstrap, lm_url, prefix, workdir, partitions=PARTITIONS, inflight=INFLIGHT
        )
    )
    dataset = workdir / f"{prefix}.jsonl"
    expected_mean = write_dataset(dataset, count)
    worker_log = (workdir / f"{prefix}-worker.log").open("w", encoding="utf-8")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", prefix],
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    command = [
        *(sys.executable, "-m", "dspex", "eval", "echo", str(dataset)),
        *("--bootstrap-servers", bootstrap, "--prefix", prefix, "--json"),
        *("--max-outstanding", str(MAX_OUTSTANDING), "--idle-timeout", "120"),
    ]
    progress = Progress()
    samples: list[Sample] = []
    try:
        started = time.monotonic()
        submitter = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert submitter.stderr is not None
        assert submitter.stdout is not None
        reader = threading.Thread(target=progress.follow, args=(submitter.stderr,), daemon=True)
        reader.start()
        peak_submitter = peak_worker = 0
        while submitter.poll() is None:
            submitter_kb = rss_kb(submitter.pid)
            worker_kb = rss_kb(worker.pid)
            # The high-water marks, read while the processes still exist.
            peak_submitter = max(peak_submitter, rss_kb(submitter.pid, "VmHWM") or 0)
            peak_worker = max(peak_worker, rss_kb(worker.pid, "VmHWM") or 0)
            if submitter_kb is not None and worker_kb is not None:
                samples.append(
                    Sample(time.monotonic() - started, progress.done, submitter_kb, worker_kb)
                )
            time.sleep(SAMPLE_EVERY_S)
        report_text = submitter.stdout.read()
        reader.join(timeout=10)
        if submitter.returncode != 0:
            raise RuntimeError(
                f"dspex eval exited {submitter.returncode}:\n" + "\n".join(progress.lines)
            )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        worker_log.close()
    report = json.loads(report_text)
    if report["examples"] != count or abs(report["mean"] - expected_mean) > 1e-9:
        raise RuntimeError(f"wrong report for {count} examples: {report}")
    marks = {percent: at_progress(samples, count, percent) for percent in CHECKPOINTS}
    first, last = marks[CHECKPOINTS[0]], marks[CHECKPOINTS[-1]]
    window = [s for s in samples if first.at_s <= s.at_s <= last.at_s]

    def side(name: str, peak_kb: int) -> dict[str, Any]:
        def of(sample: Sample) -> int:
            return sample.submitter_kb if name == "submitter" else sample.worker_kb

        return {
            "rss_mb_at_percent": {str(p): mb(of(s)) for p, s in marks.items()},
            "growth_10_to_90_mb": mb(of(last) - of(first)),
            "median_rss_mb_10_to_90": mb(statistics.median(of(s) for s in window)),
            "peak_rss_mb": mb(peak_kb),
        }

    return {
        "examples": count,
        "mean_score": report["mean"],
        "errors": report["errors"],
        "wall_time_s": round(report["wall_time_s"], 1),
        "examples_per_s": round(report["examples_per_s"], 1),
        "samples": len(samples),
        "submitter": side("submitter", peak_submitter),
        "worker": side("worker", peak_worker),
    }


def main_sync(args: argparse.Namespace) -> dict[str, Any]:
    sizes = (1_000, 4_000) if args.quick else (10_000, 100_000)
    workdir = Path(tempfile.mkdtemp(prefix="dspex-bench-"))
    broker: KafkaBroker | None = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        broker = asyncio.run(start_private_broker(workdir))
        bootstrap = broker.settings.bootstrap_servers
    runs: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with scripted_lm_process(text='{"answer": "ok"}') as lm_url:
            for count in sizes:
                runs[str(count)] = result = run_one(bootstrap, lm_url, count, workdir)
                print(
                    f"{count} examples in {result['wall_time_s']} s: submitter "
                    f"{result['submitter']['rss_mb_at_percent']} MB, worker "
                    f"{result['worker']['rss_mb_at_percent']} MB at {list(CHECKPOINTS)} %",
                    flush=True,
                )
    finally:
        if broker is not None:
            broker.stop()
    return {
        "benchmark": "eval_memory",
        "mode": "quick" if args.quick else "full",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "versions": {"dspex": dspex.__version__, "kafka": BrokerSettings().kafka_version},
        },
        "setup": {
            "sizes": list(sizes),
            "repeats": 1,
            "partitions": PARTITIONS,
            "worker_inflight_limit": INFLIGHT,
            "max_outstanding": MAX_OUTSTANDING,
            "lm": "scripted loopback server, 0 ms latency; every question distinct",
            "submitter": "`dspex eval echo DATASET --json` as a subprocess, metric exact_match",
            "sampling": (
                f"VmRSS of submitter and worker every {SAMPLE_EVERY_S} s; progress from the "
                "submitter's stderr progress lines (every 2 s); peak is VmHWM"
            ),
        },
        "results": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1,000 and 4,000 examples")
    parser.add_argument("--bootstrap-servers", help="use this broker instead of a private one")
    args = parser.parse_args()
    # aiokafka logs a topic created a moment ago as an error; it is not one here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    result = main_sync(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["results"], indent=2))


if __name__ == "__main__":
    main()
