"""The Kafka topics of a dspex deployment, and the admin step that creates them.

Every topic belongs to one channel (inference, evaluation, feedback,
coordination, telemetry), so a backlog on one never delays another. Names are
``<prefix>.<topic>`` (default prefix ``dspex``), so several deployments can
share a cluster. The broker's automatic topic creation is off in dspex's
broker configuration: topics are created here, with the partitions and cleanup
policy each needs.

Example:
    >>> names = TopicNames(prefix="staging")
    >>> names.inference_requests
    'staging.inference.requests'
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from dspex.errors import ConfigurationError, LocalServiceError
from dspex.streams._connect import start_client
from dspex.topologies.settings import KafkaTarget, TopicSettings, client_options, servers_of

__all__ = [
    "TOPICS",
    "Channel",
    "EnsureReport",
    "TopicNames",
    "TopicSpec",
    "create_topics",
    "ensure_topics",
    "partitions_of",
    "plan_topics",
]


class Channel(StrEnum):
    """Independent flows of records; each has its own topics and consumer groups."""

    INFERENCE = "inference"
    EVALUATION = "evaluation"
    FEEDBACK = "feedback"
    COORDINATION = "coordination"
    TELEMETRY = "telemetry"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the design: its suffix, channel, key and retention."""

    suffix: str
    channel: Channel
    key: str
    purpose: str
    compacted: bool = False
    #: Coordination topics carry few records; one partition keeps them ordered.
    coordination: bool = False


#: Every topic of a deployment (DESIGN §4), in channel order.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("inference.requests", Channel.INFERENCE, "program_id", "requests to run a program"),
    TopicSpec("inference.results", Channel.INFERENCE, "request_id", "outputs or a typed error"),
    TopicSpec(
        "inference.dlq", Channel.INFERENCE, "original key", "records that could not be parsed"
    ),
    TopicSpec("eval.requests", Channel.EVALUATION, "program_id", "one example to score"),
    TopicSpec("eval.scores", Channel.EVALUATION, "run_id", "scored outputs, one per example"),
    TopicSpec(
        "eval.reports", Channel.EVALUATION, "run_id", "running aggregate per run", compacted=True
    ),
    TopicSpec("feedback", Channel.FEEDBACK, "request_id", "scores and labels for results"),
    TopicSpec(
        "programs",
        Channel.COORDINATION,
        "program_id",
        "the versions of each program",
        compacted=True,
        coordination=True,
    ),
    TopicSpec(
        "candidates", Channel.COORDINATION, "program_id", "proposed versions", coordination=True
    ),
    TopicSpec(
        "control",
        Channel.COORDINATION,
        "program_id",
        "optimize, promote, rollback, pause",
        coordination=True,
    ),
    TopicSpec("telemetry", Channel.TELEMETRY, "program_id", "one event per request and LM call"),
)


class TopicNames:
    """Full topic names under a prefix, as attributes (``names.inference_requests``)."""

    def __init__(self, prefix: str = "dspex") -> None:
        self.prefix = TopicSettings(prefix=prefix).prefix
        # Looked up for every record a worker produces: built once.
        self._names = {spec.suffix: f"{self.prefix}.{spec.suffix}" for spec in TOPICS}

    def name(self, suffix: str) -> str:
        try:
            return self._names[suffix]
        except KeyError:
            raise ConfigurationError(f"no dspex topic {suffix!r}") from None

    @property
    def inference_requests(self) -> str:
        return self.name("inference.requests")

    @property
    def inference_results(self) -> str:
        return self.name("inference.results")

    @property
    def inference_dlq(self) -> str:
        return self.name("inference.dlq")

    @property
    def eval_requests(self) -> str:
        return self.name("eval.requests")

    @property
    def eval_scores(self) -> str:
        return self.name("eval.scores")

    @property
    def eval_reports(self) -> str:
        return self.name("eval.reports")

    @property
    def feedback(self) -> str:
        return self.name("feedback")

    @property
    def programs(self) -> str:
        return self.name("programs")

    @property
    def candidates(self) -> str:
        return self.name("candidates")

    @property
    def control(self) -> str:
        return self.name("control")

    @property
    def telemetry(self) -> str:
        return self.name("telemetry")

    def all(self) -> list[str]:
        return [self.name(spec.suffix) for spec in TOPICS]


@dataclass(frozen=True)
class PlannedTopic:
    """A topic as it should exist on the cluster."""

    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    spec: TopicSpec


def plan_topics(settings: TopicSettings) -> list[PlannedTopic]:
    """Every topic of the deployment with its partitions and configuration."""
    names = TopicNames(settings.prefix)
    return [
        PlannedTopic(
            name=names.name(spec.suffix),
            partitions=settings.coordination_partitions
            if spec.coordination
            else settings.partitions,
            replication_factor=settings.replication_factor,
            configs={"cleanup.policy": "compact" if spec.compacted else "delete"},
            spec=spec,
        )
        for spec in TOPICS
    ]


