"""The local secured broker: its credentials, its settings and its ACLs.

Credentials: a CA, certificates and SCRAM passwords.

``dspex broker start --secure`` keeps them in ``<data dir>/security``, made
once and reused by every later start (the broker's storage holds the SCRAM
users, so the passwords must outlive a restart). Everything is PEM: the broker
reads PEM key and trust stores, and Python's ``ssl`` loads them directly.

Files (private ones readable by the owner only):

* ``ca.pem``: the local CA's certificate, the trust anchor of both sides;
* ``broker.pem``: the broker's private key and certificate chain (names
  ``localhost``, ``127.0.0.1`` and the broker's host);
* ``client.pem`` and ``client-key.pem``: a client certificate for mutual TLS,
  whose principal is ``User:CN=dspex``;
* ``<user>.password`` for the SCRAM users ``admin`` (a super user, for
  setting ACLs), ``dspex`` (what dspex's clients use) and ``reader`` (may
  read and describe, never write: the refusal case of the tests).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dspex.errors import ServiceStartError

if TYPE_CHECKING:
    from dspex._local.broker import BrokerSettings

__all__ = [
    "SCRAM_USERS",
    "BrokerCredentials",
    "ensure_credentials",
    "grant_acls",
    "secure_properties",
]

#: The SCRAM users of the local secured broker.
SCRAM_USERS = ("admin", "dspex", "reader")
#: The client certificate's subject: its principal is ``User:CN=dspex``.
CLIENT_CN = "dspex"
BROKER_CN = "broker"
_VALID = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class BrokerCredentials:
    """Where the secured broker's credentials are (see the module docstring)."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def broker_file(self) -> Path:
        return self.directory / "broker.pem"

    @property
    def client_cert_file(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client-key.pem"

    def password_file(self, user: str) -> Path:
        return self.directory / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text(encoding="utf-8").strip()

    def complete(self) -> bool:
        files = [self.ca_file, self.broker_file, self.client_cert_file, self.client_key_file]
        files += [self.password_file(user) for user in SCRAM_USERS]
        return all(path.is_file() for path in files)


def ensure_credentials(directory: Path, host: str) -> BrokerCredentials:
    """The credentials in ``directory``, made first if any file is missing."""
    found = BrokerCredentials(directory)
    if found.complete():
        return found
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dspex local CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    _write(found.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    broker_key, broker_cert = _leaf(ca_key, ca_name, BROKER_CN, host)
    _write(found.broker_file, _pkcs8(broker_key) + _pem(broker_cert) + _pem(ca_cert))
    client_key, client_cert = _leaf(ca_key, ca_name, CLIENT_CN, host)
    _write(found.client_cert_file, _pem(client_cert) + _pem(ca_cert), private=False)
    _write(found.client_key_file, _pkcs8(client_key))
    for user in SCRAM_USERS:
        _write(found.password_file(user), secrets.token_urlsafe(24).encode())
    return found


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, common_name: str, host: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate for ``common_name``, valid for the local host names."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    addresses = {"127.0.0.1", "::1"}
    try:
        addresses.add(str(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in sorted(addresses)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(subject, ca_name, key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = True) -> None:
    """Write ``data``; a private file is never readable by others, not even for a moment."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    descriptor = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


def secure_properties(settings: BrokerSettings) -> dict[str, str]:
    """What a secure broker sets over the plaintext template.

    Clients: SASL_SSL (SCRAM-SHA-512) on the client port, SSL with a required
    client certificate on the TLS port. The broker reaches its own controller
    over mutual TLS as ``User:CN=broker``. ``StandardAuthorizer`` with no ACL
    meaning no access; the super users are the broker and ``admin``.
    """
    host, credentials = settings.host, settings.credentials
    controller = settings.resolved_controller_port
    return {
        "listeners": f"SASL_SSL://{host}:{settings.port},SSL://{host}:{settings.resolved_tls_port},"
        f"CONTROLLER://{host}:{controller}",
        "advertised.listeners": f"SASL_SSL://{host}:{settings.port},"
        f"SSL://{host}:{settings.resolved_tls_port}",
        "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL,SSL:SSL",
        "inter.broker.listener.name": "SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        # The server side of SCRAM needs no credentials: the users are in the metadata.
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(credentials.broker_file),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(credentials.ca_file),
        "listener.name.ssl.ssl.client.auth": "required",
        "listener.name.controller.ssl.client.auth": "required",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:CN={BROKER_CN};User:admin",
        "allow.everyone.if.no.acl.found": "false",
    }


async def grant_acls(settings: BrokerSettings, command: list[str]) -> None:
    """Grant the ACLs by running ``command`` (the GrantAcls Java source) with them.

    ``dspex`` (SCRAM, and mutual TLS as ``CN=dspex``) may do all dspex does; ``reader``
    may read and describe; nobody else anything (the broker and ``admin`` are super users).
    """
    credentials = settings.credentials
    config = credentials.directory / "admin.properties"
    admin_password = credentials.password("admin")
    lines = [
        f"bootstrap.servers={settings.bootstrap_servers}",
        "security.protocol=SASL_SSL",
        "sasl.mechanism=SCRAM-SHA-512",
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{admin_password}";',
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={credentials.ca_file}",
    ]
    config.touch(mode=0o600)
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    grants = [
        f"{principal},{resource},{name},{operation}"
        for principal in ("User:dspex", f"User:CN={CLIENT_CN}")
        for resource, name, operation in (
            ("TOPIC", "*", "ALL"),
            ("GROUP", "*", "ALL"),
            ("TRANSACTIONAL_ID", "*", "ALL"),
            ("CLUSTER", "kafka-cluster", "CREATE"),
            ("CLUSTER", "kafka-cluster", "DESCRIBE"),
            ("CLUSTER", "kafka-cluster", "DESCRIBE_CONFIGS"),
            ("CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE"),
        )
    ]
    grants += [
        f"User:reader,{resource},*,{operation}"
        for resource in ("TOPIC", "GROUP")
        for operation in ("READ", "DESCRIBE")
    ]
    command = [*command, str(config)]
    proc = await asyncio.create_subprocess_exec(
        *command, *grants, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    if proc.returncode != 0:
        lines = output.decode(errors="replace").strip().splitlines()
        raise ServiceStartError(
            f"granting the secure broker's ACLs failed: {lines[-1] if lines else 'no output'}",
            service="kafka broker",
            exit_code=proc.returncode,
        )
