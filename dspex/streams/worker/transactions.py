"""Exactly-once output: a partition's answers produced in one Kafka transaction with its offsets.

With ``processing_guarantee: exactly_once`` a channel does not produce a
record's results when it is answered. The answer is held in its partition's
:class:`~dspex.streams.worker.offsets.Progress` until every earlier offset of
the partition is answered too; each commit round then produces the answers
that became contiguous, *and* the offset after them, in one transaction:

    begin → produce the held results, events, dead letters → send the offset
    to the transaction (as the group's commit) → commit

A reader with ``isolation_level=read_committed`` (every dspex reader) sees
all of a round or none of it, so a request's result appears once however the
worker dies: a round that did not commit is aborted (by this producer, by
the transaction timeout, or by the next owner fencing it) and its offsets are
read again by the next owner, which produces them again in a transaction of
its own.

A producer that finds itself fenced drops what it holds, and its consumer
leaves the group and joins again: if the partition is still its own (the
broker had only aborted a transaction that outlived its timeout, say), it
comes back with a new producer and reads the dropped offsets again.

**Why one producer per input partition.** Concurrent requests finish out of
order, and a transaction must only hold answers whose offsets it commits:
answers wait for the gap before them to fill, per partition. Zombie fencing
is the other reason: aiokafka's transactional offset commit carries no group
generation (KIP-447), so a worker that lost its partitions but did not notice
(a long pause, a network cut) is fenced by the transactional id alone. The id
is the group, topic and partition: whoever owns the partition next starts a
producer with the same id, and the broker then refuses the old one's
transactions (``ProducerFenced``) and aborts the one it left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)

from dspex.streams.worker.delivery import KeyHashPartitioner, produce_all
from dspex.streams.worker.offsets import Progress
from dspex.topologies.settings import KafkaTarget, client_options

__all__ = ["PartitionTransactions", "Transactions", "transactional_id"]

log = logging.getLogger(__name__)

#: The broker aborts a transaction left open this long (a producer that died
#: mid-round); until then read_committed readers of its output wait at it.
_TRANSACTION_TIMEOUT_MS = 10_000

_FENCED = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The transactional id of the producer for one input partition of a group."""
    return f"{group_id}.{tp.topic}.{tp.partition}"


class PartitionTransactions:
    """The transactional producer of one input partition; see the module docstring.

    Args:
        tp: The input partition.
        group_id: The channel's consumer group (its offsets are committed through it).
        bootstrap_servers: The Kafka cluster.
        fallback_topic: Where a record goes whose own topic cannot be produced to.
    """

    def __init__(
        self,
        tp: TopicPartition,
        *,
        group_id: str,
        bootstrap_servers: KafkaTarget,
        fallback_topic: str,
    ) -> None:
        self.tp = tp
        self.group_id = group_id
        self.fallback_topic = fallback_topic
        self.fenced = False
        self.producer = AIOKafkaProducer(
            **client_options(bootstrap_servers),
            transactional_id=transactional_id(group_id, tp),
            enable_idempotence=True,
            acks="all",
            partitioner=KeyHashPartitioner(),
            transaction_timeout_ms=_TRANSACTION_TIMEOUT_MS,
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        """Close the producer; a transaction still open is aborted by the broker."""
        with contextlib.suppress(KafkaError, OSError):
            await self.producer.stop()

    async def commit(self, progress: Progress) -> None:
        """Produce the answers that became contiguous and commit their offset, atomically.

        Raises:
            KafkaError: The round failed and was aborted; its answers are held
                again for the next round.
        """
        if self.fenced:
            return
        records, offset = progress.take_ready()
        if offset is None or (offset == progress.committed and not records):
            return
        producer = self.producer
        try:
            await producer.begin_transaction()
            try:
                await produce_all(self._send, records, fallback_topic=self.fallback_topic)
                await producer.send_offsets_to_transaction({self.tp: offset}, self.group_id)
                await producer.commit_transaction()
            except BaseException:
                # aiokafka refuses (with an assertion) to abort after a fatal error.
                with contextlib.suppress(Exception):
                    await producer.abort_transaction()
                raise
        except _FENCED as exc:
            # A newer producer with this id exists (the partition's next owner),
            # or the broker aborted a transaction of ours that outlived its
            # timeout. Either way this producer is done; the consumer rejoins
            # its group to learn whether the partition is still its own.
            self.fenced = True
            log.warning("%s was fenced (%s); its answers are dropped", self, exc)
            return
        except BaseException:
            progress.give_back(records)
            raise
        progress.committed = offset

    def _send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        return self.producer.send(topic, value, key=key)

    def __repr__(self) -> str:
        return f"the transactional producer of {self.tp.topic}[{self.tp.partition}]"


class Transactions:
    """The transactional producers of a channel's owned partitions, by partition.

    Args:
        group_id: The channel's consumer group.
        bootstrap_servers: The Kafka cluster.
        fallback_topic: Where a record goes whose own topic cannot be produced to.
    """

    def __init__(
        self, *, group_id: str, bootstrap_servers: KafkaTarget, fallback_topic: str
    ) -> None:
        self.group_id = group_id
        self.bootstrap_servers = bootstrap_servers
        self.fallback_topic = fallback_topic
        self.by_partition: dict[TopicPartition, PartitionTransactions] = {}

    def __contains__(self, tp: object) -> bool:
        return tp in self.by_partition

    def __getitem__(self, tp: TopicPartition) -> PartitionTransactions:
        return self.by_partition[tp]

    @property
    def fenced(self) -> bool:
        """Whether a producer was fenced (its consumer should rejoin its group)."""
        return any(transactions.fenced for transactions in self.by_partition.values())

    async def open(self, partitions: set[TopicPartition]) -> None:
        """A producer per new partition (starting it fences the partition's previous owner)."""
        for tp in partitions - set(self.by_partition):
            transactions = PartitionTransactions(
                tp,
                group_id=self.group_id,
                bootstrap_servers=self.bootstrap_servers,
                fallback_topic=self.fallback_topic,
            )
            await transactions.start()
            self.by_partition[tp] = transactions

    async def close(self, partitions: set[TopicPartition] | None = None) -> None:
        """Close the producers of ``partitions`` (None: all); open rounds are aborted."""
        chosen = set(self.by_partition) if partitions is None else partitions
        closing = [self.by_partition.pop(tp) for tp in chosen if tp in self.by_partition]
        await asyncio.gather(*(transactions.stop() for transactions in closing))

    async def commit(
        self, progress: dict[TopicPartition, Progress], partitions: set[TopicPartition]
    ) -> None:
        """One round for each of ``partitions``, side by side; the first failure is raised."""
        rounds = [
            self.by_partition[tp].commit(progress[tp])
            for tp in partitions
            if tp in self.by_partition and tp in progress
        ]
        outcomes = await asyncio.gather(*rounds, return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]
