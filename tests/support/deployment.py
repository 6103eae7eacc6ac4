"""Pieces of a deployment for worker tests and benchmarks: a scripted LM in its
own process, a topology file, a backlog of requests, and worker processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


@contextmanager
def scripted_lm_process(*, text: str, delay_s: float = 0.0) -> Iterator[str]:
    """``tests.support.scripted_lm`` as a process answering ``text``; yields its /v1 URL."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.scripted_lm",
            "--port",
            "0",
            "--delay-s",
            str(delay_s),
            "--text",
            text,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
    finally:
        server.terminate()
        server.communicate(timeout=30)


def write_topology(
    path: Path, *, prefix: str, bootstrap: str, lm_url: str, partitions: int, **extra: Any
) -> Path:
    """A topology serving every program with one LM at ``lm_url``."""
    topology = {
        "name": prefix,
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"prefix": prefix, "partitions": partitions},
        "lms": {"lm": {"model": "scripted", "base_url": lm_url}},
        **extra,
    }
    path.write_text(yaml.safe_dump(topology))
    return path


async def produce_backlog(
    bootstrap: str, topic: str, *, program_id: str, count: int, input_name: str = "question"
) -> None:
    """``count`` requests for ``program_id`` as raw JSON, as fast as the producer batches."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(count):
            body = {
                "schema": "dspex.inference.request/v1",
                "program_id": program_id,
                "inputs": {input_name: f"{input_name} {i}"},
            }
            await producer.send(topic, json.dumps(body).encode(), key=program_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def read_json_records(bootstrap: str, topic: str, *, idle_ms: int = 2000) -> list[Any]:
    """Every record on ``topic`` decoded as JSON, read until ``idle_ms`` pass without one."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[Any] = []
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=idle_ms)
            if not batches:
                return found
            for records in batches.values():
                found.extend(json.loads(record.value or b"null") for record in records)
    finally:
        await consumer.stop()


def start_worker(
    topology: Path, worker_id: str, *, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """``dspex worker TOPOLOGY`` as a process; its output is kept for failures."""
    return subprocess.Popen(
        [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", worker_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )


def stop_worker(worker: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM the worker; its exit code and output (fails if it takes over 60 s)."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        output, _ = worker.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # SIGUSR1 makes the worker print every thread's stack and every pending
        # task before it is killed: the output then says where it hung.
        worker.send_signal(signal.SIGUSR1)
        time.sleep(3)
        worker.kill()
        output, _ = worker.communicate()
        raise AssertionError(f"worker did not stop within 60s after SIGTERM:\n{output}") from None
    return worker.returncode, output
