"""What the client SDK tests run against: a deployment, a real worker, a hand responder.

A :class:`Deployment` is a unique topic prefix with its topics created on the
real broker and a topology file for ``dspex worker``, which the tests run as a
subprocess with the real local LM (``tests.support.deployment.start_worker``).

:class:`HandResponder` answers requests with aiokafka by hand, to produce what
a worker only produces after a crash: the same result twice. It also writes a
record that is not a result and a result for a request nobody sent, which
every client must skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import dspex
from dspex.programs.state import ProgramSpec
from dspex.streams.records import InferenceRequest, InferenceResult, decode, encode
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings

SENTIMENTS = ("positive", "negative", "neutral")
TOPICS = ("sports", "politics", "science", "other")
#: Partitions of every data topic of a test deployment.
PARTITIONS = 2


class Classify(dspex.Signature):
    """Classify the sentiment of the review."""

    review: str = dspex.InputField()
    sentiment: Literal["positive", "negative", "neutral"] = dspex.OutputField()


class Topic(dspex.Signature):
    """Which topic is the headline about?"""

    headline: str = dspex.InputField()
    topic: Literal["sports", "politics", "science", "other"] = dspex.OutputField()


def classifier(instructions: str | None = None) -> dspex.Predict:
    """The sentiment program; JSON mode makes the small model's labels valid."""
    signature = Classify if instructions is None else Classify.with_instructions(instructions)
    return dspex.Predict(signature, adapter=dspex.JSONAdapter())


def topic_spec() -> ProgramSpec:
    return ProgramSpec.from_program(dspex.Predict(Topic, adapter=dspex.JSONAdapter()))


@dataclass(frozen=True)
class Deployment:
    bootstrap: str
    prefix: str
    names: TopicNames
    topology: Path | None


def make_deployment(bootstrap: str, directory: Path, lm_url: str | None) -> Deployment:
    """Create the topics of a new prefix; with an LM, write a worker topology too."""
    prefix = f"c{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS)))
    topology = None
    if lm_url is not None:
        topology = directory / "topology.yaml"
        topology.write_text(
            yaml.safe_dump(
                {
                    "name": prefix,
                    "kafka": {"bootstrap_servers": bootstrap},
                    "topics": {"prefix": prefix, "partitions": PARTITIONS},
                    "lms": {"local": {"model": "smollm2-135m-instruct", "base_url": lm_url}},
                    "default_lm": "local",
                    "inflight_limit": 8,
                    "request_timeout_s": 60,
                }
            )
        )
    return Deployment(bootstrap, prefix, TopicNames(prefix), topology)


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``dspex submit ARGS`` as its own process (stdin closed, output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "dspex", "submit", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class HandResponder:
    """Answers each request on a deployment by hand: the result twice, plus noise.

    For each request it produces, in this order, to the request's reply topic:
    bytes that are not JSON, a result for a request id nobody sent, and the
    request's result (outputs ``{"echo": inputs}``) twice in a row.
    """

    NOISE = b"\xffnot a result"

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.answered: list[str] = []
        self.strangers: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self._producer: Any = None

    async def __aenter__(self) -> HandResponder:
        bootstrap = self.deployment.bootstrap
        topic = self.deployment.names.inference_requests
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await self._producer.start()
        await self._consumer.start()
        partitions = [TopicPartition(topic, p) for p in await self._producer.partitions_for(topic)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._answer())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        await self._producer.stop()

    async def _answer(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    await self._respond(decode(record.value, expect=InferenceRequest))

    async def _respond(self, request: InferenceRequest) -> None:
        topic = request.reply_to or self.deployment.names.inference_results
        stranger = self._result(uuid.uuid4().hex, request)
        result = self._result(request.request_id, request)
        await self._producer.send(topic, self.NOISE, key=b"noise")
        await self._producer.send(topic, encode(stranger), key=stranger.kafka_key())
        for _ in range(2):
            await self._producer.send(topic, encode(result), key=result.kafka_key())
        await self._producer.flush()
        self.answered.append(request.request_id)
        self.strangers.append(stranger.request_id)

    @staticmethod
    def _result(request_id: str, request: InferenceRequest) -> InferenceResult:
        return InferenceResult(
            request_id=request_id,
            program_id=request.program_id,
            program_version=1,
            status="ok",
            outputs={"echo": request.inputs},
            latency_ms=1.0,
            worker_id="hand-responder",
        )


async def read_requests(deployment: Deployment) -> list[InferenceRequest]:
    """Every request on the deployment's requests topic so far."""
    topic = deployment.names.inference_requests
    consumer = AIOKafkaConsumer(bootstrap_servers=deployment.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[InferenceRequest] = []
        while any([await consumer.position(p) < end for p, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [decode(r.value, expect=InferenceRequest) for r in records]
        return found
    finally:
        await consumer.stop()
