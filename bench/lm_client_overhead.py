"""What the LM client's pipeline costs on top of a bare HTTP call.

Both sides talk to the same scripted LM server (tests/support/scripted_lm.py),
run in its own process so its CPU does not compete with the client's, with
0 ms latency, so everything measured is client-side overhead:

* per-call cost at concurrency 1 (wall time, and CPU time of the client
  process): ``OpenAIChat.acomplete`` (cache off,
  circuit breaker on, rate limiter on with limits far above what is reached,
  default retry policy) against ``httpx.AsyncClient.post`` + ``response.json()``
  with the same body and the same connection-pool size;
* requests per second at concurrency 1, 64 and 512.

Per-call samples interleave the two sides batch by batch; throughput runs
alternate which side goes first. A warm-up round is run first and discarded.
Overhead is the median of paired batch differences. Reported: median, min and
max over repeats.

Run: ``python -m bench.lm_client_overhead [--quick]`` from the repository root.
Writes ``bench/results/lm_client_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from dspex.programs.lm import (
    CircuitBreakerPolicy,
    Message,
    OpenAIChat,
    RateLimit,
)

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "lm_client_overhead.json"
MAX_CONNECTIONS = 100
MODEL = "bench-model"
BATCH = 25

Call = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    repeats: int
    latency_calls: int  # sequential calls per side per repeat
    throughput_calls: dict[int, int]


QUICK = Plan(repeats=3, latency_calls=300, throughput_calls={1: 300, 64: 600, 512: 800})
FULL = Plan(repeats=5, latency_calls=1000, throughput_calls={1: 1000, 64: 2000, 512: 2048})


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        # Not "-m tests.support.scripted_lm": the package imports the module first.
        [sys.executable, "-c", "from tests.support.scripted_lm import main; main()", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"http://127.0.0.1:{port}/v1"


def messages(index: int) -> list[Message]:
    return [Message(role="user", content=f"Question number {index}?")]


def bare_body(index: int) -> dict[str, Any]:
    # What OpenAIChat sends for the same call, so both sides move the same bytes.
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Question number {index}?"}],
        "temperature": 0.0,
    }


@dataclass
class PerCall:
    """Per-call cost samples of one side, one sample per batch."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)


