"""How the optimizer service writes to Kafka: journal records, dead letters, program versions.

Everything the service decides leaves through one :class:`Publisher`. A
journal record is applied to the in-memory
:class:`~dspex.streams.optimizer_service.jobs.Journal` only once Kafka has it,
so the journal here never runs ahead of what a restarted service reads back.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from dspex.programs.state import ProgramSpec
from dspex.streams.catalog import ProgramCatalog
from dspex.streams.optimizer_service.jobs import Journal
from dspex.streams.records import (
    CandidateRecord,
    ControlCommand,
    OptimizerEvent,
    ProgramRecord,
    encode,
)
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames
from dspex.topologies.settings import KafkaTarget, client_options

__all__ = ["Publisher"]


class Publisher:
    """The optimizer service's producer: writes its records and applies them here.

    Args:
        bootstrap_servers: Kafka.
        names: The deployment's topics.
        service_id: Names the service in its events and dead letters.
        journal: Where journal records are applied once written.
        catalog: Where registered program versions are applied once written.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: KafkaTarget,
        names: TopicNames,
        service_id: str,
        journal: Journal,
        catalog: ProgramCatalog,
    ) -> None:
        self.service_id = service_id
        self._bootstrap = bootstrap_servers
        self._names = names
        self._journal = journal
        self._catalog = catalog
        self._producer: Any = None

    async def start(self) -> None:
        """Connect the producer; every other method needs it."""
        producer = AIOKafkaProducer(**client_options(self._bootstrap), acks="all")
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        """Flush and stop the producer."""
        await self._producer.stop()

    async def send(self, topic: str, value: bytes, *, key: bytes | None) -> None:
        """Write raw bytes to ``topic``: a dead letter, which is no record of ours."""
        await self._producer.send_and_wait(topic, value, key=key)

    async def publish(self, record: CandidateRecord | OptimizerEvent) -> None:
        """Write ``record`` to the journal (and apply it here)."""
        await self._producer.send_and_wait(
            self._names.candidates, encode(record), key=record.kafka_key()
        )
        self._journal.apply(record)

    async def event(self, event: str, command: ControlCommand, **fields: Any) -> None:
        """Journal an event about ``command``; ``job_id`` defaults to the command's."""
        await self.publish(
            OptimizerEvent(
                event=event,  # type: ignore[arg-type]
                program_id=command.program_id,
                job_id=fields.pop("job_id", command.job_id),
                command_id=command.command_id,
                service_id=self.service_id,
                **fields,
            )
        )

    async def register(self, program_id: str, spec: ProgramSpec, description: str) -> ProgramRecord:
        """Publish ``spec`` as the next version of ``program_id``; the catalog has it at once."""
        record = await register_program(
            self._bootstrap, self._names, program_id, spec, description=description
        )
        self._catalog.apply(record)
        return record
