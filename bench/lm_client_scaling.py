"""LM client throughput as concurrency rises, at 100 ms LM latency.

Three contenders call the same benchmark LM server (bench/lm_server.py, its
own process, every answer after 100 ms), each with a fresh pool sized to the
concurrency, at 64, 256 and 1,024 calls in flight:

* ``bare_aiohttp``: ``aiohttp.ClientSession.post`` + ``json.loads``, the floor;
* ``bare_httpx``: ``httpx.AsyncClient.post`` on httpx's own transport
  (httpcore), what the LM clients used before;
* ``openai_chat``: ``OpenAIChat.acomplete`` (cache off, breaker and retries
  on), httpx's API over aiohttp's pool.

``bare_httpx`` makes one call per slot (the others ``calls_per_slot``): at
these concurrencies httpcore spends milliseconds of CPU per call, and more
calls would only make the run long.

Reported per contender and concurrency: requests per second (median, min, max
over repeats) and the client process's CPU time per call. The server's own
ceiling is measured first with bare aiohttp at 0 ms latency and 256 in
flight, so a figure near it says the instrument, not the client, was the wall.

Run: ``python -m bench.lm_client_scaling [--quick] [--output PATH]`` from the
repository root. Writes ``bench/results/lm_client_scaling.json`` by default.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
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
from dspex.programs.lm import CircuitBreakerPolicy, Message, OpenAIChat

NAME = "lm_client_scaling"
MODEL = "bench-model"
LATENCY_S = 0.1
CONTENDERS = ("bare_aiohttp", "bare_httpx", "openai_chat")

Call = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    repeats: int
    levels: tuple[int, ...]
    calls_per_slot: int  # calls per level = concurrency x this


QUICK = Plan(repeats=1, levels=(64, 256), calls_per_slot=2)
FULL = Plan(repeats=3, levels=(64, 256, 1024), calls_per_slot=10)


def body(index: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Question number {index}?"}],
        "temperature": 0.0,
    }


@asynccontextmanager
async def contender(name: str, url: str, concurrency: int) -> AsyncIterator[Call]:
    """One contender's call, with a pool of ``concurrency`` connections, closed after."""
    endpoint = f"{url}/chat/completions"
    if name == "bare_aiohttp":
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def call_aiohttp(index: int) -> None:
                async with session.post(endpoint, json=body(index)) as response:
                    response.raise_for_status()
                    json.loads(await response.read())

            yield call_aiohttp
    elif name == "bare_httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as http:

            async def call_httpx(index: int) -> None:
                response = await http.post(endpoint, json=body(index))
                response.raise_for_status()
                response.json()

            yield call_httpx
    else:
        async with OpenAIChat(
            model=MODEL,
            base_url=url,
            cache=None,
            circuit_breaker=CircuitBreakerPolicy(),
            max_connections=concurrency,
        ) as lm:

            async def call_lm(index: int) -> None:
                await lm.acomplete([Message(role="user", content=f"Question number {index}?")])

            yield call_lm


async def rate(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """(calls per second, CPU seconds per call) for ``calls`` calls, ``concurrency`` at once."""
    indexes = iter(range(calls))

    async def worker() -> None:
        for index in indexes:
            await call(index)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - wall), (time.process_time() - cpu) / calls


async def measure(plan: Plan, url: str) -> dict[str, Any]:
    rates = {name: {c: [] for c in plan.levels} for name in CONTENDERS}
    cpus = {name: {c: [] for c in plan.levels} for name in CONTENDERS}
    for repeat in range(plan.repeats):
        order = CONTENDERS if repeat % 2 == 0 else tuple(reversed(CONTENDERS))
        for concurrency in plan.levels:
            for name in order:
                async with contender(name, url, concurrency) as call:
                    await rate(call, concurrency, concurrency)  # open the connections
                    per_s, cpu = await rate(call, concurrency * plan.calls_per_slot, concurrency)
                rates[name][concurrency].append(per_s)
                cpus[name][concurrency].append(cpu)
                print(
                    f"repeat {repeat} c={concurrency} {name}: {per_s:.0f}/s, "
                    f"{cpu * 1000:.3f} ms CPU per call",
                    flush=True,
                )
    return {
        name: {
            str(c): {
                "requests_per_s": summary(rates[name][c]),
                "cpu_ms_per_call": summary(cpus[name][c], scale=1000),
                "over_bare_aiohttp": round(
                    statistics.median(rates[name][c]) / statistics.median(rates["bare_aiohttp"][c]),
                    3,
                ),
            }
            for c in plan.levels
        }
        for name in CONTENDERS
    }


async def server_ceiling(url: str) -> float:
    async with contender("bare_aiohttp", url, 256) as call:
        await rate(call, 256, 256)
        per_s, _ = await rate(call, 256 * 10, 256)
    return per_s


async def main_async(quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    started = time.monotonic()
    load_at_start = load_average()
    with lm_server_process(latency="fixed:0") as (url, _):
        ceiling = await server_ceiling(url)
    print(f"LM server ceiling (0 ms, 256 in flight, bare aiohttp): {ceiling:.0f}/s", flush=True)
    with lm_server_process(latency=f"fixed:{LATENCY_S}") as (url, _):
        results = await measure(plan, url)
    results = {"server_ceiling_requests_per_s": round(ceiling, 1), **results}
    setup = {
        "latency_s": LATENCY_S,
        "levels": list(plan.levels),
        "calls_per_level": f"{plan.calls_per_slot} x concurrency, after one warm-up round",
        "repeats": plan.repeats,
        "server": "bench/lm_server.py in its own process",
    }
    return result_record(
        NAME,
        quick=quick,
        started=started,
        setup=setup,
        results=results,
        env=environment(load_at_start=load_at_start),
    )


def main() -> None:
    args = parser(
        NAME,
        __doc__,
        quick=f"{QUICK.repeats} repeat, {QUICK.calls_per_slot} calls per slot",
    ).parse_args()
    write_result(asyncio.run(main_async(args.quick)), args.output)


if __name__ == "__main__":
    main()
