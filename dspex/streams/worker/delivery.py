"""Delivering the records a consumed record produced, before its offset may be committed."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from dspex.streams.worker.inference import Origin, Outgoing

__all__ = ["KeyHashPartitioner", "Send", "deliver", "produce_all"]

log = logging.getLogger(__name__)

#: Hands one record to a producer; the awaitable it returns resolves on delivery.
Send = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[Any]]]

#: Backoff between attempts to produce a record's results while the broker refuses them.
_PRODUCE_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class KeyHashPartitioner:
    """The partition Kafka's default partitioner picks (murmur2 of the key), remembering hashes.

    A worker produces two or more records per request keyed by the same
    program id (telemetry); aiokafka hashes every key in pure Python. Keys
    seen lately keep their hash (least recently used go first), so a
    deployment's programs are hashed once. Same choice as Java clients, so
    records keyed alike land alike whoever produces them.
    """

    def __init__(self, remember: int = 1024) -> None:
        self._hash = functools.lru_cache(maxsize=remember)(murmur2)

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        return int(all_partitions[(self._hash(key) & 0x7FFFFFFF) % len(all_partitions)])


async def produce_all(send: Send, outgoing: list[Outgoing], *, fallback_topic: str) -> None:
    """Produce a request's records and wait for their delivery.

    Every record is handed to the producer first and the deliveries are awaited
    together: one broker round trip per request, not one per record. A record
    whose topic fails (a ``reply_to`` topic that does not exist, say) goes to
    ``fallback_topic`` instead; when that is the topic that failed, the error
    propagates and the request is tried again.
    """
    sent: list[tuple[Outgoing, Awaitable[Any] | BaseException]] = []
    for record in outgoing:
        try:
            sent.append((record, await send(record.topic, record.key, record.value)))
        except KafkaError as exc:
            sent.append((record, exc))
    for record, delivery in sent:
        try:
            if isinstance(delivery, BaseException):
                raise delivery
            await delivery
        except KafkaError as exc:
            if record.topic == fallback_topic:
                raise  # the results topic itself failed: the request is tried again
            log.warning("cannot produce to %s (%s); using %s", record.topic, exc, fallback_topic)
            await (await send(fallback_topic, record.key, record.value))


async def deliver(
    send: Send, outgoing: list[Outgoing], *, fallback_topic: str, origin: Origin
) -> None:
    """:func:`produce_all`, tried again with backoff until the broker takes the records.

    The consumed record at ``origin`` is committed only after this returns, so
    giving up would lose it; a stop or a revoke cancels the wait instead.
    """
    attempt = 0
    while True:
        try:
            await produce_all(send, outgoing, fallback_topic=fallback_topic)
            return
        except KafkaError as exc:
            wait = _PRODUCE_BACKOFF_S[min(attempt, len(_PRODUCE_BACKOFF_S) - 1)]
            attempt += 1
            log.warning(
                "cannot produce the results of %s[%d]@%d (%s); trying again in %gs",
                origin.topic,
                origin.partition,
                origin.offset,
                exc,
                wait,
            )
            await asyncio.sleep(wait)
