"""CPU time of a process, and the two floors a worker's CPU per request is set beside.

CPU time per request is the figure noise moves least on a shared 2-core
machine: another process slows a run down but does not add to this one's CPU
seconds. Each contender runs in its own process so its CPU can be read from
``/proc/<pid>/stat`` (Linux):

- the bare Kafka loop (``python -m bench._cpu kafka BOOTSTRAP SOURCE SINK COUNT``):
  consume a record, produce one, commit per batch, nothing else;
- the bare HTTP call (``python -m bench._cpu http URL COUNT CONCURRENCY``):
  aiohttp POSTs of a chat-completions body to the benchmark LM server;
- the bare Faust agent (``python -m bench._cpu faust BOOTSTRAP SOURCE SINK COUNT
  CONCURRENCY RECORDS``): a Faust app with the worker's consumer settings whose
  agent, ``CONCURRENCY`` actors, produces ``RECORDS`` records per consumed one
  and awaits their delivery, as the worker does, and nothing else. Its CPU is
  what Faust's stream, acks, commits and producer cost before any dspex code.

Each prints one JSON line: ``{"records": N, "cpu_s": S}`` (CPU of the loop
itself, start-up and imports excluded).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from typing import Any

__all__ = ["bare_kafka_loop", "process_cpu_s"]

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 0, utime 11, stime 12.
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def bare_kafka_loop(
    bootstrap: str, source: str, sink: str, count: int | None
) -> dict[str, float]:
    """Consume records and produce one each, committing per batch; nothing else.

    Stops after ``count`` records (None: runs until cancelled). Returns the
    records handled and the CPU seconds from the first fetched batch on.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    done = 0
    cpu_start: float | None = None
    try:
        while count is None or done < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            if cpu_start is None and batches:
                cpu_start = time.process_time()
            futures = []
            for records in batches.values():
                for record in records:
                    futures.append(await producer.send(sink, record.value, key=record.key))
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
            done += len(futures)
        cpu = time.process_time() - (cpu_start or 0.0)
    finally:
        await consumer.stop()
        await producer.stop()
    return {"records": done, "cpu_s": cpu}


async def _http(url: str, count: int, concurrency: int) -> dict[str, float]:
    import aiohttp

    body = json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "question"}]}
    ).encode()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                response.raise_for_status()
                json.loads(await response.read())

        await call()  # the connection and the first-call costs are not the loop's
        cpu_start = time.process_time()
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await call()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu = time.process_time() - cpu_start
    return {"records": count, "cpu_s": cpu}


def bare_faust_agent(
    bootstrap: str, source: str, sink: str, count: int, concurrency: int, records: int
) -> None:
    """Run a bare Faust agent until it has handled ``count`` records; print its CPU from the first.

    Prints as the other loops do, then stops the Faust worker as SIGTERM does.
    """
    import signal

    from dspex.streams._faust import QuietWorker, install_event_loop
    from dspex.streams.worker.app import new_faust_app
    from dspex.topologies.topology import Topology

    install_event_loop("uvloop")  # as the worker does by default
    logging.basicConfig(level=logging.WARNING)  # as `dspex worker` logs, without -v
    topology = Topology(
        name=f"bare-faust-{uuid.uuid4().hex[:6]}",
        kafka={"bootstrap_servers": bootstrap},
        inflight_limit=concurrency,
    )
    app = new_faust_app(topology)  # the worker's consumer, commit and producer settings
    topic = app.topic(source, key_serializer="raw", value_serializer="raw")
    done = 0
    cpu_start = 0.0

    async def produce(event: Any) -> None:
        nonlocal done, cpu_start
        if not cpu_start:
            cpu_start = time.process_time()
        deliveries = [
            await app.producer.send(sink, event.key, event.value, None, None, None)
            for _ in range(records)
        ]
        for delivery in deliveries:
            await delivery
        done += 1
        if done == count:
            cpu = time.process_time() - cpu_start
            print(json.dumps({"records": count, "cpu_s": cpu}), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

    async def agent(stream: Any) -> Any:
        async for event in stream.events():
            await produce(event)
            yield None

    app.agent(topic, concurrency=concurrency, name="bare")(agent)
    worker = QuietWorker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "kafka":
        bootstrap, source, sink, count = args
        result = asyncio.run(bare_kafka_loop(bootstrap, source, sink, int(count)))
    elif mode == "faust":
        bootstrap, source, sink, count, concurrency, records = args
        bare_faust_agent(bootstrap, source, sink, int(count), int(concurrency), int(records))
        return
    elif mode == "http":
        url, count, concurrency = args
        result = asyncio.run(_http(url, int(count), int(concurrency)))
    else:
        sys.exit(f"unknown mode {mode!r}: kafka, faust or http")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
