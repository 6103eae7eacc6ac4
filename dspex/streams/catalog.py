"""The program registry as each worker sees it: every version, and the active one.

Programs are registered by producing a :class:`ProgramRecord` to the compacted
``<prefix>.programs`` topic, keyed by program id. Every worker reads that
topic whole (no consumer group: each needs every program), first up to its
end before serving, then following it, so a new version applies without a
restart while the inference channel has any backlog.

The active version of a program is the version of the latest record for it;
publishing an older version again is a rollback. Versions seen since the
worker started stay available to requests that pin them; the topic is
compacted, so after a restart only the active version of each program is
known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from dspex.errors import DSPExError, ProgramNotFoundError, WireFormatError
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry
from dspex.streams.records import ProgramRecord, decode
from dspex.streams.topics import partitions_of
from dspex.topologies.settings import KafkaTarget, client_options

__all__ = ["ProgramCatalog", "ProgramFollower"]

log = logging.getLogger(__name__)


@dataclass
class _ProgramVersions:
    active: int
    records: dict[int, ProgramRecord] = field(default_factory=dict)


class ProgramCatalog:
    """Known program versions; builds (and caches) runnable programs from their specs.

    Args:
        registry: Python classes and tools that specs may name.
        max_built: Built programs kept in memory (least recently used dropped).
    """

    def __init__(self, *, registry: ProgramRegistry | None = None, max_built: int = 256) -> None:
        self.registry = registry or ProgramRegistry()
        self._programs: dict[str, _ProgramVersions] = {}
        self._built: OrderedDict[tuple[str, int], Module] = OrderedDict()
        self._max_built = max_built
        #: Called with (program_id, version) whenever a record applies.
        self.listeners: list[Callable[[str, int], None]] = []

    def apply(self, record: ProgramRecord) -> None:
        """Add a version and make it the program's active one."""
        versions = self._programs.setdefault(record.program_id, _ProgramVersions(record.version))
        versions.records[record.version] = record
        versions.active = record.version
        self._built.pop((record.program_id, record.version), None)  # re-registered: rebuild
        for listener in self.listeners:
            listener(record.program_id, record.version)

    def remove(self, program_id: str) -> None:
        """Forget a program (a tombstone on the programs topic)."""
        self._programs.pop(program_id, None)
        for key in [k for k in self._built if k[0] == program_id]:
            del self._built[key]

    def versions(self, program_id: str) -> list[int]:
        """Every known version of a program, ascending (empty if unknown)."""
        versions = self._programs.get(program_id)
        return sorted(versions.records) if versions else []

    def programs(self) -> dict[str, int]:
        """Program id → active version."""
        return {pid: versions.active for pid, versions in sorted(self._programs.items())}

    def record(self, program_id: str, version: int | None = None) -> ProgramRecord:
        """The record of a version (default: the active one).

        Raises:
            ProgramNotFoundError: Unknown program or version.
        """
        versions = self._programs.get(program_id)
        if versions is None:
            raise ProgramNotFoundError(
                f"program {program_id!r} is not registered", program_id=program_id
            )
        wanted = versions.active if version is None else version
        if wanted not in versions.records:
            raise ProgramNotFoundError(
                f"program {program_id!r} has no version {wanted} "
                f"(known: {sorted(versions.records)}, active: {versions.active})",
                program_id=program_id,
                version=wanted,
            )
        return versions.records[wanted]

    def resolve(self, program_id: str, version: int | None = None) -> tuple[int, Module]:
        """The version number and a runnable program for a request.

        Raises:
            ProgramNotFoundError: Unknown program or version.
            StateError: The spec cannot be built here (e.g. an unregistered class).
        """
        record = self.record(program_id, version)
        key = (program_id, record.version)
        program = self._built.get(key)
        if program is None:
            program = record.spec.build(registry=self.registry)
            self._built[key] = program
            while len(self._built) > self._max_built:
                self._built.popitem(last=False)
        else:
            self._built.move_to_end(key)
        return record.version, program


class ProgramFollower:
    """Reads the whole programs topic into a catalog, then follows it.

    Use as an async context manager: entering returns once every record up to
    the topic's end at that moment has been applied.
    """

    def __init__(
        self,
        catalog: ProgramCatalog,
        *,
        bootstrap_servers: KafkaTarget,
        topic: str,
        load_timeout_s: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.topic = topic
        self.load_timeout_s = load_timeout_s
        self.invalid_records = 0
        self._bootstrap_servers = bootstrap_servers
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgramFollower:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        # Asked of the cluster: a consumer without a subscription does not
        # know a topic's partitions, and every one of them must be read.
        known = await partitions_of(self._bootstrap_servers, self.topic)
        consumer = self._consumer = AIOKafkaConsumer(
            **client_options(self._bootstrap_servers), enable_auto_commit=False
        )
        try:
            await consumer.start()
            partitions = [TopicPartition(self.topic, p) for p in known]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            async with asyncio.timeout(self.load_timeout_s):
                while await self._behind(consumer, ends):
                    await self._poll_once(consumer, timeout_ms=500)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._follow(consumer), name=f"follow {self.topic}")

    @staticmethod
    async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for partition, end in ends.items():
            if await consumer.position(partition) < end:
                return True
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._poll_once(consumer, timeout_ms=1000)
            except KafkaError as exc:  # the consumer reconnects by itself
                log.warning("programs topic %s: %s; retrying", self.topic, exc)
                await asyncio.sleep(1.0)

    async def _poll_once(self, consumer: AIOKafkaConsumer, *, timeout_ms: int) -> None:
        batches = await consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for message in records:
                if message.value is None:
                    if message.key:
                        self.catalog.remove(message.key.decode("utf-8", errors="replace"))
                    continue
                try:
                    record = decode(message.value, expect=ProgramRecord)
                    self.catalog.apply(record)
                except (WireFormatError, DSPExError) as exc:
                    # A bad registration must not stop a worker: skip it, loudly.
                    self.invalid_records += 1
                    log.error(
                        "skipping invalid program record at %s[%d]@%d: %s",
                        message.topic,
                        message.partition,
                        message.offset,
                        exc,
                    )
