"""A single-node Apache Kafka broker (KRaft) run with the machine's Java.

The broker jars come from Maven Central through ``infra/kafka/pom.xml`` and are
copied into ``infra/kafka/target/lib-<version>`` once. The first start formats
the storage directory; every start renders ``infra/kafka/server.properties``
with the configured ports and paths, launches ``kafka.Kafka`` detached, and
returns when the broker answers a metadata request.

Example:
    >>> settings = BrokerSettings(port=19092)                # doctest: +SKIP
    >>> status = asyncio.run(KafkaBroker(settings).start())  # doctest: +SKIP
    >>> status.record.address                                # doctest: +SKIP
    '127.0.0.1:19092'
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dspex._local._paths import default_state_dir, infra_dir
from dspex._local._process import (
    ManagedService,
    ProgressCallback,
    ServiceStatus,
    accepts_connections,
)
from dspex._local.secure import (
    SCRAM_USERS,
    BrokerCredentials,
    ensure_credentials,
    grant_acls,
    secure_properties,
)
from dspex.errors import DependencyFetchError, JavaNotFoundError, ServiceStartError
from dspex.topologies.settings import KafkaSettings

__all__ = ["DEFAULT_KAFKA_VERSION", "BrokerSettings", "KafkaBroker"]

#: The Apache Kafka release fetched when no other is configured.
DEFAULT_KAFKA_VERSION = "4.3.1"
_MIN_JAVA = 17
_COMPLETE_MARKER = ".complete"


class BrokerSettings(BaseSettings):
    """Settings of the local Kafka broker; each field reads ``DSPEX_BROKER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DSPEX_BROKER_", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on (DSPEX_BROKER_HOST).")
    port: int = Field(9092, ge=1, le=65535, description="Client port (DSPEX_BROKER_PORT).")
    controller_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="KRaft controller port; default port+1 (DSPEX_BROKER_CONTROLLER_PORT).",
    )
    data_dir: Path | None = Field(
        None,
        description="Storage, config, pid file and logs; default <state dir>/kafka "
        "(DSPEX_BROKER_DATA_DIR).",
    )
    kafka_version: str = Field(
        DEFAULT_KAFKA_VERSION, description="Apache Kafka release (DSPEX_BROKER_KAFKA_VERSION)."
    )
    heap: str = Field("512m", description="Java max heap, -Xmx (DSPEX_BROKER_HEAP).")
    start_timeout_s: float = Field(
        90.0, gt=0, description="Seconds to wait for readiness (DSPEX_BROKER_START_TIMEOUT_S)."
    )
    stop_timeout_s: float = Field(
        30.0, gt=0, description="Seconds to wait for shutdown (DSPEX_BROKER_STOP_TIMEOUT_S)."
    )
    fetch_timeout_s: float = Field(
        900.0, gt=0, description="Seconds allowed for Maven (DSPEX_BROKER_FETCH_TIMEOUT_S)."
    )
    secure: bool = Field(
        False,
        description="SASL/SCRAM-SHA-512 over TLS on the client port, mutual TLS on the TLS "
        "port, ACLs enforced, no plaintext listener (DSPEX_BROKER_SECURE).",
    )
    tls_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Mutual-TLS client port of a secure broker; default port+2 "
        "(DSPEX_BROKER_TLS_PORT).",
    )

    @property
    def resolved_data_dir(self) -> Path:
        return (self.data_dir or default_state_dir() / "kafka").expanduser().resolve()

    @property
    def resolved_controller_port(self) -> int:
        return self.controller_port if self.controller_port is not None else self.port + 1

    @property
    def resolved_tls_port(self) -> int:
        return self.tls_port if self.tls_port is not None else self.port + 2

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def credentials(self) -> BrokerCredentials:
        """Where a secure broker keeps its CA, certificates and passwords."""
        return BrokerCredentials(self.resolved_data_dir / "security")

    def client_settings(self, user: str = "dspex") -> KafkaSettings:
        """How a client of this broker connects: plaintext, or SCRAM as ``user`` over TLS."""
        if not self.secure:
            return KafkaSettings(bootstrap_servers=self.bootstrap_servers)
        credentials = self.credentials
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password_file=credentials.password_file(user),
            ssl_cafile=credentials.ca_file,
        )

    def mutual_tls_settings(self) -> KafkaSettings:
        """How a client connects to a secure broker's TLS port with the client certificate."""
        credentials = self.credentials
        return KafkaSettings(
            bootstrap_servers=f"{self.host}:{self.resolved_tls_port}",
            security_protocol="SSL",
            ssl_cafile=credentials.ca_file,
            ssl_certfile=credentials.client_cert_file,
            ssl_keyfile=credentials.client_key_file,
        )


