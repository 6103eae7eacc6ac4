"""Talking to the optimizer service: send commands and feedback, follow what it does.

Example:
    >>> async with OptimizerClient() as client:                          # doctest: +SKIP
    ...     command = ControlCommand(command="rollback", program_id="qa")
    ...     async for record in client.run(command):
    ...         print(record)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dspex.errors import DeadlineExceededError, WireFormatError
from dspex.streams.client._kafka import (
    POLL_MS,
    assign,
    kafka_failure,
    new_consumer,
    quietly_stop,
    topic_partitions,
)
from dspex.streams.records import (
    CandidateRecord,
    ControlCommand,
    FeedbackRecord,
    OptimizerEvent,
    WireRecord,
    decode,
    encode,
)
from dspex.streams.topics import TopicNames
from dspex.topologies.settings import KafkaSettings, KafkaTarget, client_options

__all__ = ["JournalRecord", "OptimizerClient", "ends_command"]

JournalRecord = CandidateRecord | OptimizerEvent

#: Events after which nothing more comes for a command (job commands: for its job).
_COMMAND_ENDS: Final = {
    "optimize": {"job_finished", "job_failed", "job_paused"},
    "online": {"job_failed", "job_paused"},
    "promote": {"promoted"},
    "rollback": {"rolled_back"},
    "pause": {"job_paused"},
    "resume": {"job_resumed"},
}


def ends_command(command: ControlCommand, record: JournalRecord) -> bool:
    """Whether ``record`` is the last one :meth:`OptimizerClient.run` yields for ``command``."""
    if not isinstance(record, OptimizerEvent):
        return False
    if record.event == "command_failed":
        return record.command_id == command.command_id
    if command.command in ("optimize", "online"):
        return record.job_id == command.job and record.event in _COMMAND_ENDS[command.command]
    return (
        record.command_id == command.command_id and record.event in _COMMAND_ENDS[command.command]
    )


class OptimizerClient:
    """Produces control commands and feedback; reads the optimizer's journal.

    Args:
        bootstrap_servers: Kafka; default ``DSPEX_BOOTSTRAP_SERVERS``.
        prefix: Topic name prefix of the deployment.
        idle_timeout_s: :meth:`run` fails when the journal is silent this long.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: KafkaTarget | None = None,
        prefix: str = "dspex",
        idle_timeout_s: float = 120.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers or KafkaSettings()
        self.names = TopicNames(prefix)
        self.prefix = prefix
        self.idle_timeout_s = idle_timeout_s
        self._producer: Any = None

    async def __aenter__(self) -> OptimizerClient:
        producer = AIOKafkaProducer(**client_options(self.bootstrap_servers), acks="all")
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await quietly_stop(producer)
            raise kafka_failure(
                "cannot connect to",
                exc,
                bootstrap_servers=self.bootstrap_servers,
                connect_timeout_s=self.idle_timeout_s,
            ) from exc
        self._producer = producer
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        producer, self._producer = self._producer, None
        await quietly_stop(producer)

    async def _send(self, topic: str, record: WireRecord) -> None:
        try:
            await self._producer.send_and_wait(topic, encode(record), key=record.kafka_key())
        except KafkaError as exc:
            raise kafka_failure(
                f"cannot produce to {topic} on",
                exc,
                bootstrap_servers=self.bootstrap_servers,
                connect_timeout_s=self.idle_timeout_s,
            ) from exc

    async def send(self, command: ControlCommand) -> None:
        """Produce ``command`` to the control topic without waiting for its outcome."""
        await self._send(self.names.control, command)

    async def feedback(self, feedback: FeedbackRecord) -> None:
        """Attach a score or gold label to a production result."""
        await self._send(self.names.feedback, feedback)

    async def run(self, command: ControlCommand) -> AsyncIterator[JournalRecord]:
        """Send ``command`` and yield the journal records about it until its outcome.

        For ``optimize`` that is every candidate and event of its job up to
        ``job_finished`` (or ``job_failed`` / ``job_paused``); for the others,
        the one event that says it was done. ``command_failed`` ends any.

        Raises:
            DeadlineExceededError: Nothing came for ``idle_timeout_s`` (is the
                optimizer service running?).
        """
        partitions = await topic_partitions(
            self._producer,
            self.names.candidates,
            bootstrap_servers=self.bootstrap_servers,
            prefix=self.prefix,
        )
        consumer = new_consumer(self.bootstrap_servers, "dspex-optimizer-client")
        await consumer.start()
        try:
            await assign(consumer, self.names.candidates, partitions, from_beginning=False)
            await self.send(command)
            async for record in self._follow(consumer):
                if not _about(command, record):
                    continue
                yield record
                if ends_command(command, record):
                    return
        finally:
            await quietly_stop(consumer)

    async def _follow(self, consumer: Any) -> AsyncIterator[JournalRecord]:
        last = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=POLL_MS)
            for messages in batches.values():
                for message in messages:
                    last = time.monotonic()
                    try:
                        record = decode(message.value or b"")
                    except WireFormatError:
                        continue
                    if isinstance(record, CandidateRecord | OptimizerEvent):
                        yield record
            if time.monotonic() - last > self.idle_timeout_s:
                raise DeadlineExceededError(
                    f"no word from the optimizer service on {self.names.candidates} for "
                    f"{self.idle_timeout_s:g}s: is `dspex optimizer serve` running "
                    f"with prefix {self.prefix!r}?",
                    timeout_s=self.idle_timeout_s,
                )


def _about(command: ControlCommand, record: JournalRecord) -> bool:
    if isinstance(record, OptimizerEvent) and record.command_id == command.command_id:
        return True
    if command.command in ("optimize", "online"):
        return record.job_id == command.job
    return False
