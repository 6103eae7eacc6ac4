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
start-up; for the submitter also its ``ru_maxrss`` as it exits). Sampling is
``bench._rss``. Flat memory means the growth from 10 % to 90 % does not scale
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
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._common import (
    environment,
    lm_server_process,
    load_average,
    parser,
    result_record,
    write_result,
)
from bench._deployment import echo_deployment, start_private_broker
from bench._rss import CHECKPOINTS, Progress, sample_until_exit
from dspex._local.broker import BrokerSettings, KafkaBroker

NAME = "eval_memory"
QUICK_SIZES = (250, 1_000)
FULL_SIZES = (10_000, 100_000)
PARTITIONS = 4
INFLIGHT = 64
MAX_OUTSTANDING = 1000
SAMPLE_EVERY_S = 0.5
#: The processes measured.
SIDES = ("submitter", "worker")
#: ``dspex eval``'s progress line: "1234/100000 (1%)  mean ...".
_PROGRESS = re.compile(r"(\d+)/(\d+) \(")


class BenchmarkError(Exception):
    """A run did not do the work asked of it (wrong report, missing samples)."""


def write_dataset(path: Path, count: int) -> float:
    """``count`` distinct questions, every other one answered "ok"; the mean that implies."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            answer = "ok" if i % 2 else "no"
            out.write(json.dumps({"question": f"question {i}", "answer": answer}) + "\n")
    return (count // 2) / count


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
            progress = Progress(_PROGRESS)
            reader = progress.follow(submitter.stderr)
            sampling = sample_until_exit(
                {"submitter": submitter, "worker": worker},
                until="submitter",
                progress=progress,
                every_s=SAMPLE_EVERY_S,
            )
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
    try:
        profiles = {side: sampling.profile(side, count, CHECKPOINTS) for side in SIDES}
    except RuntimeError as exc:  # no sample at a checkpoint
        raise BenchmarkError(str(exc)) from exc
    return {
        "examples": count,
        "mean_score": report["mean"],
        "errors": report["errors"],
        "wall_time_s": round(report["wall_time_s"], 1),
        "examples_per_s": round(report["examples_per_s"], 1),
        "samples": len(sampling.samples),
        **profiles,
    }


def main_sync(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    started = time.monotonic()
    # The machine may be shared: its load says how far to trust the figures.
    load_at_start = load_average()
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
    env = environment(load_at_start=load_at_start, kafka=BrokerSettings().kafka_version)
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
            "submitter's stderr progress lines (every 2 s and at the end); peak is VmHWM "
            "(and the submitter's ru_maxrss at exit)"
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