@dataclass
class EnsureReport:
    """What :func:`ensure_topics` found and did."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    #: Existing topics that differ from the plan, with what differs.
    mismatched: list[tuple[str, str]] = field(default_factory=list)


async def ensure_topics(
    bootstrap_servers: KafkaTarget, settings: TopicSettings, *, timeout_s: float = 30.0
) -> EnsureReport:
    """Create the missing topics of the deployment; report ones that differ.

    Existing topics are never altered: a topic with fewer partitions or another
    cleanup policy than planned is reported in ``mismatched``.

    Raises:
        LocalServiceError: The cluster cannot be reached within ``timeout_s``.
    """
    plan = plan_topics(settings)
    admin = AIOKafkaAdminClient(
        **client_options(bootstrap_servers), request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        async with asyncio.timeout(timeout_s):
            await start_client(admin, bootstrap_servers)
            try:
                return await _ensure(admin, plan)
            finally:
                await admin.close()
    except (KafkaError, TimeoutError, OSError) as exc:
        raise LocalServiceError(
            f"cannot create topics on Kafka at {servers_of(bootstrap_servers)}: "
            f"{type(exc).__name__} {exc}".strip(),
            service="kafka broker",
        ) from exc


async def _ensure(admin: AIOKafkaAdminClient, plan: Sequence[PlannedTopic]) -> EnsureReport:
    report = EnsureReport()
    existing = set(await admin.list_topics())
    missing = [topic for topic in plan if topic.name not in existing]
    if missing:
        raced = await create_topics(
            admin,
            [
                NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.configs)
                for t in missing
            ],
        )
        report.created = [t.name for t in missing if t.name not in raced]
        existing |= raced
    present = [topic for topic in plan if topic.name in existing]
    report.existing = [t.name for t in present]
    if present:
        report.mismatched = await _differences(admin, present)
    return report


async def partitions_of(
    bootstrap_servers: KafkaTarget, topic: str, *, settle_s: float = 5.0
) -> list[int]:
    """The partition numbers of an existing topic.

    A topic created a moment ago (by this or another client) may take a few
    seconds to appear in the metadata of a busy broker: it is waited for up
    to ``settle_s``.

    Raises:
        ConfigurationError: The topic does not exist.
    """
    admin = AIOKafkaAdminClient(**client_options(bootstrap_servers))
    await start_client(admin, bootstrap_servers)
    try:
        counts = await _partition_counts(admin, [topic], settle_s=settle_s)
    finally:
        await admin.close()
    if not counts.get(topic):
        raise ConfigurationError(
            f"topic {topic} does not exist: create it with `dspex topics create`"
        )
    return list(range(counts[topic]))


async def create_topics(admin: AIOKafkaAdminClient, topics: Sequence[NewTopic]) -> set[str]:
    """Create ``topics``; return the names that already existed.

    Raises:
        ConfigurationError: The broker refused a topic (bad name, too many
            partitions, invalid config), naming it and the reason.
    """
    response = await admin.create_topics(list(topics))
    already: set[str] = set()
    for name, code, message in _topic_errors(response):
        if code == TopicAlreadyExistsError.errno:
            already.add(name)
        elif code != 0:
            raise ConfigurationError(
                f"Kafka refused to create topic {name}: {for_code(code).__name__}"
                + (f" ({message})" if message else "")
            )
    return already


async def _partition_counts(
    admin: AIOKafkaAdminClient, names: list[str], *, settle_s: float
) -> dict[str, int]:
    """Partitions per topic; waits up to ``settle_s`` for topics just created.

    Right after creation a topic's metadata may not have reached the broker
    that answers, which would read as "0 partitions" (seen taking over 5 s on
    a loaded machine).
    """
    deadline = asyncio.get_running_loop().time() + settle_s
    while True:
        described = await admin.describe_topics(names)
        counts = {
            d["topic"]: 0 if d.get("error_code") else len(d.get("partitions", []))
            for d in described
        }
        if all(counts.get(n, 0) > 0 for n in names):
            return counts
        if asyncio.get_running_loop().time() >= deadline:
            return counts
        await asyncio.sleep(0.2)


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    """``(topic, error code, message)`` of a CreateTopics response (any version)."""
    errors = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        errors.append((str(name), int(code), str(message) if message else None))
    return errors


async def _differences(
    admin: AIOKafkaAdminClient, topics: Sequence[PlannedTopic]
) -> list[tuple[str, str]]:
    # Bounded by ensure_topics' own timeout.
    partitions = await _partition_counts(admin, [t.name for t in topics], settle_s=25.0)
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t.name, {"cleanup.policy": None}) for t in topics]
    )
    policies: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            name, entries = resource[3], resource[4]
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    policies[name] = str(entry[1])
    problems: list[tuple[str, str]] = []
    for topic in topics:
        have = partitions.get(topic.name, 0)
        if have < topic.partitions:
            problems.append((topic.name, f"{have} partitions, planned {topic.partitions}"))
        want = topic.configs["cleanup.policy"]
        if policies.get(topic.name, want) != want:
            problems.append((topic.name, f"cleanup.policy={policies[topic.name]}, planned {want}"))
    return problems
