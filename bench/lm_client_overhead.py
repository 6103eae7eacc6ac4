"""What the LM client's pipeline costs on top of a bare HTTP call.

Both sides talk to the same benchmark LM server (bench/lm_server.py), run in
its own process so its CPU does not compete with the client's, with 0 ms
latency, so everything measured is client-side overhead:

* per-call cost at concurrency 1 (wall time, and CPU time of the client
  process): ``OpenAIChat.acomplete`` (cache off,
  circuit breaker on, rate limiter on with limits far above what is reached,
  default retry policy) against ``httpx.AsyncClient.post`` + ``response.json()``
  with the same body and the same connection-pool size;
* requests per second at concurrency 1, 64 and 512.

Per-call samples interleave the two sides batch by batch; throughput runs
alternate which side goes first. A warm-up round is run first and discarded.
Overhead is the median of paired batch differences. Reported: median, min and
max over repeats. Both sides must make as many calls, each one request (no
retries, checked against the server's count) answered with the server's text;
otherwise the run fails.

Run: ``python -m bench.lm_client_overhead [--quick] [--output PATH]`` from the
repository root. Writes ``bench/results/lm_client_overhead.json`` by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench._common import (
    environment,
    lm_server_process,
    load_average,
    parser,
    result_record,
    summary,
    write_result,
)
from bench.scripted_lm import DEFAULT_TEXT
from dspex.programs.lm import (
    CircuitBreakerPolicy,
    Message,
    OpenAIChat,
    RateLimit,
)

# environment and summary stay importable from here, as they were before bench._common.
__all__ = ["FULL", "QUICK", "environment", "main", "run", "summary"]

NAME = "lm_client_overhead"
MAX_CONNECTIONS = 100
MODEL = "bench-model"
BATCH = 25

SIDES = ("bare_httpx", "openai_chat")

Call = Callable[[int], Awaitable[None]]


class BenchmarkError(Exception):
    """The two sides did not do the same work."""


@dataclass(frozen=True)
class Plan:
    repeats: int
    latency_calls: int  # sequential calls per side per repeat
    throughput_calls: dict[int, int]
    warmup_calls: int  # per side at concurrency 64 before the first repeat, discarded


QUICK = Plan(
    repeats=3, latency_calls=200, throughput_calls={1: 200, 64: 300, 512: 512}, warmup_calls=300
)
FULL = Plan(
    repeats=5,
    latency_calls=1000,
    throughput_calls={1: 1000, 64: 2000, 512: 2048},
    warmup_calls=500,
)


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


@dataclass
class Tally:
    """Calls each side made and answers that were not the server's text.

    Checked at the end against the server's own count: both sides must have
    done the same work, one request per call (no retries) and the right answer.
    """

    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
    wrong: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))

    def count(self, side: str, text: str) -> None:
        self.calls[side] += 1
        if text != DEFAULT_TEXT:
            self.wrong[side] += 1


@contextlib.asynccontextmanager
async def fresh_sides(url: str, tally: Tally) -> AsyncIterator[dict[str, Call]]:
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
            tally.count("bare_httpx", response.json()["choices"][0]["message"]["content"])

        async def client(index: int) -> None:
            tally.count("openai_chat", (await lm.acomplete(messages(index))).text)

        yield {"bare_httpx": bare, "openai_chat": client}


async def check_same_work(url: str, tally: Tally) -> None:
    """Raise unless both sides made as many calls, each one request with the right answer."""
    async with httpx.AsyncClient() as http:
        response = await http.get(url.removesuffix("/v1") + "/stats")
        response.raise_for_status()
        served = int(response.json()["served"])
    made = sum(tally.calls.values())
    if tally.calls["bare_httpx"] != tally.calls["openai_chat"] or served != made:
        raise BenchmarkError(
            f"the sides made {tally.calls} calls and the server served {served} requests"
        )
    if any(tally.wrong.values()):
        raise BenchmarkError(f"answers other than the server's text: {tally.wrong}")


async def run(plan: Plan, url: str) -> dict[str, Any]:
    names = list(SIDES)
    tally = Tally()
    async with fresh_sides(url, tally) as sides:  # warm-up: imports and code paths; discarded
        for call in sides.values():
            await throughput(call, plan.warmup_calls, 64)

    per_call: dict[str, dict[str, list[float]]] = {
        name: {"wall_us": [], "cpu_us": []} for name in [*names, "overhead"]
    }
    rates: dict[int, dict[str, list[float]]] = {
        c: {name: [] for name in names} for c in plan.throughput_calls
    }
    for repeat in range(plan.repeats):
        async with fresh_sides(url, tally) as sides:
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
                async with fresh_sides(url, tally) as sides:
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
    await check_same_work(url, tally)
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


def main() -> None:
    args = parser(
        NAME,
        __doc__,
        quick=(
            f"{QUICK.repeats} repeats of {QUICK.latency_calls} sequential calls and "
            f"{', '.join(f'{n} calls at c={c}' for c, n in QUICK.throughput_calls.items())}"
        ),
    ).parse_args()
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    # The machine may be shared: its load says how far to trust the figures.
    load_at_start = load_average()
    with lm_server_process(latency="fixed:0", text=DEFAULT_TEXT) as (url, _):
        try:
            results = asyncio.run(run(plan, url))
        except BenchmarkError as exc:
            sys.exit(f"error: {exc}")
    env = environment(load_at_start=load_at_start)
    setup = {
        "server": "bench/lm_server.py in its own process, 0 ms latency (fixed:0)",
        "max_connections": MAX_CONNECTIONS,
        "repeats": plan.repeats,
        "sequential_calls_per_repeat": plan.latency_calls,
        "throughput_calls_per_repeat": plan.throughput_calls,
        "warmup_calls": plan.warmup_calls,
        "openai_chat": "cache off; breaker on; limiter on (1e9 rpm, 1e12 tpm); default retry",
        "bare_httpx": ("AsyncClient.post(json=...) + response.json() and its text, same pool size"),
    }
    record = result_record(
        NAME, quick=args.quick, started=started, setup=setup, results=results, env=env
    )
    write_result(record, args.output)


if __name__ == "__main__":
    main()
