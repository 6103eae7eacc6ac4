"""A channel consumer's liveness: a stalled one is detected, logged, counted and replaced.

The consumer marks each step of its loop (a fetch, a wait for a free slot: a
few per second at least) and each commit round that ends. :func:`watch`
compares both with the consumer's ``stall_after_s`` (during a rebalance, plus
its drain time) and, past it, has the consumer replace itself
(:meth:`~dspex.streams.worker.consumer.BoundedConsumer.replace`). A commit
that stalls because no broker answers at all (a restart, a network cut) is
not a wedge: every client waits for the broker alike, and a new consumer
could not join anyway, so it is only logged, once.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

__all__ = ["Watched", "kafka_answers", "stack", "watch"]

log = logging.getLogger(__name__)


class Watched(Protocol):
    """What :func:`watch` needs of a consumer."""

    channel: str
    stall_after_s: float
    drain_timeout_s: float

    @property
    def producer(self) -> AIOKafkaProducer: ...

    def ages(self) -> tuple[float, float, bool]: ...

    async def replace(self, step_age: float, commit_age: float) -> None: ...


async def watch(consumer: Watched) -> None:
    """Replace ``consumer`` whenever its loop or its commits stop moving (runs until cancelled)."""
    kafka_away = False
    while True:
        await asyncio.sleep(consumer.stall_after_s / 4)
        step_age, commit_age, rebalancing = consumer.ages()
        limit = consumer.stall_after_s + (consumer.drain_timeout_s if rebalancing else 0.0)
        if step_age <= limit and commit_age <= limit:
            continue
        if not await kafka_answers(consumer.producer, timeout_s=consumer.stall_after_s / 4):
            if not kafka_away:
                log.warning(
                    "Kafka does not answer; the %s consumer waits for it (no commit for %.1fs)",
                    consumer.channel,
                    commit_age,
                )
            kafka_away = True
            continue
        kafka_away = False
        try:
            await consumer.replace(step_age, commit_age)
        except (KafkaError, OSError) as exc:  # the next look tries again
            log.error("replacing the stalled %s consumer failed: %s", consumer.channel, exc)


async def kafka_answers(producer: AIOKafkaProducer, *, timeout_s: float) -> bool:
    """Whether any broker answers a metadata request within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            await producer.client.fetch_all_metadata()
    except (KafkaError, OSError, TimeoutError):
        return False
    return True


def stack(task: asyncio.Task[Any]) -> str:
    """Where ``task`` is waiting, as printed stack lines."""
    out = io.StringIO()
    task.print_stack(limit=12, file=out)
    return out.getvalue()
