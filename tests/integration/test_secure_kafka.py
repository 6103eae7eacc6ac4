"""A secured broker (``dspex broker start --secure``): SCRAM over TLS, mutual TLS, ACLs.

One real broker for the module, with its own CA, certificates and SCRAM
users, on free ports. A worker and the client connect with the right
credentials end to end (the worker's from its topology, the client's from
the same settings object, a second client by its certificate); a wrong
password fails fast with a message naming the refusal and exit code 4; a
principal with no WRITE ACL is refused; nothing speaks plaintext; the
password is in no output.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

import dspex
from dspex._local._process import free_port
from dspex._local.broker import BrokerSettings, KafkaBroker
from dspex.errors import KafkaAuthError
from dspex.programs.state import ProgramSpec
from dspex.streams import DSPExClient
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import KafkaSettings, TopicSettings
from tests.support.deployment import scripted_lm_process, start_worker, stop_worker

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSettings]:
    settings = BrokerSettings(
        port=free_port(),
        controller_port=free_port(),
        tls_port=free_port(),
        data_dir=tmp_path_factory.mktemp("secure-kafka"),
        secure=True,
    )
    broker = KafkaBroker(settings)
    asyncio.run(broker.start())
    try:
        yield settings
    finally:
        broker.stop()


def test_a_worker_and_clients_with_the_right_credentials_work_end_to_end(
    secure_broker: BrokerSettings, tmp_path: Path
) -> None:
    kafka = secure_broker.client_settings("dspex")
    prefix = f"s{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    with scripted_lm_process(text=json.dumps({"answer": "ok"})) as lm_url:
        topology = tmp_path / "topology.yaml"
        topology.write_text(
            yaml.safe_dump(
                {
                    "name": prefix,
                    "kafka": kafka.model_dump(mode="json", exclude_none=True),
                    "topics": {"prefix": prefix, "partitions": 1},
                    "lms": {"lm": {"model": "scripted", "base_url": lm_url}},
                }
            )
        )

        async def set_up() -> None:
            await ensure_topics(kafka, TopicSettings(prefix=prefix, partitions=1))
            program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
            await register_program(kafka, names, "echo", ProgramSpec.from_program(program))

        asyncio.run(set_up())
        worker = start_worker(topology, "secure")
        try:

            async def ask(settings: KafkaSettings) -> str:
                async with DSPExClient(bootstrap_servers=settings, prefix=prefix) as client:
                    result = await client.run("echo", question="why?", timeout_s=120)
                assert result.status == "ok", result
                return str(result.outputs["answer"])

            assert asyncio.run(ask(kafka)) == "ok"
            assert asyncio.run(ask(secure_broker.mutual_tls_settings())) == "ok"
        finally:
            code, log = stop_worker(worker)
    assert code == 0, log[-3000:]
    for user in ("dspex", "admin"):
        assert secure_broker.credentials.password(user) not in log


def test_a_wrong_password_fails_fast_naming_the_refusal_with_exit_code_4(
    secure_broker: BrokerSettings, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "DSPEX_BOOTSTRAP_SERVERS": secure_broker.bootstrap_servers,
        "DSPEX_SECURITY_PROTOCOL": "SASL_SSL",
        "DSPEX_SASL_USERNAME": "dspex",
        "DSPEX_SASL_PASSWORD_ENV": "KAFKA_PASSWORD",
        "KAFKA_PASSWORD": wrong,
        "DSPEX_SSL_CAFILE": str(secure_broker.credentials.ca_file),
    }
    done = subprocess.run(
        [sys.executable, "-m", "dspex", "programs", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4, done.stderr
    assert "refused user 'dspex' (SCRAM-SHA-512)" in done.stderr
    assert wrong not in done.stdout + done.stderr


async def test_the_client_says_its_credentials_were_refused(secure_broker: BrokerSettings) -> None:
    right = secure_broker.client_settings("dspex")
    wrong = right.model_copy(update={"sasl_username": "nobody"})
    with pytest.raises(KafkaAuthError, match="refused user 'nobody'"):
        async with DSPExClient(bootstrap_servers=wrong, connect_timeout_s=30):
            pass


async def test_a_principal_without_a_write_acl_is_refused(secure_broker: BrokerSettings) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        secure_broker.client_settings("dspex"), TopicSettings(prefix=prefix, partitions=1)
    )
    reader = AIOKafkaProducer(**secure_broker.client_settings("reader").client_options())
    await reader.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await reader.send_and_wait(TopicNames(prefix).inference_requests, b"{}")
    finally:
        await reader.stop()


@pytest.mark.parametrize("port", ["port", "resolved_tls_port", "resolved_controller_port"])
async def test_no_port_speaks_plaintext(secure_broker: BrokerSettings, port: str) -> None:
    address = f"{secure_broker.host}:{getattr(secure_broker, port)}"
    plain = AIOKafkaProducer(bootstrap_servers=address, request_timeout_ms=5000)
    try:
        with pytest.raises(KafkaConnectionError):
            await plain.start()
    finally:
        await plain.stop()
