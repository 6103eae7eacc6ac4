"""Starting a Kafka client, and saying why when the cluster refuses it.

aiokafka reports a refused SASL login or TLS handshake as it reports an
unreachable broker: ``KafkaConnectionError: Unable to bootstrap``. When a
secured client cannot start, one more connection to the first bootstrap
server finds out whether the credentials were the problem, so the error
says so (:class:`~dspex.errors.KafkaAuthError`, exit code 4 in the CLI).
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError

from dspex.errors import KafkaAuthError
from dspex.topologies.settings import KafkaSettings, KafkaTarget, kafka_settings

__all__ = ["refusal", "start_client"]

_SECURITY_OPTIONS = (
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


async def start_client(client: Any, kafka: KafkaTarget) -> None:
    """``await client.start()`` (a producer, consumer or admin client).

    Raises:
        KafkaAuthError: The cluster refused the credentials (the client is stopped).
        KafkaError: As ``start()`` raises it, for anything else.
    """
    try:
        await client.start()
    except KafkaConnectionError as exc:
        refused = await refusal(kafka_settings(kafka))
        if refused is None:
            raise
        await (client.close() if hasattr(client, "close") else client.stop())
        raise refused from exc


async def refusal(kafka: KafkaSettings) -> KafkaAuthError | None:
    """The error to raise if the first bootstrap server refuses ``kafka``'s credentials."""
    if not kafka.secured:
        return None
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = kafka.client_options()
    who = (
        f"user {kafka.sasl_username!r} ({kafka.sasl_mechanism})"
        if kafka.security_protocol.startswith("SASL_")
        else f"certificate {kafka.ssl_certfile}"
        if kafka.ssl_certfile
        else "TLS"
    )
    try:
        conn = await create_conn(
            host.strip("[]"),
            int(port),
            request_timeout_ms=10_000,
            **{key: options[key] for key in _SECURITY_OPTIONS if key in options},
        )
    except ssl.SSLError as exc:
        reason = exc.reason or type(exc).__name__
    except KafkaError as exc:
        if not type(exc).__name__.startswith(("SaslAuthentication", "Authentication")):
            return None
        reason = " ".join(str(exc).split())
    except (OSError, ValueError):
        return None  # unreachable, or not a broker: not a matter of credentials
    else:
        conn.close()
        return None
    return KafkaAuthError(
        f"Kafka at {kafka.bootstrap_servers} refused {who}: {reason}", service="kafka broker"
    )
