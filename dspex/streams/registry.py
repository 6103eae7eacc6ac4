"""Registering programs: producing versions to the compacted programs topic.

Example:
    >>> record = await register_program(                     # doctest: +SKIP
    ...     "127.0.0.1:9092", TopicNames(), "qa", ProgramSpec.from_program(qa))
    >>> record.version                                        # doctest: +SKIP
    1
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dspex.errors import ConfigurationError, LocalServiceError
from dspex.programs.state import ProgramSpec
from dspex.streams._connect import start_client
from dspex.streams.catalog import ProgramCatalog, ProgramFollower
from dspex.streams.records import ProgramRecord, encode
from dspex.streams.topics import TopicNames
from dspex.topologies.settings import KafkaTarget, client_options, servers_of

__all__ = ["load_catalog", "register_program"]


async def load_catalog(bootstrap_servers: KafkaTarget, names: TopicNames) -> ProgramCatalog:
    """Every program record on the programs topic, as a catalog."""
    catalog = ProgramCatalog()
    try:
        async with ProgramFollower(
            catalog, bootstrap_servers=bootstrap_servers, topic=names.programs
        ):
            pass
    except (KafkaError, TimeoutError, OSError) as exc:
        raise LocalServiceError(
            f"cannot read {names.programs} from Kafka at {servers_of(bootstrap_servers)}: "
            f"{type(exc).__name__}",
            service="kafka broker",
        ) from exc
    return catalog


async def register_program(
    bootstrap_servers: KafkaTarget,
    names: TopicNames,
    program_id: str,
    spec: ProgramSpec,
    *,
    version: int | None = None,
    description: str = "",
) -> ProgramRecord:
    """Publish ``spec`` as a version of ``program_id`` (default: the next version).

    Workers make it the active version as soon as they read it.

    Raises:
        ConfigurationError: ``version`` is not above every registered version.
        LocalServiceError: Kafka cannot be reached.
    """
    known = (await load_catalog(bootstrap_servers, names)).versions(program_id)
    if version is None:
        version = (known[-1] + 1) if known else 1
    elif known and version <= known[-1]:
        raise ConfigurationError(
            f"program {program_id!r} already has version {known[-1]}; a new version must be higher"
        )
    record = ProgramRecord(
        program_id=program_id, version=version, spec=spec, description=description
    )
    producer = AIOKafkaProducer(**client_options(bootstrap_servers), acks="all")
    try:
        await start_client(producer, bootstrap_servers)
        try:
            await producer.send_and_wait(names.programs, encode(record), key=record.kafka_key())
        finally:
            await producer.stop()
    except KafkaError as exc:
        raise LocalServiceError(
            f"cannot publish to {names.programs} on Kafka at {servers_of(bootstrap_servers)}: "
            f"{type(exc).__name__}",
            service="kafka broker",
        ) from exc
    return record
