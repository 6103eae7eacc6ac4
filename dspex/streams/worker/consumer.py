"""A request channel's consumer: aiokafka directly, a bounded set of requests in flight.

Faust's agents carried the channels until measured as their wall (~0.4 ms of
CPU per event in Faust's stream, actor and acknowledgement machinery, against
~0.03 ms for a bare aiokafka consume→produce loop; ``bench.pipeline_overhead``).
:class:`BoundedConsumer` is that bare loop with the worker's guarantees added:

- **Bounded in flight.** Records are fetched in batches of at most the free
  slots (``getmany(max_records=...)``) and each runs as a task; with
  ``inflight_limit`` tasks running, nothing more is taken. When the set stays
  full (a slow or unavailable LM), every owned partition is *paused*, so the
  requests stay in Kafka and the fetcher holds nothing for them; fetching
  resumes as soon as a slot frees. The records aiokafka prefetches otherwise
  are bounded by its fetch sizes.
- **Commit after produce.** A record's offset becomes committable only when
  its result and events are delivered, and only once every earlier offset of
  its partition is too (requests finish out of order). Committable offsets are
  committed every ``commit_interval_s``.
- **Nothing answered twice on a graceful stop or a rebalance.** When
  partitions are revoked (another worker joins, or this one stops), the
  requests in flight from them are finished and committed first, within
  ``drain_timeout_s``; what is still running then is abandoned uncommitted
  and read again by the next owner (at least once). A crash loses at most
  what was in flight and not yet committed.

A record whose results cannot be produced (the broker is away) is tried again
with backoff and not committed until it is; the handler itself never raises
for bad input (it returns a dead letter).

**Liveness** (:mod:`~dspex.streams.worker.liveness`). A consumer whose loop
or commits stop moving — wedged in an await that never returns, the way
Faust's consumer once hung on a commit handed to its thread — is logged with
the stack it is stuck in, counted (``dspex_consumer_stalls_total``) and
replaced within the session timeout: it leaves the group, so its partitions
move on, and a fresh consumer joins. What it had answered but not committed
is read again (at least once).

**Exactly once**, as an option (:mod:`~dspex.streams.worker.transactions`):
answers are held until every earlier offset of their partition is answered,
then produced in one transaction with the offset after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from dspex.streams.metrics import WorkerMetrics
from dspex.streams.worker.delivery import KeyHashPartitioner, deliver
from dspex.streams.worker.inference import Origin, Outgoing
from dspex.streams.worker.liveness import stack, watch
from dspex.streams.worker.offsets import Progress, take_over_offsets
from dspex.streams.worker.transactions import Transactions
from dspex.topologies.settings import KafkaTarget, client_options

__all__ = ["BoundedConsumer", "Handler"]

log = logging.getLogger(__name__)

#: Turns one consumed record (key, value, where it came from) into the records to produce.
Handler = Callable[[bytes | None, bytes | None, Origin], Awaitable[list[Outgoing]]]

#: Seconds the in-flight set may stay full before the owned partitions are paused.
_PAUSE_AFTER_S = 0.5
#: Longest wait of one fetch; also how soon a stop or a pause takes effect.
_FETCH_WAIT_MS = 200
#: Longest the broker holds a fetch request that has nothing new (aiokafka: 500).
_FETCH_MAX_WAIT_MS = 50
#: Share of the session timeout after which a loop or commit that has not moved is a stall;
#: with the watchdog's look every quarter of that, a stall is acted on within the timeout.
_STALL_SHARE = 0.6


class BoundedConsumer(ConsumerRebalanceListener):  # type: ignore[misc]
    """Consume ``topic`` in group ``group_id``, at most ``inflight_limit`` records at a time.

    Args:
        topic: The topic to consume.
        group_id: The consumer group (its committed offsets are where reading starts).
        bootstrap_servers: The Kafka cluster.
        handle: What to produce for one record; must not raise for bad input.
        fallback_topic: Where a record goes whose own topic cannot be produced to.
        inflight_limit: Records handled at once.
        commit_interval_s: Seconds between commits of answered offsets.
        session_timeout_s: The group session timeout (a silent member is dropped after it).
        drain_timeout_s: Longest a revoke or a stop waits for requests in flight.
        stall_after_s: A loop step or commit round older than this is a stall
            (default: 0.6 times ``session_timeout_s``, so that a stalled consumer
            leaves its group within the session timeout).
        metrics: Where pauses, paused partitions and lag are counted (optional).
        channel: The channel name in those metrics.
        seed_group: A group whose committed offsets on ``topic`` are where a
            partition starts when ``group_id`` has committed none for it: the
            group that consumed the topic before (reading resumes there instead
            of at the earliest retained record).
        exactly_once: Produce each partition's answers in transactions with
            its offsets (:mod:`~dspex.streams.worker.transactions`).
        consumer_options: More settings for the ``AIOKafkaConsumer``.
    """

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        bootstrap_servers: KafkaTarget,
        handle: Handler,
        fallback_topic: str,
        inflight_limit: int,
        commit_interval_s: float,
        session_timeout_s: float,
        drain_timeout_s: float,
        stall_after_s: float | None = None,
        metrics: WorkerMetrics | None = None,
        channel: str = "inference",
        seed_group: str | None = None,
        exactly_once: bool = False,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.fallback_topic = fallback_topic
        self.inflight_limit = inflight_limit
        self.commit_interval_s = commit_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.stall_after_s = (
            stall_after_s if stall_after_s is not None else _STALL_SHARE * session_timeout_s
        )
        self.metrics = metrics
        self.channel = channel
        self._handle = handle
        self.seed_group = seed_group
        self.exactly_once = exactly_once
        self._transactions = Transactions(
            group_id=group_id, bootstrap_servers=bootstrap_servers, fallback_topic=fallback_topic
        )
        self._client_options: dict[str, Any] = {
            **client_options(bootstrap_servers),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            # Requests written in transactions (by another stage) count once committed.
            "isolation_level": "read_committed",
            "session_timeout_ms": int(session_timeout_s * 1000),
            "heartbeat_interval_ms": int(max(1.0, session_timeout_s / 5) * 1000),
            "max_poll_records": inflight_limit,
            # How long the broker may hold a fetch with nothing new. aiokafka
            # has one fetch in flight per broker, and a partition whose records
            # are still buffered is left out of it: with traffic on one partition
            # and none on the others, that partition's next records waited out
            # the long poll of the idle ones, 500 ms by default, on every cycle
            # (p50 latency ~450 ms at 700 requests/s; ~9 ms at 50).
            "fetch_max_wait_ms": _FETCH_MAX_WAIT_MS,
            **(consumer_options or {}),
        }
        self._bootstrap_servers = bootstrap_servers
        # Created by start(): aiokafka's clients belong to the loop they are made in.
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._progress: dict[TopicPartition, Progress] = {}
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._last_step = self._last_commit = time.monotonic()
        self._rebalancing = False
        self._rejoining: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._slot_free = asyncio.Event()
        self._paused = False
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Connect, join the group and start consuming in the background."""
        producer = AIOKafkaProducer(
            **client_options(self._bootstrap_servers),
            acks="all",
            partitioner=KeyHashPartitioner(),
        )
        if self.seed_group is not None:
            await take_over_offsets(
                self._bootstrap_servers, self.group_id, self.topic, seed_group=self.seed_group
            )
        await producer.start()
        self._producer = producer
        try:
            await self._join()
        except BaseException:
            self._producer = None
            await producer.stop()
            raise
        self._watchdog = asyncio.create_task(watch(self), name=f"dspex-{self.channel}-watchdog")
        if self.metrics is not None:
            self.metrics.consumer_step_age.labels(self.channel).set_function(
                lambda: time.monotonic() - self._last_step
            )

    async def _join(self) -> None:
        """A new consumer joins the group; the loop and the commit rounds start."""
        consumer = AIOKafkaConsumer(**self._client_options)
        # Set before the consumer starts: joining the group calls the listener.
        self._consumer = consumer
        try:
            consumer.subscribe([self.topic], listener=self)
            await consumer.start()
        except BaseException:
            self._consumer = None
            with contextlib.suppress(Exception):
                await consumer.stop()  # what it opened before failing
            raise
        self._last_step = self._last_commit = time.monotonic()
        self._runner = asyncio.create_task(self._run(), name=f"dspex-{self.channel}-consumer")
        self._committer = asyncio.create_task(
            self._commit_periodically(), name=f"dspex-{self.channel}-commits"
        )

    @property
    def started(self) -> bool:
        return self._consumer is not None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The Kafka consumer (once started)."""
        if self._consumer is None:
            raise RuntimeError(f"the {self.channel} consumer is not started")
        return self._consumer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer of results and events (once started)."""
        if self._producer is None:
            raise RuntimeError(f"the {self.channel} consumer is not started")
        return self._producer

    async def stop(self) -> None:
        """Stop taking records, finish and commit what is in flight, then leave the group."""
        if self._stopping or self._runner is None:  # already stopped, or never started
            self._stopping = True
            return
        self._stopping = True
        loops = [
            t
            for t in (self._watchdog, self._rejoining, self._runner, self._committer)
            if t is not None
        ]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self._drain(set(self._progress))
        try:
            if self._consumer is not None:  # None: stopped while being replaced
                await self._consumer.stop()  # leaves the group: its partitions move on now
        finally:
            await self._transactions.close()
            await self.producer.stop()

    def paused_partitions(self) -> set[TopicPartition]:
        return set(self.consumer.paused())

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self.consumer
        # The flag too, not only the task's cancellation: on Python 3.11 a
        # cancellation that meets a completing wait_for can be lost.
        while not self._stopping:
            self._last_step = time.monotonic()
            free = self.inflight_limit - len(self._tasks)
            if free <= 0:
                await self._wait_for_slot()
                continue
            if self._paused:
                self._resume()
            batches = await consumer.getmany(timeout_ms=_FETCH_WAIT_MS, max_records=free)
            for tp, records in batches.items():
                progress = self._progress.get(tp)
                if progress is None:  # assigned since the listener ran
                    progress = self._progress[tp] = Progress()
                for record in records:
                    progress.taken.append(record.offset)
                    self._spawn(tp, self._process(progress, record))

    def _spawn(self, tp: TopicPartition, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as an in-flight task of partition ``tp``."""
        task = asyncio.create_task(work)
        self._tasks[task] = tp
        task.add_done_callback(self._finished)

    async def _wait_for_slot(self) -> None:
        """Wait until a request finishes; pause every partition while it takes long."""
        self._slot_free.clear()
        if self.metrics is not None:
            self.metrics.buffer_full.labels(self.channel).inc()
        if not self._paused:
            try:
                async with asyncio.timeout(_PAUSE_AFTER_S):
                    await self._slot_free.wait()
                return
            except TimeoutError:
                self._pause()
        # Paused partitions return nothing, and a fetch keeps the consumer known
        # to be alive (a member that stops fetching is dropped from the group).
        waiter = asyncio.ensure_future(self._slot_free.wait())
        try:
            while not waiter.done() and not self._stopping:
                self._last_step = time.monotonic()
                await self.consumer.getmany(timeout_ms=0)
                await asyncio.wait([waiter], timeout=_FETCH_WAIT_MS / 1000)
        finally:
            waiter.cancel()

    def _pause(self) -> None:
        owned = self.consumer.assignment()
        if owned:
            self.consumer.pause(*owned)
        self._paused = True
        if self.metrics is not None:
            self.metrics.paused_partitions.labels(self.channel).set(len(owned))

    def _resume(self) -> None:
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)
        self._paused = False
        if self.metrics is not None:
            self.metrics.paused_partitions.labels(self.channel).set(0)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("handling a record failed", exc_info=task.exception())

    async def _process(self, progress: Progress, record: Any) -> None:
        """Handle one record, deliver its records, then mark it answered in ``progress``.

        ``progress`` is the one its offset was taken into: once a revoke or a
        restart dropped it, finishing there commits nothing.
        """
        origin = Origin(record.topic, record.partition, record.offset)
        try:
            outgoing = await self._handle(record.key, record.value, origin)
        except Exception:  # a bug: the handler answers bad input itself
            log.exception("handling %s failed; skipping it", origin)
            outgoing = []
        if self.exactly_once:  # produced by the commit round, with the offset
            progress.finish(record.offset, outgoing)
            return
        await deliver(self._send, outgoing, fallback_topic=self.fallback_topic, origin=origin)
        progress.finish(record.offset)

    def _send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Awaitable[Any]]:
        return self.producer.send(topic, value, key=key)  # type: ignore[no-any-return]

    # -- commits and rebalances -----------------------------------------------

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval_s)
            try:
                await self._commit()
            except KafkaError as exc:  # tried again next round; at least once holds
                log.warning("committing offsets of %s failed: %s", self.topic, exc)
            # A round that ended, well or not, is a step: a stall is one that never ends.
            self._last_commit = time.monotonic()
            if self._transactions.fenced:
                # Rejoining cancels this task: the rejoin runs as a task of its own.
                self._rejoining = asyncio.create_task(self._rejoin(), name="dspex-rejoin")
                return

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        async with self._commit_lock:
            owned = self.consumer.assignment()
            if self.exactly_once:
                chosen = {tp for tp in owned if partitions is None or tp in partitions}
                await self._transactions.commit(self._progress, chosen)
                return
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, progress in self._progress.items():
                if tp not in owned or (partitions is not None and tp not in partitions):
                    continue
                if progress.committable is not None and progress.committable != progress.committed:
                    offsets[tp] = OffsetAndMetadata(progress.committable, "")
            if not offsets:
                return
            await self.consumer.commit(offsets)
            for tp, meta in offsets.items():
                self._progress[tp].committed = meta.offset

    async def _drain(self, partitions: set[TopicPartition]) -> None:
        """Finish the requests in flight from ``partitions`` and commit them."""
        if not partitions:
            return
        started = time.monotonic()
        running = [task for task, tp in self._tasks.items() if tp in partitions]
        if running:
            _, late = await asyncio.wait(running, timeout=self.drain_timeout_s)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "%d request(s) from %s still running after %gs; the next owner answers them",
                    len(late),
                    sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
                    time.monotonic() - started,
                )
                await asyncio.gather(*late, return_exceptions=True)
        try:
            await self._commit(partitions)
        except KafkaError as exc:
            log.warning("committing before giving up %s failed: %s", sorted(partitions), exc)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._rebalancing = True
        owned = set(revoked)
        await self._drain(owned)
        await self._transactions.close(owned)
        for tp in owned:
            self._progress.pop(tp, None)
        if self._paused and self.metrics is not None:
            self.metrics.paused_partitions.labels(self.channel).set(len(self.consumer.paused()))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._rebalancing = False
        self._last_step = self._last_commit = time.monotonic()
        for tp in assigned:
            self._progress.setdefault(tp, Progress())
        if self.exactly_once:
            await self._transactions.open(assigned)
        if self._paused and assigned:
            self.consumer.pause(*assigned)
            if self.metrics is not None:
                self.metrics.paused_partitions.labels(self.channel).set(len(self.consumer.paused()))

    # -- liveness -------------------------------------------------------------

    def ages(self) -> tuple[float, float, bool]:
        """Seconds since the loop's last step and since the last commit round ended,
        and whether a rebalance is under way (for :func:`watch`)."""
        now = time.monotonic()
        return now - self._last_step, now - self._last_commit, self._rebalancing

    async def replace(self, step_age: float, commit_age: float) -> None:
        """Log and count a stall, leave the group, and join again with a fresh consumer."""
        stuck = [t for t in (self._runner, self._committer) if t is not None and not t.done()]
        where = "".join(stack(task) for task in stuck)
        log.error(
            "the %s consumer of %s stalled (last step %.1fs ago, last commit round %.1fs ago); "
            "it leaves group %s so its partitions move on, and a new one joins. Stuck in:\n%s",
            self.channel,
            self.topic,
            step_age,
            commit_age,
            self.group_id,
            where,
        )
        if self.metrics is not None:
            self.metrics.consumer_stalls.labels(self.channel).inc()
        await self._rejoin()

    async def _rejoin(self) -> None:
        """Leave the group with what was not committed, and join again with a fresh consumer."""
        stuck = [t for t in (self._runner, self._committer) if t is not None and not t.done()]
        for task in stuck:
            task.cancel()
        if stuck:  # a wedged await may not even end when cancelled
            await asyncio.wait(stuck, timeout=1.0)
        old, self._consumer = self._consumer, None
        self._progress.clear()  # answered but uncommitted offsets are read again
        await self._transactions.close()  # their open rounds are aborted
        self._commit_lock = asyncio.Lock()  # a wedged commit may hold the old one for good
        self._paused = False
        if old is not None:
            try:
                async with asyncio.timeout(self.stall_after_s):
                    await old.stop()  # leaves the group
            except TimeoutError:
                log.error("the stalled %s consumer did not close; abandoning it", self.channel)
        await self._join()
