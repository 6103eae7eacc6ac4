"""Memory of ``dspex eval`` and of its worker over long runs: does it stay flat?

For each dataset size N the benchmark writes N examples as JSON Lines, starts
one worker (``dspex worker``) against the benchmark LM server
(bench/lm_server.py) answering at once, and runs ``dspex eval`` as a
subprocess, as a user would. Every 0.5 s, and whenever ``dspex eval`` reports
progress on stderr, it reads the resident set size (``VmRSS`` in
``/proc/PID/status``) of the submitter and of the worker along with the
run's progress. Recorded per size: RSS when 10 %, 50 % and 90 % of the
examples were scored, the growth from 10 % to 90 %, the median over that
window, and the peak (``VmHWM``, the kernel's high-water mark, which includes
start-up). Flat memory means the growth from 10 % to 90 % does not scale
with N.

Run: ``python -m bench.eval_memory [--quick] [--output PATH]
[--bootstrap-servers HOST:PORT]`` from the repository root. Without
``--bootstrap-servers`` a private broker is started on free ports. Results:
``bench/results/eval_memory.json`` by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench._common import environment, lm_server_process, parser, result_record, write_result
from bench._deployment import echo_deployment, start_private_broker
from dspex._local.broker import BrokerSettings, KafkaBroker

NAME = "eval_memory"
QUICK_SIZES = (250, 1_000)
FULL_SIZES = (10_000, 100_000)
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


class BenchmarkError(Exception):
    """A run did not do the work asked of it (wrong report, missing samples)."""


@dataclass
class Progress:
    """The latest progress ``dspex eval`` reported, read from its stderr by a thread.

    ``on_progress`` is called after each progress line, while the submitter is
    still running: a sample taken then is sure to see the last line (100 %),
    which a periodic sample may miss when the process exits right after it.
    """

    on_progress: Callable[[int], None]
    done: int = 0
    lines: list[str] = field(default_factory=list)

    def follow(self, stream: TextIO) -> None:
        for line in stream:
            match = _PROGRESS.search(line)
            if match:
                self.done = int(match.group(1))
                self.on_progress(self.done)
            else:
                self.lines.append(line.rstrip())  # anything else: kept for failures


@dataclass(frozen=True)
class Sample:
    at_s: float
    done: int
    submitter_kb: int
    worker_kb: int


@dataclass
class Sampler:
    """Readings of the submitter's and the worker's memory, each with the progress then.

    Called from the sampling loop and from the thread that reads progress.
    """

    submitter_pid: int
    worker_pid: int
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    peak_kb: dict[str, int] = field(default_factory=lambda: {"submitter": 0, "worker": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sample(self, done: int) -> None:
        with self.lock:
            submitter_kb = rss_kb(self.submitter_pid)
            worker_kb = rss_kb(self.worker_pid)
            # The high-water marks, read while the processes still exist.
            for side, pid in (("submitter", self.submitter_pid), ("worker", self.worker_pid)):
                self.peak_kb[side] = max(self.peak_kb[side], rss_kb(pid, "VmHWM") or 0)
            if submitter_kb is not None and worker_kb is not None:
                at_s = time.monotonic() - self.started
                self.samples.append(Sample(at_s, done, submitter_kb, worker_kb))


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
    raise BenchmarkError(f"no sample at {percent}% progress ({len(samples)} samples)")


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
    try:
        submitter = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert submitter.stderr is not None
            assert submitter.stdout is not None
            sampler = Sampler(submitter.pid, worker.pid)
            progress = Progress(on_progress=sampler.sample)
            reader = threading.Thread(target=progress.follow, args=(submitter.stderr,), daemon=True)
            reader.start()
            while submitter.poll() is None:
                sampler.sample(progress.done)
                time.sleep(SAMPLE_EVERY_S)
            report_text = submitter.stdout.read()
            reader.join(timeout=10)
        finally:
            if submitter.poll() is None:
                submitter.kill()
                submitter.wait()
        if submitter.returncode != 0:
            raise BenchmarkError(
                f"dspex eval exited {submitter.returncode}:\n" + "\n".join(progress.lines)
            )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        worker_log.close()
    report = json.loads(report_text)
    if (
        report["examples"] != count
        or report["errors"]
        or abs(report["mean"] - expected_mean) > 1e-9
    ):
        raise BenchmarkError(f"wrong report for {count} examples: {report}")
    samples = sorted(sampler.samples, key=lambda s: s.at_s)
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
        "submitter": side("submitter", sampler.peak_kb["submitter"]),
        "worker": side("worker", sampler.peak_kb["worker"]),
    }


def main_sync(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    started = time.monotonic()
    # The machine may be shared: its load says how far to trust the figures.
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    broker: KafkaBroker | None = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        broker = asyncio.run(start_private_broker(workdir))
        bootstrap = broker.settings.bootstrap_servers
    runs: dict[str, Any] = {}
    try:
        with lm_server_process(latency="fixed:0", text='{"answer": "ok"}') as (lm_url, _):
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
    env = environment(kafka=BrokerSettings().kafka_version)
    env["load_average_1_5_15"] = {
        "start": load_at_start,
        "end": [round(x, 2) for x in os.getloadavg()],
    }
    setup = {
        "sizes": list(sizes),
        "repeats": 1,
        "partitions": PARTITIONS,
        "worker_inflight_limit": INFLIGHT,
        "max_outstanding": MAX_OUTSTANDING,
        "lm": "bench/lm_server.py, 0 ms latency (fixed:0); every question distinct",
        "submitter": "`dspex eval echo DATASET --json` as a subprocess, metric exact_match",
        "sampling": (
            f"VmRSS of submitter and worker every {SAMPLE_EVERY_S} s and at each of the "
            "submitter's stderr progress lines (every 2 s and at the end); peak is VmHWM"
        ),
        "broker": "given" if broker is None else "private, started by the benchmark",
    }
    return result_record(
        NAME, quick=args.quick, started=started, setup=setup, results=runs, env=env
    )


def main() -> None:
    args = parser(
        NAME, __doc__, quick=f"{QUICK_SIZES[0]:,} and {QUICK_SIZES[1]:,} examples", broker=True
    ).parse_args()
    # aiokafka logs a topic created a moment ago as an error; it is not one here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="dspex-bench-") as workdir:
        try:
            record = main_sync(args, Path(workdir))
        except BenchmarkError as exc:
            sys.exit(f"error: {exc}")
    write_result(record, args.output)


if __name__ == "__main__":
    main()
