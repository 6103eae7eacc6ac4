"""`dspex topics create` against the real broker: names, partitions, cleanup policies."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dspex.errors import ConfigurationError
from dspex.streams.topics import TOPICS, TopicNames, create_topics, ensure_topics, partitions_of
from dspex.topologies.settings import TopicSettings


async def _describe(bootstrap: str, names: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, {"cleanup.policy": None}) for n in names]
        )
    finally:
        await admin.close()
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    policies = {
        resource[3]: str(entry[1])
        for response in responses
        for resource in response.resources
        for entry in resource[4]
        if entry[0] == "cleanup.policy"
    }
    return partitions, policies


async def test_every_topic_is_created_once_with_its_partitions_and_policy(
    kafka_bootstrap: str,
) -> None:
    settings = TopicSettings(prefix=f"t{uuid.uuid4().hex[:8]}", partitions=3)
    first = await ensure_topics(kafka_bootstrap, settings)
    names = TopicNames(settings.prefix)
    assert sorted(first.created) == sorted(names.all())
    assert len(first.created) == len(TOPICS) == 11
    assert first.mismatched == []

    partitions, policies = await _describe(kafka_bootstrap, names.all())
    assert partitions[names.inference_requests] == 3
    assert partitions[names.programs] == 1
    assert policies[names.programs] == "compact"
    assert policies[names.eval_reports] == "compact"
    assert policies[names.inference_requests] == "delete"

    again = await ensure_topics(kafka_bootstrap, settings)
    assert again.created == []
    assert sorted(again.existing) == sorted(names.all())
    assert again.mismatched == []


async def test_an_existing_topic_that_differs_is_reported_not_altered(kafka_bootstrap: str) -> None:
    settings = TopicSettings(prefix=f"t{uuid.uuid4().hex[:8]}", partitions=2)
    names = TopicNames(settings.prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await create_topics(admin, [NewTopic(names.programs, 1, 1)])  # not compacted
        await create_topics(admin, [NewTopic(names.inference_requests, 1, 1)])
    finally:
        await admin.close()
    report = await ensure_topics(kafka_bootstrap, settings)
    problems = dict(report.mismatched)
    assert problems[names.programs] == "cleanup.policy=delete, planned compact"
    assert problems[names.inference_requests] == "1 partitions, planned 2"
    _, policies = await _describe(kafka_bootstrap, [names.programs])
    assert policies[names.programs] == "delete"


async def test_a_refused_topic_is_a_clear_error(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        with pytest.raises(ConfigurationError, match="refused to create topic"):
            await create_topics(
                admin,
                [
                    NewTopic(
                        f"t{uuid.uuid4().hex[:8]}", 1, 1, topic_configs={"cleanup.policy": "bad"}
                    )
                ],
            )
    finally:
        await admin.close()


def test_cli_creates_topics_and_reports_an_unreachable_broker(kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "dspex", "topics", "create", "--prefix", prefix]
    created = subprocess.run(
        [*command, "--bootstrap-servers", kafka_bootstrap],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("created  ") == 11
    again = subprocess.run(
        [*command, "--bootstrap-servers", kafka_bootstrap],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.stdout.count("exists   ") == 11

    unreachable = subprocess.run(
        [*command, "--bootstrap-servers", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unreachable.returncode == 1
    assert "error: cannot create topics on Kafka at 127.0.0.1:1" in unreachable.stderr


def test_prefix_must_be_a_legal_topic_name() -> None:
    with pytest.raises(ValueError, match="topic prefix"):
        TopicSettings(prefix="bad prefix!")


async def test_partitions_of_a_fresh_topic_and_of_a_missing_one(kafka_bootstrap: str) -> None:
    """Right after ensure_topics every topic is described; a missing one is a named error."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=3))
    names = TopicNames(prefix)
    assert await partitions_of(kafka_bootstrap, names.inference_requests) == [0, 1, 2]
    missing = f"{prefix}.not-a-topic"
    with pytest.raises(ConfigurationError, match=missing):
        await partitions_of(kafka_bootstrap, missing, settle_s=0.5)
