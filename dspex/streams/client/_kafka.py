"""How a client talks to Kafka: its consumers, topic metadata, errors naming the brokers.

Plain functions over aiokafka clients, with no client state of their own:
:class:`~dspex.streams.client.DSPExClient` passes in its settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from dspex.errors import ConfigurationError, LocalServiceError
from dspex.topologies.settings import KafkaTarget, client_options, servers_of

__all__ = [
    "POLL_MS",
    "assign",
    "kafka_failure",
    "new_consumer",
    "quietly_stop",
    "topic_partitions",
]

# The client's public module names the logger, as before the split, so logging
# configured for "dspex.streams.client" still covers everything the client logs.
log = logging.getLogger("dspex.streams.client")

#: How long one poll of the results topic blocks; bounds how late aclose() notices.
POLL_MS: Final = 500
#: How long start() waits for a topic's metadata (a topic created just before).
_TOPIC_SETTLE_S: Final = 5.0
#: The service named in errors about the cluster.
_KAFKA: Final = "kafka broker"


def new_consumer(bootstrap_servers: KafkaTarget, client_id: str) -> Any:
    return AIOKafkaConsumer(
        **client_options(bootstrap_servers),
        client_id=client_id,
        enable_auto_commit=False,
        # Only if the position vanished (topic recreated): re-read rather than skip.
        auto_offset_reset="earliest",
        # Workers with exactly_once produce results in transactions: a result
        # counts once its transaction commits (an aborted one never arrives).
        isolation_level="read_committed",
    )


async def assign(
    consumer: Any, topic: str, partition_ids: list[int], *, from_beginning: bool
) -> None:
    partitions = [TopicPartition(topic, partition) for partition in partition_ids]
    consumer.assign(partitions)
    if from_beginning:
        await consumer.seek_to_beginning(*partitions)
    else:
        await consumer.seek_to_end(*partitions)
    # Resolve the offsets now: a result produced after start() returns must
    # be after them, whenever the first fetch happens.
    for partition in partitions:
        await consumer.position(partition)


async def topic_partitions(
    producer: Any, topic: str, *, bootstrap_servers: KafkaTarget, prefix: str
) -> list[int]:
    """The topic's partitions; waits briefly for a topic that was just created."""
    try:
        async with asyncio.timeout(_TOPIC_SETTLE_S):
            partitions: set[int] = await producer.partitions_for(topic)
            return sorted(partitions)
    except (TimeoutError, UnknownTopicOrPartitionError):
        raise ConfigurationError(
            f"topic {topic} does not exist on Kafka at {servers_of(bootstrap_servers)}: create "
            f"the topics with `dspex topics create --prefix {prefix}` "
            "(a worker creates them too)"
        ) from None


def kafka_failure(
    action: str, exc: BaseException, *, bootstrap_servers: KafkaTarget, connect_timeout_s: float
) -> LocalServiceError:
    """A one-line error naming the brokers, caused by ``exc``.

    Raised with ``from exc`` where it is raised; handed to waiting calls
    otherwise, so the cause is set here too.
    """
    # aiokafka's messages may start with the class name, shown once here.
    detail = " ".join(str(exc).split()).removeprefix(f"{type(exc).__name__}: ")
    if isinstance(exc, TimeoutError):
        detail = f"no answer within {connect_timeout_s:g}s"
    error = LocalServiceError(
        f"{action} Kafka at {servers_of(bootstrap_servers)}: {type(exc).__name__}"
        + (f" ({detail})" if detail else ""),
        service=_KAFKA,
    )
    error.__cause__ = exc
    return error


async def quietly_stop(*clients: Any) -> None:
    """Stop Kafka clients during shutdown or after a failed start; errors are moot then."""
    for client in clients:
        if client is None:
            continue
        try:
            await client.stop()
        except (KafkaError, OSError) as exc:
            log.debug("stopping %r: %s", client, exc)
