"""Which offsets of a channel may be committed, and whose committed offsets to start from.

:class:`Progress` keeps, per partition, the offsets taken and not yet
committable: requests finish out of order, and an offset is committable only
once every earlier one of its partition is answered. :func:`take_over_offsets`
lets a new consumer group start where another left off.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from dspex.streams.worker.inference import Outgoing
from dspex.topologies.settings import KafkaTarget, client_options

__all__ = ["Progress", "committed_offsets", "take_over_offsets"]

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Offsets of one partition taken but not yet committable, in the order taken.

    With exactly-once output a record's answer is held with its offset
    (:meth:`finish` with ``answer``) and moves to ``ready``, in offset order,
    once every earlier offset is answered: what the next transaction produces.
    """

    taken: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    #: The next offset to commit (every earlier one is answered), once one is.
    committable: int | None = None
    committed: int | None = None
    held: dict[int, list[Outgoing]] = field(default_factory=dict)
    ready: list[Outgoing] = field(default_factory=list)

    def finish(self, offset: int, answer: list[Outgoing] | None = None) -> None:
        self.done.add(offset)
        if answer is not None:
            self.held[offset] = answer
        taken, done, held = self.taken, self.done, self.held
        while taken and taken[0] in done:
            done.discard(taken[0])
            first = taken.popleft()
            self.committable = first + 1
            if held:
                self.ready.extend(held.pop(first, ()))

    def take_ready(self) -> tuple[list[Outgoing], int | None]:
        """The answers ready to produce and the offset to commit with them; ready empties."""
        ready, self.ready = self.ready, []
        return ready, self.committable

    def give_back(self, records: list[Outgoing]) -> None:
        """Hold ``records`` again, ahead of what became ready since (a round that failed)."""
        self.ready[:0] = records


async def committed_offsets(
    bootstrap_servers: KafkaTarget, group: str, topic: str
) -> dict[TopicPartition, int]:
    """The offsets ``group`` committed on ``topic``'s partitions (none: an empty dict)."""
    admin = AIOKafkaAdminClient(**client_options(bootstrap_servers))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    }


async def take_over_offsets(
    bootstrap_servers: KafkaTarget, group_id: str, topic: str, *, seed_group: str
) -> None:
    """Commit ``seed_group``'s offsets on ``topic`` into ``group_id`` where it has none.

    Done before the group's first member joins, so the first fetch of each
    partition starts where the seed group left off. A group that already has
    members refuses the commit: one of them did it.
    """
    seed = await committed_offsets(bootstrap_servers, seed_group, topic)
    if not seed:
        return
    own = await committed_offsets(bootstrap_servers, group_id, topic)
    missing = {tp: offset for tp, offset in seed.items() if tp not in own}
    if not missing:
        return
    writer = AIOKafkaConsumer(
        **client_options(bootstrap_servers), group_id=group_id, enable_auto_commit=False
    )
    await writer.start()
    try:
        writer.assign(list(missing))
        await writer.commit(missing)
        log.info(
            "group %s starts %s where group %s left it: %s",
            group_id,
            topic,
            seed_group,
            {tp.partition: offset for tp, offset in sorted(missing.items())},
        )
    except KafkaError as exc:
        log.info("group %s kept its offsets on %s (%s)", group_id, topic, exc)
    finally:
        await writer.stop()
