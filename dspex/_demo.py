"""One prompt through the whole system: Kafka in, the LM, Kafka out.

The demo produces a request record, runs a small consumer that calls the
OpenAI-compatible LM for each request and produces the completion, and reads
the completion back by request id. The full inference service (Faust agents,
programs, backpressure) lives in :mod:`dspex.streams`; this path exists to
prove a fresh install end to end with the fewest moving parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from dspex._local._process import ProgressCallback
from dspex._local.lm import DEFAULT_MODEL_ALIAS
from dspex.errors import DeadlineExceededError, LMError, LocalServiceError
from dspex.streams.topics import create_topics, partitions_of

REQUESTS_TOPIC = "dspex.demo.requests"
RESULTS_TOPIC = "dspex.demo.results"
WORKER_GROUP = "dspex.demo.worker"


@dataclass(frozen=True)
class DemoResult:
    request_id: str
    completion: str
    latency_s: float


async def ensure_topics(bootstrap_servers: str, names: list[str], partitions: int = 1) -> None:
    """Create the topics that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if missing:
            await create_topics(admin, missing)
    finally:
        await admin.close()


async def complete(client: httpx.AsyncClient, lm_url: str, prompt: str, model: str) -> str:
    """One chat completion from an OpenAI-compatible server.

    Raises:
        LMError: The server failed or answered without a completion.
    """
    try:
        response = await client.post(
            f"{lm_url}/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 64,
                "temperature": 0.0,
            },
        )
    except httpx.HTTPError as exc:
        raise LMError(f"LM at {lm_url} unreachable: {exc!r}", provider="openai") from exc
    if response.status_code != 200:
        raise LMError(
            f"LM at {lm_url} answered HTTP {response.status_code}",
            provider="openai",
            status=response.status_code,
        )
    try:
        text = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise LMError(f"LM at {lm_url} sent no completion", provider="openai") from exc
    return str(text).strip()


async def _answer_requests(bootstrap_servers: str, lm_url: str, model: str) -> None:
    """Consume requests, call the LM, produce results; runs until cancelled."""
    consumer = AIOKafkaConsumer(
        REQUESTS_TOPIC,
        bootstrap_servers=bootstrap_servers,
        group_id=WORKER_GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await consumer.start()
    await producer.start()
    try:
        async with httpx.AsyncClient(timeout=60.0) as http:
            async for record in consumer:
                result: dict[str, Any]
                try:
                    request = json.loads(record.value or b"")
                    request_id = str(request["request_id"])
                    result = {"request_id": request_id}
                    result["completion"] = await complete(
                        http, lm_url, str(request["prompt"]), model
                    )
                except (ValueError, KeyError, TypeError):
                    continue  # not a demo request; nothing to answer
                except LMError as exc:
                    result["error"] = str(exc)
                await producer.send_and_wait(
                    RESULTS_TOPIC, json.dumps(result).encode(), key=request_id.encode()
                )
                # Commit only after the result is produced: at-least-once.
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def run_demo(
    bootstrap_servers: str,
    lm_url: str,
    prompt: str,
    *,
    timeout_s: float,
    progress: ProgressCallback,
    model: str = DEFAULT_MODEL_ALIAS,
) -> DemoResult:
    """Send ``prompt`` through Kafka and the LM; return the completion.

    Raises:
        LocalServiceError: The broker is unreachable.
        LMError: The LM failed to answer.
        DeadlineExceededError: No result within ``timeout_s``.
    """
    progress(f"creating topics on {bootstrap_servers}")
    try:
        await asyncio.wait_for(
            ensure_topics(bootstrap_servers, [REQUESTS_TOPIC, RESULTS_TOPIC]), timeout=30
        )
    except (KafkaError, TimeoutError) as exc:
        raise LocalServiceError(
            f"Kafka at {bootstrap_servers} is not reachable ({type(exc).__name__}); "
            "is the broker running? (dspex broker start)",
            service="kafka broker",
        ) from exc

    results = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await results.start()
    await producer.start()
    worker = asyncio.create_task(_answer_requests(bootstrap_servers, lm_url, model))
    try:
        # Read only results produced from now on.
        partitions = [
            TopicPartition(RESULTS_TOPIC, p)
            for p in await partitions_of(bootstrap_servers, RESULTS_TOPIC)
        ]
        results.assign(partitions)
        await results.seek_to_end(*partitions)

        request_id = uuid.uuid4().hex
        started = time.monotonic()
        progress("producing the request")
        await producer.send_and_wait(
            REQUESTS_TOPIC,
            json.dumps({"request_id": request_id, "prompt": prompt}).encode(),
            key=request_id.encode(),
        )
        progress("waiting for the completion")
        async with asyncio.timeout(timeout_s):
            while True:
                batches = await results.getmany(timeout_ms=500)
                if worker.done():
                    worker.result()  # re-raise why the worker stopped
                for records in batches.values():
                    for record in records:
                        answer = json.loads(record.value or b"{}")
                        if answer.get("request_id") != request_id:
                            continue
                        if "error" in answer:
                            raise LMError(str(answer["error"]), provider="openai")
                        return DemoResult(
                            request_id=request_id,
                            completion=str(answer["completion"]),
                            latency_s=time.monotonic() - started,
                        )
    except TimeoutError:
        raise DeadlineExceededError(
            f"no completion within {timeout_s:g}s (is the LM server running at {lm_url}?)",
            timeout_s=timeout_s,
        ) from None
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await results.stop()
        await producer.stop()
