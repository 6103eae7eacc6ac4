"""The inference-memory benchmark's checks: one result per request, and RSS sampling."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench._rss import Progress, Sample, Sampling, sample_until_exit
from bench.inference_memory import BenchError, check_results, request_id, write_requests


def result(index: int, *, status: str = "ok", outputs: Any = None) -> dict[str, Any]:
    return {
        "request_id": request_id(index),
        "status": status,
        "outputs": {"answer": "ok"} if outputs is None and status == "ok" else outputs,
        "error": None if status == "ok" else {"type": "internal", "message": "boom"},
    }


def write(path: Path, results: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    return path


def test_requests_carry_distinct_ids_and_questions(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    write_requests(path, 300)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 300
    assert len({line["request_id"] for line in lines}) == 300
    assert len({line["inputs"]["question"] for line in lines}) == 300
    assert all(len(line["request_id"]) == 32 for line in lines)


def test_one_ok_result_per_request_passes_in_any_order(tmp_path: Path) -> None:
    path = write(tmp_path / "results.jsonl", [result(i) for i in (2, 0, 3, 1)])
    check_results(path, 4)


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([result(0), result(1), result(1), result(2)], "second result"),
        ([result(0), result(2)], "1 of 3 requests without a result"),
        ([result(0), result(1, status="error"), result(2)], "boom"),
        ([result(0), result(1, outputs={"answer": "no"}), result(2)], "'no'"),
        ([result(0), result(1), result(2), {**result(0), "request_id": "x"}], "unknown"),
        ([result(0), result(1), result(7)], "unknown request"),
    ],
)
def test_anything_but_one_ok_result_per_request_fails(
    tmp_path: Path, results: list[dict[str, Any]], message: str
) -> None:
    path = write(tmp_path / "results.jsonl", results)
    with pytest.raises(BenchError, match=re.escape(message)):
        check_results(path, 3)


def test_profile_reads_rss_where_the_run_reached_each_checkpoint() -> None:
    samples = [
        Sample(at_s=i * 0.5, done=done, rss_kb={"p": kb})
        for i, (done, kb) in enumerate([(0, 1024), (5, 2048), (12, 4096), (55, 5120), (95, 6144)])
    ]
    sampling = Sampling(samples, {"p": 10240}, wall_time_s=2.5)
    profile = sampling.profile("p", total=100)
    assert profile["rss_mb_at_percent"] == {"10": 4.0, "50": 5.0, "90": 6.0}
    assert profile["growth_10_to_90_mb"] == 2.0
    assert profile["median_rss_mb_10_to_90"] == 5.0
    assert profile["peak_rss_mb"] == 10.0
    with pytest.raises(RuntimeError, match="no sample at 90%"):
        Sampling(samples[:4], {"p": 10240}, wall_time_s=2.0).profile("p", total=100)


def test_sampling_follows_a_process_to_its_exit_and_keeps_its_peak() -> None:
    # The child reports progress, holds 64 MB for a while, frees it and exits.
    script = (
        "import time\n"
        "print('done 10', flush=True); time.sleep(1.2)\n"
        "block = b'x' * (64 * 1024 * 1024)\n"
        "print('done 50', flush=True); time.sleep(1.2)\n"
        "del block\n"
        "print('done 95', flush=True); time.sleep(1.2)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    progress = Progress(re.compile(r"done (\d+)"))
    reader = progress.follow(child.stdout)

    sampling = sample_until_exit({"child": child}, until="child", progress=progress, every_s=0.2)

    reader.join(timeout=10)
    child.stdout.close()
    assert child.returncode == 0
    assert [done for _, done in progress.marks] == [10, 50, 95]
    profile = sampling.profile("child", total=100)
    assert profile["peak_rss_mb"] >= 64
    assert profile["rss_mb_at_percent"]["50"] >= 64
    assert profile["rss_mb_at_percent"]["90"] < profile["rss_mb_at_percent"]["50"]
    rate = progress.rate()
    assert rate is not None
    assert rate > 0
