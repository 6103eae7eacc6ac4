"""LM client throughput as concurrency rises, at 100 ms LM latency.

Three contenders call the same benchmark LM server (bench/lm_server_go, its
own process, every answer after 100 ms), each with a fresh pool sized to the
concurrency, at 64, 256 and 1,024 calls in flight:

* ``bare_aiohttp``: ``aiohttp.ClientSession.post`` + ``json.loads``, the floor;
* ``bare_httpx``: ``httpx.AsyncClient.post`` on httpx's own transport
  (httpcore), what the LM clients used before;
* ``openai_chat``: ``OpenAIChat.acomplete`` (cache off, breaker and retries
  on), its calls carried by the lean HTTP/1.1 pool (dspex/programs/lm/_http1.py).

``bare_httpx`` makes one call per slot (the others ``calls_per_slot``): at
these concurrencies httpcore spends milliseconds of CPU per call, and more
calls would only make the run long.

Reported per contender and concurrency: requests per second (median, min, max
over repeats) and the client process's CPU time per call. The server's own
ceiling is measured first, at 0 ms latency and 256 in flight, with the
server's CPU time per request: the Go server under a Go load generator (the
same binary with ``--load``, one OS thread each, because every Python client
here tops out before the Go server does), the Python instrument
(bench/lm_server.py, which the Go server replaces because the lean client
outruns it) under the fastest Python client (``openai_chat``). A contender's
figure near the ceiling would say the instrument, not the client, was the wall.

Run: ``python -m bench.lm_client_scaling [--quick] [--output PATH]`` from the
repository root. Writes ``bench/results/lm_client_scaling.json`` by default.
"""

from __future__ import annotations

import asyncio
import json
import os
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
    go_lm_server,
    lm_server_process,
    load_average,
    parser,
    result_record,
    summary,
    write_result,
)
from bench._cpu import process_cpu_s
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
    ceiling_calls: int  # the Go instrument's ceiling run


QUICK = Plan(repeats=1, levels=(64, 256), calls_per_slot=2, ceiling_calls=20_000)
FULL = Plan(repeats=3, levels=(64, 256, 1024), calls_per_slot=10, ceiling_calls=200_000)


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
    rates: dict[str, dict[int, list[float]]] = {n: {c: [] for c in plan.levels} for n in CONTENDERS}
    cpus: dict[str, dict[int, list[float]]] = {n: {c: [] for c in plan.levels} for n in CONTENDERS}
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


#: The instrument's ceiling run: calls in flight and in all.
CEILING_CONCURRENCY = 256
CEILING_CALLS = 256 * 20


async def server_ceiling(url: str, server_pid: int) -> dict[str, float | str]:
    """The server's requests per second and CPU per request under the fastest Python client."""
    async with contender("openai_chat", url, CEILING_CONCURRENCY) as call:
        await rate(call, CEILING_CONCURRENCY, CEILING_CONCURRENCY)
        cpu = process_cpu_s(server_pid)
        per_s, _ = await rate(call, CEILING_CALLS, CEILING_CONCURRENCY)
        cpu = process_cpu_s(server_pid) - cpu
    return {
        "client": "openai_chat",
        "requests_per_s": round(per_s, 1),
        "server_cpu_ms_per_request": round(cpu / CEILING_CALLS * 1000, 4),
    }


async def server_ceiling_go_load(url: str, server_pid: int, calls: int) -> dict[str, float | str]:
    """The same, under the Go load generator (the instrument's binary in ``--load`` mode).

    Every Python client tops out near the Go server's ceiling, so the figure
    it gives is the client's; a Go client on one OS thread leaves the server
    the other core and finds the server's own limit.
    """
    command = [str(go_lm_server()), "--load", f"{url}/chat/completions"]
    command += ["--concurrency", str(CEILING_CONCURRENCY)]
    env = {**os.environ, "GOMAXPROCS": "1"}

    async def load(requests: int) -> tuple[bytes, int | None]:
        loader = await asyncio.create_subprocess_exec(
            *command, "--requests", str(requests), env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await loader.communicate()
        return out, loader.returncode

    await load(CEILING_CONCURRENCY * 4)  # warm-up: connections open, the server's pools grown
    cpu = process_cpu_s(server_pid)
    out, returncode = await load(calls)
    cpu = process_cpu_s(server_pid) - cpu
    measured = json.loads(out)
    if returncode != 0 or measured["errors"]:
        raise RuntimeError(f"the Go load generator failed: {out!r}")
    return {
        "client": "go load generator (one OS thread)",
        "requests_per_s": round(calls / measured["seconds"], 1),
        "server_cpu_ms_per_request": round(cpu / calls * 1000, 4),
    }


async def main_async(quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    started = time.monotonic()
    load_at_start = load_average()
    ceilings = {}
    with lm_server_process(latency="fixed:0", engine="go") as (url, server):
        ceilings["go"] = await server_ceiling_go_load(url, server.pid, plan.ceiling_calls)
    with lm_server_process(latency="fixed:0", engine="python") as (url, server):
        ceilings["python"] = await server_ceiling(url, server.pid)
    for engine, found in ceilings.items():
        print(f"LM server ceiling ({engine}, 0 ms, 256 in flight): {found}", flush=True)
    with lm_server_process(latency=f"fixed:{LATENCY_S}", engine="go") as (url, _):
        results = await measure(plan, url)
    fastest = max(
        level["requests_per_s"]["median"] for name in CONTENDERS for level in results[name].values()
    )
    results = {
        "server_ceiling": ceilings,
        "server_ceiling_over_fastest_contender": round(
            float(ceilings["go"]["requests_per_s"]) / fastest, 2
        ),
        **results,
    }
    setup = {
        "latency_s": LATENCY_S,
        "levels": list(plan.levels),
        "calls_per_level": f"{plan.calls_per_slot} x concurrency, after one warm-up round",
        "repeats": plan.repeats,
        "server": "bench/lm_server_go (Go standard library) in its own process",
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
