"""KafkaExecutor: an optimizer's evaluations, fanned out to the workers.

Each example becomes an :class:`~dspex.streams.records.EvalRequest` on
``dspex.eval.requests``, keyed by program id but placed round-robin over the
topic's partitions, so every worker in the group takes a share. Scores come
back on ``dspex.eval.scores``; this executor reads them from the end of the
topic as it stood before the first request went out, keeps the first score
of each example (a worker restart may score one twice) and yields them as
they arrive.

Memory stays flat however long the run: at most ``max_outstanding`` examples
are unanswered at once, and only those are held (index → example), so that a
score can be paired with its example. A score whose index is not among them
is a duplicate of one already yielded (or not of this run) and is dropped: no
per-run set of seen indexes grows with the run. ``score_registered`` also
takes a lazy iterable of examples with its ``run_size``, so a dataset read
line by line is never in memory whole.

Example:
    >>> async with KafkaExecutor(program_id="classify") as executor:     # doctest: +SKIP
    ...     summary = await executor.evaluate(candidate, valset, "exact_match")
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Final, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from dspex.errors import ConfigurationError, DeadlineExceededError, WireFormatError
from dspex.optimizers.executor import Executor, ScoredOutput, ScoreError
from dspex.programs._scoring import check_inputs_marked
from dspex.programs.example import Example
from dspex.programs.metrics import BUILTIN_METRICS, Metric, metric_name
from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry, ProgramSpec
from dspex.streams.client._kafka import (
    POLL_MS,
    assign,
    kafka_failure,
    new_consumer,
    quietly_stop,
    topic_partitions,
)
from dspex.streams.records import EvalRequest, EvalScore, decode, encode
from dspex.streams.topics import TopicNames
from dspex.topologies.settings import KafkaSettings, KafkaTarget, client_options

__all__ = ["KafkaExecutor"]


class KafkaExecutor(Executor):
    """Runs evaluations on the cluster's workers through the evaluation channel.

    Args:
        program_id: The program the candidates are versions of; workers use
            its LM, as configured in their topology.
        bootstrap_servers: Kafka; default ``DSPEX_BOOTSTRAP_SERVERS``.
        prefix: Topic name prefix of the deployment.
        max_outstanding: Most examples sent and not yet scored.
        idle_timeout_s: Fail when no score arrives for this long.
        metrics: Metrics known by name (the workers must know them too).
        registry: Names of custom module classes, to describe candidates.
    """

    def __init__(
        self,
        *,
        program_id: str,
        bootstrap_servers: KafkaTarget | None = None,
        prefix: str = "dspex",
        max_outstanding: int = 1000,
        idle_timeout_s: float = 300.0,
        metrics: Mapping[str, Metric] = BUILTIN_METRICS,
        registry: ProgramRegistry | None = None,
    ) -> None:
        if max_outstanding < 1:
            raise ConfigurationError("max_outstanding must be at least 1")
        self.program_id = program_id
        self.bootstrap_servers = bootstrap_servers or KafkaSettings()
        self.prefix = prefix
        self.names = TopicNames(prefix)
        self.max_outstanding = max_outstanding
        self.idle_timeout_s = idle_timeout_s
        self.metrics = metrics
        self.registry = registry
        self._producer: Any = None
        self._request_partitions: list[int] = []
        self._score_partitions: list[int] = []

    @property
    def max_in_flight(self) -> int:
        return self.max_outstanding

    async def start(self) -> None:
        producer = AIOKafkaProducer(**client_options(self.bootstrap_servers), linger_ms=5)
        try:
            await producer.start()
            self._request_partitions = await topic_partitions(
                producer,
                self.names.eval_requests,
                bootstrap_servers=self.bootstrap_servers,
                prefix=self.prefix,
            )
            self._score_partitions = await topic_partitions(
                producer,
                self.names.eval_scores,
                bootstrap_servers=self.bootstrap_servers,
                prefix=self.prefix,
            )
        except (KafkaError, OSError) as exc:
            await quietly_stop(producer)
            raise kafka_failure(
                "cannot connect to",
                exc,
                bootstrap_servers=self.bootstrap_servers,
                connect_timeout_s=self.idle_timeout_s,
            ) from exc
        except BaseException:
            await quietly_stop(producer)
            raise
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        await quietly_stop(producer)

    def score(
        self,
        program: Module,
        examples: Sequence[Example],
        metric: Metric | str,
        *,
        rollout_id: str | None = None,
        failure_score: float = 0.0,
    ) -> AsyncIterator[ScoredOutput]:
        spec = ProgramSpec.from_program(program, registry=self.registry)
        return self._run(
            examples,
            metric_name(metric, known=self.metrics),
            run_size=None,
            spec=spec,
            version=None,
            rollout_id=rollout_id,
            failure_score=failure_score,
        )

    def score_registered(
        self,
        examples: Iterable[Example],
        metric: Metric | str,
        *,
        version: int | None = None,
        run_id: str | None = None,
        run_size: int | None = None,
    ) -> AsyncIterator[ScoredOutput]:
        """Score a registered version of :attr:`program_id` (None: the active one).

        Args:
            examples: The examples, with their inputs marked: a sequence, or
                any iterable (read lazily, as requests go out) with ``run_size``.
            metric: A metric the workers know, or its name.
            version: The registered version; None: whichever is active on the
                worker that scores each example.
            run_id: Names the run in requests, scores and the workers' report
                (default: a new random id).
            run_size: How many examples ``examples`` yields; needed when it
                has no ``len()``.

        Raises:
            ConfigurationError: The run size is missing or wrong, or an example
                has no inputs marked (found as it is about to be sent).
            DeadlineExceededError: No score arrived for ``idle_timeout_s``.
        """
        return self._run(
            examples,
            metric_name(metric, known=self.metrics),
            run_size=run_size,
            spec=None,
            version=version,
            run_id=run_id,
        )

    async def _run(
        self,
        examples: Iterable[Example],
        metric: str,
        *,
        run_size: int | None,
        spec: ProgramSpec | None,
        version: int | None,
        rollout_id: str | None = None,
        failure_score: float = 0.0,
        run_id: str | None = None,
    ) -> AsyncIterator[ScoredOutput]:
        if self._producer is None:
            raise ConfigurationError("KafkaExecutor is not started: use `async with` or start()")
        size = _run_size(examples, run_size)
        if size == 0:
            return
        if isinstance(examples, Sequence):
            # All in memory already: check them all, so a bad batch sends nothing.
            for index, example in enumerate(examples):
                check_inputs_marked(example, index)
        run_id = run_id or uuid.uuid4().hex
        consumer = new_consumer(self.bootstrap_servers, f"dspex-eval-{run_id[:8]}")
        await consumer.start()
        try:
            # From the end as it is now: every score of this run comes after.
            await assign(
                consumer, self.names.eval_scores, self._score_partitions, from_beginning=False
            )
            source = iter(examples)
            # The examples sent and not yet scored: the only per-example state.
            pending: dict[int, Example] = {}
            sent = done = 0
            last_score = time.monotonic()
            while done < size:
                while sent < size and len(pending) < self.max_outstanding:
                    example = _next_example(source, sent, size)
                    pending[sent] = example
                    await self._send(
                        run_id,
                        size,
                        sent,
                        example,
                        metric,
                        spec,
                        version,
                        rollout_id,
                        failure_score,
                    )
                    sent += 1
                    if sent == size:
                        _check_exhausted(source, size)
                batches = await consumer.getmany(timeout_ms=POLL_MS)
                for records in batches.values():
                    for record in records:
                        output = self._output(record.key, record.value, run_id, pending)
                        if output is not None:
                            done += 1
                            last_score = time.monotonic()
                            yield output
                if time.monotonic() - last_score > self.idle_timeout_s:
                    raise DeadlineExceededError(
                        f"evaluation run {run_id}: no score for {self.idle_timeout_s:g}s "
                        f"({done}/{size} scored); are workers running for "
                        f"prefix {self.prefix!r}?",
                        timeout_s=self.idle_timeout_s,
                    )
        finally:
            await quietly_stop(consumer)

    async def _send(
        self,
        run_id: str,
        run_size: int,
        index: int,
        example: Example,
        metric: str,
        spec: ProgramSpec | None,
        version: int | None,
        rollout_id: str | None,
        failure_score: float,
    ) -> None:
        request = EvalRequest(
            run_id=run_id,
            run_size=run_size,
            index=index,
            program_id=self.program_id,
            program_version=version,
            spec=spec,
            example=example.to_json()["fields"],
            input_keys=sorted(example.input_keys or ()),
            metric=metric,
            rollout_id=rollout_id,
            failure_score=failure_score,
        )
        partition = self._request_partitions[index % len(self._request_partitions)]
        await self._producer.send(
            self.names.eval_requests,
            encode(request),
            key=request.kafka_key(),
            partition=partition,
        )

    @staticmethod
    def _output(
        key: bytes | None, value: bytes | None, run_id: str, pending: dict[int, Example]
    ) -> ScoredOutput | None:
        if key is not None and key != run_id.encode("utf-8"):
            return None  # scores are keyed by run id: another run's, not worth decoding
        try:
            score = decode(value or b"", expect=EvalScore)
        except WireFormatError:
            return None  # not ours to judge; the scores topic is shared
        if score.run_id != run_id:
            return None
        example = pending.pop(score.index, None)
        if example is None:
            return None  # scored already (a worker restart scores some twice)
        return ScoredOutput(
            index=score.index,
            example=example,
            outputs=score.outputs,
            score=score.score,
            trace=score.trace_steps(),
            usage=score.token_usage(),
            latency_s=score.latency_ms / 1000,
            error=ScoreError(score.error.type, score.error.message) if score.error else None,
        )


#: Marks the end of an examples iterator.
_END: Final = object()


def _run_size(examples: Iterable[Example], run_size: int | None) -> int:
    if isinstance(examples, Sized):
        if run_size is not None and run_size != len(examples):
            raise ConfigurationError(
                f"run_size is {run_size} but the examples number {len(examples)}"
            )
        return len(examples)
    if run_size is None:
        raise ConfigurationError("examples without a len() need run_size: how many there are")
    if run_size < 0:
        raise ConfigurationError(f"run_size must be 0 or more, got {run_size}")
    return run_size


def _next_example(source: Iterator[Example], index: int, size: int) -> Example:
    example = next(source, _END)
    if example is _END:
        raise ConfigurationError(f"the examples ended after {index}; run_size is {size}")
    check_inputs_marked(example, index)
    return cast(Example, example)


def _check_exhausted(source: Iterator[Example], size: int) -> None:
    if next(source, _END) is not _END:
        raise ConfigurationError(f"there are more examples than run_size {size}")