def find_java() -> Path:
    """The ``java`` executable: ``$JAVA_HOME/bin/java``, else the one on ``PATH``.

    Raises:
        JavaNotFoundError: There is none, or it is older than Java 17.
    """
    candidates: list[Path] = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append(Path(java_home) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.is_file() and os.access(java, os.X_OK):
            version = _java_major_version(java)
            if version is not None and version >= _MIN_JAVA:
                return java
            raise JavaNotFoundError(
                f"the Kafka broker needs Java {_MIN_JAVA}+, but {java} is Java "
                f"{version if version is not None else 'of unknown version'}",
                service="kafka broker",
            )
    raise JavaNotFoundError(
        f"Java not found: the Kafka broker needs Java {_MIN_JAVA}+ "
        "(install a JDK/JRE or set JAVA_HOME)",
        service="kafka broker",
    )


def _java_major_version(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_..."
    return int(match.group(2) or 0) if major == 1 else major


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid``, never one starting with ``-``, which
    command-line parsers would read as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def render_server_properties(template: str, settings: BrokerSettings, log_dirs: Path) -> str:
    """Fill the ``@PLACEHOLDERS@`` of ``infra/kafka/server.properties``."""
    replacements = {
        "@HOST@": settings.host,
        "@PORT@": str(settings.port),
        "@CONTROLLER_PORT@": str(settings.resolved_controller_port),
        "@LOG_DIRS@": str(log_dirs),
    }
    for placeholder, value in replacements.items():
        template = template.replace(placeholder, value)
    if settings.secure:
        template = with_properties(template, secure_properties(settings))
    settings_lines = "\n".join(
        line for line in template.splitlines() if not line.lstrip().startswith("#")
    )
    leftover = re.findall(r"@[A-Z_]+@", settings_lines)
    if leftover:
        raise ValueError(f"unfilled placeholders in server.properties: {sorted(set(leftover))}")
    return template


def with_properties(text: str, properties: dict[str, str]) -> str:
    """``text`` (a .properties file) with ``properties`` set: replaced where set, else added."""
    lines = text.splitlines()
    left = dict(properties)
    for index, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and "=" in line and key in left:
            lines[index] = f"{key}={left.pop(key)}"
    lines += [f"{key}={value}" for key, value in left.items()]
    return "\n".join(lines) + "\n"


class KafkaBroker(ManagedService):
    """The local single-node broker: ``fetch``, ``start``, ``status``, ``stop``."""

    service = "kafka broker"

    def __init__(self, settings: BrokerSettings | None = None) -> None:
        self.settings = settings or BrokerSettings()
        data = self.settings.resolved_data_dir
        super().__init__(
            state_path=data / "broker.json",
            log_path=data / "logs" / "server.log",
            host=self.settings.host,
            port=self.settings.port,
            start_timeout_s=self.settings.start_timeout_s,
            stop_timeout_s=self.settings.stop_timeout_s,
        )
        self.data_dir = data
        self.config_path = data / "server.properties"
        self.storage_dir = data / "kraft-logs"
        self._java: Path | None = None

    # -- files --------------------------------------------------------------

    @property
    def kafka_infra(self) -> Path:
        return infra_dir() / "kafka"

    @property
    def lib_dir(self) -> Path:
        return self.kafka_infra / "target" / f"lib-{self.settings.kafka_version}"

    def is_fetched(self) -> bool:
        return (self.lib_dir / _COMPLETE_MARKER).is_file()

    async def fetch(self, progress: ProgressCallback) -> Path:
        """Resolve the broker jars with Maven unless already present.

        Raises:
            DependencyFetchError: Maven is missing, fails, or exceeds its timeout.
        """
        if self.is_fetched():
            return self.lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DependencyFetchError(
                "Maven (mvn) not found on PATH: it is needed once to fetch the Kafka broker "
                f"{self.settings.kafka_version} from Maven Central",
                service=self.service,
            )
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(self.kafka_infra / "pom.xml"),
            f"-Dkafka.version={self.settings.kafka_version}",
            f"-Dlib.dir={self.lib_dir}",
            "dependency:copy-dependencies",
        ]
        message = f"fetching Apache Kafka {self.settings.kafka_version} with Maven"
        progress(message)
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        communicate = asyncio.ensure_future(proc.communicate())
        try:
            async with asyncio.timeout(self.settings.fetch_timeout_s):
                while not communicate.done():
                    await asyncio.wait({communicate}, timeout=0.5)
                    progress(f"{message} ({loop.time() - started:.0f}s)")
                output, _ = communicate.result()
        except TimeoutError:
            communicate.cancel()
            proc.kill()
            await proc.wait()
            raise DependencyFetchError(
                f"Maven did not finish fetching Apache Kafka {self.settings.kafka_version} "
                f"within {self.settings.fetch_timeout_s:g}s",
                service=self.service,
            ) from None
        if proc.returncode != 0:
            raise DependencyFetchError(
                f"Maven could not fetch Apache Kafka {self.settings.kafka_version}: "
                f"{_first_maven_error(output.decode(errors='replace'))}",
                service=self.service,
            )
        (self.lib_dir / _COMPLETE_MARKER).write_text(self.settings.kafka_version)
        return self.lib_dir

    # -- ManagedService -------------------------------------------------------

    @property
    def marker(self) -> str:
        return str(self.config_path)

    def ports(self) -> list[int]:
        ports = [self.settings.port, self.settings.resolved_controller_port]
        return [*ports, self.settings.resolved_tls_port] if self.settings.secure else ports

    async def prepare(self, progress: ProgressCallback) -> None:
        self._java = find_java()
        await self.fetch(progress)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        formatted = (self.storage_dir / "meta.properties").is_file()
        if self.settings.secure:
            if formatted and not self.settings.credentials.complete():
                raise ServiceStartError(
                    f"the broker storage in {self.storage_dir} was made without --secure "
                    "(it has no SCRAM users); start the secure broker with another --data-dir",
                    service=self.service,
                )
            ensure_credentials(self.settings.credentials.directory, self.settings.host)
        template = (self.kafka_infra / "server.properties").read_text(encoding="utf-8")
        self.config_path.write_text(
            render_server_properties(template, self.settings, self.storage_dir), encoding="utf-8"
        )
        if not formatted:
            progress("formatting broker storage")
            await self._format_storage()

    async def _format_storage(self) -> None:
        command = [
            *self._java_command(),
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={new_cluster_id()}",
            "--config",
            str(self.config_path),
            "--ignore-formatted",
        ]
        if self.settings.secure:
            credentials = self.settings.credentials
            for user in SCRAM_USERS:
                password = credentials.password(user)
                command += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ServiceStartError(
                "formatting the broker storage did not finish within 120s", service=self.service
            ) from None
        if proc.returncode != 0:
            lines = output.decode(errors="replace").strip().splitlines()
            raise ServiceStartError(
                f"formatting broker storage in {self.storage_dir} failed: "
                f"{lines[-1] if lines else 'no output'}",
                service=self.service,
                exit_code=proc.returncode,
            )

    def _java_command(self) -> list[str]:
        java = self._java or find_java()
        return [
            str(java),
            f"-Xmx{self.settings.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.kafka_infra / 'log4j2.properties'}",
            "-cp",
            f"{self.lib_dir}/*",
        ]

    def command(self) -> list[str]:
        return [*self._java_command(), "kafka.Kafka", str(self.config_path)]

    def details(self) -> dict[str, str]:
        return {
            "kafka_version": self.settings.kafka_version,
            "data_dir": str(self.data_dir),
            "controller_port": str(self.settings.resolved_controller_port),
        }

    async def is_ready(self) -> bool:
        if not accepts_connections(self.host, self.port, timeout_s=0.5):
            return False
        return await broker_answers_metadata(self.settings.client_settings("admin"))

    async def start(self, progress: ProgressCallback = lambda _: None) -> ServiceStatus:
        """Start the broker (see :meth:`ManagedService.start`); a secure one gets its ACLs."""
        status = await super().start(progress)
        if self.settings.secure and not status.already_running:
            progress("granting ACLs")
            await self._grant_acls()
        return status

    async def _grant_acls(self) -> None:
        await grant_acls(
            self.settings, [*self._java_command(), str(self.kafka_infra / "GrantAcls.java")]
        )


async def broker_answers_metadata(kafka: KafkaSettings | str) -> bool:
    """Whether the broker serves metadata that lists at least one broker."""
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    settings = kafka if isinstance(kafka, KafkaSettings) else KafkaSettings(bootstrap_servers=kafka)
    client = AIOKafkaClient(**settings.client_options(), request_timeout_ms=3000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except (KafkaError, OSError):
        return False
    finally:
        await client.close()


def _first_maven_error(output: str) -> str:
    for line in output.splitlines():
        text = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if text.startswith("[ERROR]") and len(text) > len("[ERROR] "):
            return text.removeprefix("[ERROR]").removesuffix("-> [Help 1]").strip()
    tail = output.strip().splitlines()
    return tail[-1] if tail else "no output"