async def per_call_costs(sides: dict[str, Call], calls: int) -> dict[str, PerCall]:
    """Wall time and client CPU time per sequential call, sides interleaved by batch.

    CPU time of this process is the honest overhead figure: the server runs in
    another process, so waiting for it costs wall time but no CPU here, and
    background load on a shared machine inflates wall time far more than CPU
    time. Batches alternate sides (ABBA...) so drifting load hits both alike.
    """
    names = list(sides)
    costs = {name: PerCall() for name in names}
    index = 0
    for batch in range(max(calls // BATCH, 1)):
        for name in names if batch % 2 == 0 else reversed(names):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(BATCH):
                await sides[name](index)
                index += 1
            costs[name].wall_s.append((time.perf_counter() - wall) / BATCH)
            costs[name].cpu_s.append((time.process_time() - cpu) / BATCH)
    return costs


async def throughput(call: Call, calls: int, concurrency: int) -> float:
    next_index = iter(range(calls))

    async def worker() -> None:
        for index in next_index:
            await call(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started)


def summary(values: list[float], scale: float = 1.0) -> dict[str, float]:
    return {
        "median": round(statistics.median(values) * scale, 3),
        "min": round(min(values) * scale, 3),
        "max": round(max(values) * scale, 3),
    }


@contextlib.asynccontextmanager
async def fresh_sides(url: str) -> AsyncIterator[dict[str, Call]]:
    """Both sides with new, empty connection pools.

    Every phase starts from fresh pools: httpcore checks each idle pooled
    connection on every request, so a side left with more idle connections by
    the previous phase would pay for it here and skew the comparison.
    """
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
    )
    async with (
        httpx.AsyncClient(limits=limits, timeout=60) as http,
        OpenAIChat(
            model=MODEL,
            base_url=url,
            cache=None,
            circuit_breaker=CircuitBreakerPolicy(),
            rate_limit=RateLimit(requests_per_minute=1e9, tokens_per_minute=1e12),
            max_connections=MAX_CONNECTIONS,
        ) as lm,
    ):

        async def bare(index: int) -> None:
            response = await http.post(f"{url}/chat/completions", json=bare_body(index))
            response.raise_for_status()
            response.json()

        async def client(index: int) -> None:
            await lm.acomplete(messages(index))

        yield {"bare_httpx": bare, "openai_chat": client}


async def run(plan: Plan, url: str) -> dict[str, Any]:
    names = ["bare_httpx", "openai_chat"]
    async with fresh_sides(url) as sides:  # warm-up: imports and code paths; discarded
        for call in sides.values():
            await throughput(call, 500, 64)

    per_call: dict[str, dict[str, list[float]]] = {
        name: {"wall_us": [], "cpu_us": []} for name in [*names, "overhead"]
    }
    rates: dict[int, dict[str, list[float]]] = {
        c: {name: [] for name in names} for c in plan.throughput_calls
    }
    for repeat in range(plan.repeats):
        async with fresh_sides(url) as sides:
            await per_call_costs(sides, 2 * BATCH)  # warm: one open connection each
            costs = await per_call_costs(sides, plan.latency_calls)
        for name, cost in costs.items():
            per_call[name]["wall_us"].append(statistics.median(cost.wall_s) * 1e6)
            per_call[name]["cpu_us"].append(statistics.median(cost.cpu_s) * 1e6)
        bare_cost, lm_cost = costs["bare_httpx"], costs["openai_chat"]
        for unit, lm_samples, bare_samples in (
            ("wall_us", lm_cost.wall_s, bare_cost.wall_s),
            ("cpu_us", lm_cost.cpu_s, bare_cost.cpu_s),
        ):
            paired = [a - b for a, b in zip(lm_samples, bare_samples, strict=True)]
            per_call["overhead"][unit].append(statistics.median(paired) * 1e6)
        order = names if repeat % 2 == 0 else list(reversed(names))
        for concurrency, calls in plan.throughput_calls.items():
            for name in order:
                async with fresh_sides(url) as sides:
                    # Warm: open the connections this concurrency needs, then measure.
                    await throughput(sides[name], min(2 * concurrency, 200), concurrency)
                    rates[concurrency][name].append(
                        await throughput(sides[name], calls, concurrency)
                    )
        print(
            f"repeat {repeat + 1}/{plan.repeats}: overhead "
            f"{per_call['overhead']['cpu_us'][-1]:.0f} us CPU, "
            f"{per_call['overhead']['wall_us'][-1]:.0f} us wall per call; "
            + ", ".join(
                f"c={c}: {rates[c]['openai_chat'][-1]:.0f} vs "
                f"{rates[c]['bare_httpx'][-1]:.0f} req/s"
                for c in plan.throughput_calls
            ),
            flush=True,
        )
    return {
        "per_call_concurrency_1": {
            name: {unit: summary(values) for unit, values in units.items()}
            for name, units in per_call.items()
        },
        "requests_per_second": {
            str(c): {
                **{name: summary(values) for name, values in by_side.items()},
                "openai_chat_over_bare": summary(
                    [
                        lm_rate / bare_rate
                        for lm_rate, bare_rate in zip(
                            by_side["openai_chat"], by_side["bare_httpx"], strict=True
                        )
                    ]
                ),
            }
            for c, by_side in rates.items()
        },
    }


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("dspex", "httpx", "httpcore", "pydantic", "purgatory"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats (< 2 min)")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    server, url = start_server()
    started = time.perf_counter()
    try:
        results = asyncio.run(run(plan, url))
    finally:
        server.terminate()
        server.wait(timeout=10)
    report = {
        "benchmark": "lm_client_overhead",
        "mode": "quick" if args.quick else "full",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.perf_counter() - started, 1),
        "environment": environment(),
        "setup": {
            "server": "tests/support/scripted_lm.py in its own process, 0 ms latency",
            "max_connections": MAX_CONNECTIONS,
            "repeats": plan.repeats,
            "sequential_calls_per_repeat": plan.latency_calls,
            "throughput_calls_per_repeat": plan.throughput_calls,
            "openai_chat": "cache off; breaker on; limiter on (1e9 rpm, 1e12 tpm); default retry",
            "bare_httpx": "AsyncClient.post(json=...) + response.json(), same pool size",
        },
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
