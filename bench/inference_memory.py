"""Memory of a submitter and a worker streaming many requests: does it stay flat?

For each size N the benchmark writes N requests as JSON Lines (each with its
own request id and question) and streams them through the inference channel
as a user with a large batch would: ``dspex submit echo --file REQUESTS
--out RESULTS`` as a process of its own (the CLI over
``DSPExClient.submit_many``: requests read lazily, at most ``--max-in-flight``
unanswered, each result written out as it arrives, none kept), against one
fresh ``dspex worker`` process and ``bench.lm_server`` answering
``{"answer": "ok"}`` at once. The worker's LM response cache is off
(``temperature: null``: only deterministic calls are cached), so the worker's
memory is not a cache filling up. Every 0.5 s, and at each progress line
the submitter writes on stderr, the resident set size of the submitter and
of the worker is read with that progress (``bench._rss``). Recorded per size
and process: RSS at every 10 % of the results from 10 to 90 %, the growth
from 10 to 90 %, the peak, and requests/s; then per process the ratio of the
peaks, largest size over smallest (flat memory: near 1). Every request
must get exactly one result, ``ok`` with the LM's answer, or the benchmark
exits non-zero.

The client remembers the ids of the last ``dedupe_window`` (100,000) results
it delivered, to count duplicates: the submitter's memory grows with that
set until it is full, and is flat from there on.

Run: ``python -m bench.inference_memory [--quick] [--output PATH]
[--bootstrap-servers HOST:PORT]`` from the repository root. Without
``--bootstrap-servers`` a private broker is started on free ports. Results:
``bench/results/inference_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench._common import (
    environment,
    lm_server_process,
    load_average,
    parser,
    result_record,
    summary,
    write_result,
)
from bench._deployment import echo_deployment, start_private_broker
from bench._rss import Progress, sample_until_exit
from dspex._local.broker import BrokerSettings, KafkaBroker

NAME = "inference_memory"
PARTITIONS = 4
INFLIGHT = 64
#: ``dspex submit --max-in-flight``: the client's own default for ``submit_many``.
MAX_IN_FLIGHT = 1000
#: ``dspex submit --timeout``: long enough for a worker still starting up.
TIMEOUT_S = 300
SAMPLE_EVERY_S = 0.5
#: Progress points (percent of results in) at which RSS is recorded: 10 % to 90 %.
PERCENTS = tuple(range(10, 100, 10))
#: The processes measured.
SIDES = ("submitter", "worker")
ANSWER = {"answer": "ok"}
#: ``dspex submit``'s progress line: "submitted 1200, done 1100, errors 0".
_DONE = re.compile(r"submitted \d+, done (\d+), errors \d+")


class BenchError(RuntimeError):
    """The run did not do the work it was meant to: no figure can be recorded."""


def request_id(index: int) -> str:
    """Request ``index``'s id: 32 hex digits, like the ids the client makes itself."""
    return f"{index:032x}"


def write_requests(path: Path, count: int) -> None:
    """``count`` requests for ``dspex submit --file``, each a distinct question."""
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            inputs = {"question": f"question {index}"}
            out.write(json.dumps({"inputs": inputs, "request_id": request_id(index)}) + "\n")


def check_results(path: Path, count: int) -> None:
    """Exactly one result per request, each ``ok`` with the LM's answer; else BenchError."""
    seen = bytearray(count)
    problems: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            result = json.loads(line)
            try:
                index = int(result["request_id"], 16)
            except ValueError:
                index = -1
            if not 0 <= index < count or result["request_id"] != request_id(index):
                problems.append(f"a result for an unknown request {result['request_id']!r}")
            elif seen[index]:
                problems.append(f"a second result for request {result['request_id']}")
            elif result["status"] != "ok" or result.get("outputs") != ANSWER:
                problems.append(f"request {result['request_id']}: {result.get('error') or result}")
            if 0 <= index < count:
                seen[index] = 1
            if len(problems) >= 5:
                break
    missing = count - sum(seen)
    if missing and len(problems) < 5:
        problems.append(f"{missing} of {count} requests without a result")
    if problems:
        raise BenchError(f"{count} requests: " + "; ".join(problems))


def cache_off(topology: Path) -> None:
    """Rewrite a topology so that its LM does not cache (only temperature 0 calls are cached)."""
    config = yaml.safe_load(topology.read_text(encoding="utf-8"))
    for endpoint in config["lms"].values():
        endpoint["temperature"] = None
    topology.write_text(yaml.safe_dump(config), encoding="utf-8")


def run_one(bootstrap: str, lm_url: str, count: int, workdir: Path) -> dict[str, Any]:
    """Stream ``count`` requests through one fresh worker; the memory and rate figures."""
    prefix = f"infm{uuid.uuid4().hex[:6]}"
    topology = asyncio.run(
        echo_deployment(
            bootstrap, lm_url, prefix, workdir, partitions=PARTITIONS, inflight=INFLIGHT
        )
    )
    cache_off(topology)
    requests, results = workdir / f"{prefix}-requests.jsonl", workdir / f"{prefix}-results.jsonl"
    write_requests(requests, count)
    submit = [
        *(sys.executable, "-m", "dspex", "submit", "echo", "--file", str(requests)),
        *("--out", str(results), "--bootstrap-servers", bootstrap, "--prefix", prefix),
        *("--max-in-flight", str(MAX_IN_FLIGHT), "--timeout", str(TIMEOUT_S)),
    ]
    progress = Progress(_DONE)
    worker_log_path = workdir / f"{prefix}-worker.log"
    with worker_log_path.open("w", encoding="utf-8") as worker_log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", prefix],
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        try:
            launched = time.monotonic()
            submitter = subprocess.Popen(submit, stderr=subprocess.PIPE, text=True)
            try:
                assert submitter.stderr is not None
                reader = progress.follow(submitter.stderr)
                sampling = sample_until_exit(
                    {"submitter": submitter, "worker": worker},
                    until="submitter",
                    progress=progress,
                    every_s=SAMPLE_EVERY_S,
                )
                reader.join(timeout=10)
                submitter.stderr.close()
            finally:
                if submitter.poll() is None:
                    submitter.kill()
                    submitter.wait()
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    if submitter.returncode != 0:
        raise BenchError(
            f"dspex submit exited {submitter.returncode} on {count} requests "
            f"(worker log: {worker_log_path}):\n" + "\n".join(progress.lines[-20:])
        )
    check_results(results, count)
    results.unlink()
    requests.unlink()
    rate = progress.rate()
    try:
        profiles = {side: sampling.profile(side, count, PERCENTS) for side in SIDES}
    except RuntimeError as exc:  # the run was too short for the sampling interval
        raise BenchError(f"{count} requests: {exc}") from exc
    return {
        "requests": count,
        "wall_time_s": round(sampling.wall_time_s, 1),
        "requests_per_s": round(rate, 1) if rate is not None else None,
        # Start-up: both processes, the submitter's check of its file, the worker joining.
        "first_result_s": round(progress.marks[0][0] - launched, 1) if progress.marks else None,
        "samples": len(sampling.samples),
        **profiles,
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's runs as medians with min/max, and the runs themselves."""

    def over(*keys: str) -> dict[str, float]:
        values: list[float] = []
        for run in runs:
            value: Any = run
            for key in keys:
                value = value[key]
            values.append(value)
        return summary(values, digits=1)

    rates = [run["requests_per_s"] for run in runs if run["requests_per_s"] is not None]
    figures: dict[str, Any] = {
        "requests": runs[0]["requests"],
        "repeats": len(runs),
        "requests_per_s": summary(rates, digits=1) if rates else None,
        "wall_time_s": over("wall_time_s"),
        "first_result_s": over("first_result_s"),
    }
    for side in SIDES:
        figures[side] = {
            "peak_rss_mb": over(side, "peak_rss_mb"),
            "rss_mb_at_percent": {
                str(p): over(side, "rss_mb_at_percent", str(p)) for p in PERCENTS
            },
            "growth_10_to_90_mb": over(side, "growth_10_to_90_mb"),
            "median_rss_mb_10_to_90": over(side, "median_rss_mb_10_to_90"),
        }
    figures["runs"] = runs
    return figures


def measure(
    bootstrap: str, lm_url: str, sizes: tuple[int, ...], repeats: dict[int, int], workdir: Path
) -> dict[str, list[dict[str, Any]]]:
    """Every run of every size, smallest and largest alternating which goes first."""
    runs: dict[str, list[dict[str, Any]]] = {str(size): [] for size in sizes}
    for repeat in range(max(repeats.values())):
        order = sizes if repeat % 2 == 0 else tuple(reversed(sizes))
        for size in order:
            if repeat >= repeats[size]:
                continue
            run = run_one(bootstrap, lm_url, size, workdir)
            runs[str(size)].append(run)
            print(
                f"repeat {repeat}, {size} requests: {run['requests_per_s']}/s in "
                f"{run['wall_time_s']} s; peak RSS submitter "
                f"{run['submitter']['peak_rss_mb']} MB, worker {run['worker']['peak_rss_mb']} MB",
                flush=True,
            )
    return runs


def main_sync(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    load_start = load_average()
    sizes = (1_000, 3_000) if args.quick else (10_000, 200_000)
    # Full mode: one pass of 200,000 requests takes most of the run, so it is
    # measured once, with a pass of 10,000 before it and one after it.
    repeats = {1_000: 1, 3_000: 1} if args.quick else {10_000: 2, 200_000: 1}
    workdir = Path(tempfile.mkdtemp(prefix="dspex-bench-"))
    broker: KafkaBroker | None = None
    bootstrap = args.bootstrap_servers
    try:
        if bootstrap is None:
            broker = asyncio.run(start_private_broker(workdir))
            bootstrap = broker.settings.bootstrap_servers
        with lm_server_process(latency="fixed:0", text=json.dumps(ANSWER)) as (lm_url, _):
            runs = measure(bootstrap, lm_url, sizes, repeats, workdir)
    finally:
        if broker is not None:
            broker.stop()
    # Kept when the run failed: the worker logs are there.
    shutil.rmtree(workdir, ignore_errors=True)
    by_size = {size: combine(found) for size, found in runs.items()}
    small, large = by_size[str(sizes[0])], by_size[str(sizes[-1])]
    env = environment(load_at_start=load_start, kafka=BrokerSettings().kafka_version)
    # The machine may be shared: its load says how far to trust the figures.
    return result_record(
        NAME,
        quick=args.quick,
        started=started,
        env=env,
        setup={
            "sizes": list(sizes),
            "repeats": {str(size): count for size, count in repeats.items()},
            "repeats_why": (
                "one pass of the largest size takes most of the run's time (requests/s "
                "times size), so it is measured once; in full mode the smallest size runs "
                "once before it and once after it"
            ),
            "order": "smallest, largest, then smallest again (full); smallest, largest (quick)",
            "partitions": PARTITIONS,
            "worker_inflight_limit": INFLIGHT,
            "workers": 1,
            "max_in_flight": MAX_IN_FLIGHT,
            "submit_timeout_s": TIMEOUT_S,
            "lm": 'bench.lm_server, fixed 0 ms latency, text {"answer": "ok"}',
            "lm_cache": "off (temperature: null in the topology's LM endpoint)",
            "program": 'echo: Predict("question -> answer", JSONAdapter), registered',
            "submitter": (
                "`dspex submit echo --file REQUESTS --out RESULTS` as its own process "
                "(DSPExClient.submit_many: requests read lazily, results written as they "
                "arrive); every request a distinct question with its own 32-hex-digit id"
            ),
            "worker": "one `dspex worker TOPOLOGY` process, fresh for every run",
            "sampling": (
                f"VmRSS of submitter and worker every {SAMPLE_EVERY_S} s and at each progress "
                "line of the submitter (stderr, every 0.5 s); peak: VmHWM, and the submitter's "
                "ru_maxrss when reaped; RSS 'at N %' is the first sample once N % of the "
                "results were in"
            ),
            "requests_per_s": "from the submitter's first progress line to its last",
            "check": 'every request exactly one result, status ok, outputs {"answer": "ok"}',
        },
        results={
            "sizes": by_size,
            "peak_ratio_largest_to_smallest": {
                side: round(
                    large[side]["peak_rss_mb"]["median"] / small[side]["peak_rss_mb"]["median"], 3
                )
                for side in SIDES
            },
            "peak_difference_mb_largest_minus_smallest": {
                side: round(
                    large[side]["peak_rss_mb"]["median"] - small[side]["peak_rss_mb"]["median"], 1
                )
                for side in SIDES
            },
        },
    )


def main() -> None:
    args = parser(
        NAME, __doc__, quick="1,000 and 3,000 requests, once each", broker=True
    ).parse_args()
    # On SIGTERM, unwind: the finally blocks stop the submitter, worker, LM server and broker.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # aiokafka logs a topic created a moment ago as an error; it is not one here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        record = main_sync(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    write_result(record, args.output)


if __name__ == "__main__":
    main()
