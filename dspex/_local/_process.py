"""Background service processes: start detached, wait until ready, stop cleanly.

The Kafka broker and the local LM server are both long-running processes that
outlive the ``dspex`` command which started them. Each records a small JSON
state file (pid, host, port, log path) so later commands can report on it and
stop it. This module holds the parts they share; the services themselves live
in :mod:`dspex._local.broker` and :mod:`dspex._local.lm`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dspex.errors import (
    PortInUseError,
    ServiceStartError,
    ServiceStopError,
    StartupTimeoutError,
)

#: Called with a short human-readable status while a service starts.
ProgressCallback = Callable[[str], None]

_POLL_INTERVAL_S = 0.25


def _no_progress(_: str) -> None:
    return None


@dataclass(frozen=True)
class ProcessRecord:
    """What a started service leaves behind in its state file."""

    service: str
    pid: int
    host: str
    port: int
    log_path: str
    started_at: float
    #: A string that appears in the process's command line; guards against a
    #: recycled pid being mistaken for the service.
    marker: str
    details: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def read(cls, path: Path) -> ProcessRecord | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(path)


@dataclass(frozen=True)
class ServiceStatus:
    """The state of a managed service as seen by ``status`` or ``start``."""

    service: str
    running: bool
    record: ProcessRecord | None = None
    #: True when ``start`` found the service already running and left it alone.
    already_running: bool = False


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound because another socket holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts_connections(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, optionally running ``marker``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path("/proc") / str(pid)
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            # The state letter follows the parenthesised command name.
            if stat[stat.rindex(")") + 2] in "ZX":
                return False
            if marker is not None:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                return marker.encode() in cmdline
        except (OSError, ValueError, IndexError):
            return False
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, or an empty string."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DetachedProcess:
    """A child started in its own session, which may outlive this process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code if the process has exited (reaping it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def spawn_detached(
    command: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None
) -> DetachedProcess:
    """Start ``command`` in its own session, output appended to ``log_path``.

    A new session keeps the service alive after the ``dspex`` command exits and
    keeps a Ctrl-C in that terminal from reaching it. ``posix_spawn`` rather
    than ``subprocess.Popen``: a Popen object complains when it is dropped
    while its process runs, which is the whole point here.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.posix_spawnp(
        command[0],
        list(command),
        dict(os.environ if env is None else env),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    return DetachedProcess(pid)


def terminate(pid: int, *, timeout_s: float, service: str, marker: str | None = None) -> None:
    """Send SIGTERM to ``pid`` and wait for it to exit, escalating to SIGKILL.

    Raises:
        ServiceStopError: The process survived SIGKILL too (it should not).
    """
    if marker is not None and not pid_alive(pid, marker):
        return  # already gone, or the pid now belongs to another program
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    # From here on the pid is known to be ours; a dying process may show an
    # empty command line, so liveness is checked without the marker.
    if _wait_gone(pid, timeout_s):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 5.0):
        raise ServiceStopError(
            f"{service} (pid {pid}) did not exit after SIGTERM and SIGKILL", service=service
        )


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    _reap(pid)
    return not pid_alive(pid)


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child, so it is not a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class ManagedService(ABC):
    """A local service run as a detached process with a JSON state file.

    Subclasses say how to prepare, launch and probe the service; this class
    handles the lifecycle: refuse a second instance, check ports, wait for
    readiness with a timeout, notice an early exit, stop with SIGTERM.
    """

    #: Human-readable name used in messages, e.g. ``"kafka broker"``.
    service: str

    def __init__(
        self,
        *,
        state_path: Path,
        log_path: Path,
        host: str,
        port: int,
        start_timeout_s: float,
        stop_timeout_s: float,
    ) -> None:
        self.state_path = state_path
        self.log_path = log_path
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s

    # -- what subclasses provide ------------------------------------------

    @property
    @abstractmethod
    def marker(self) -> str:
        """A string unique to this service's command line."""

    @abstractmethod
    def ports(self) -> list[int]:
        """Every port the service will listen on (checked before starting)."""

    @abstractmethod
    async def prepare(self, progress: ProgressCallback) -> None:
        """Check prerequisites and create files; raise a dspex error if impossible."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    @abstractmethod
    async def is_ready(self) -> bool:
        """Whether the service answers requests."""

    def environment(self) -> dict[str, str]:
        """The environment of the service process."""
        return dict(os.environ)

    def details(self) -> dict[str, str]:
        """Extra facts recorded in the state file (and shown by ``status``)."""
        return {}

    # -- lifecycle ----------------------------------------------------------

    def status(self) -> ServiceStatus:
        """Whether the service recorded in the state file is running."""
        record = ProcessRecord.read(self.state_path)
        if record is None:
            return ServiceStatus(self.service, running=False)
        if not pid_alive(record.pid, record.marker):
            return ServiceStatus(self.service, running=False, record=record)
        return ServiceStatus(self.service, running=True, record=record)

    async def start(self, progress: ProgressCallback = _no_progress) -> ServiceStatus:
        """Start the service unless it is running; return once it is ready.

        Raises:
            PortInUseError: A port is held by some other process.
            ServiceStartError: The process exited before becoming ready.
            StartupTimeoutError: It did not become ready in ``start_timeout_s``.
        """
        current = self.status()
        if current.running:
            return ServiceStatus(
                self.service, running=True, record=current.record, already_running=True
            )
        for port in self.ports():
            if port_in_use(self.host, port):
                raise PortInUseError(
                    f"cannot start {self.service}: port {self.host}:{port} is already in use "
                    "by another process (choose another port)",
                    service=self.service,
                    host=self.host,
                    port=port,
                )
        await self.prepare(progress)
        progress(f"starting {self.service}")
        started_at = time.time()
        proc = spawn_detached(self.command(), log_path=self.log_path, env=self.environment())
        record = ProcessRecord(
            service=self.service,
            pid=proc.pid,
            host=self.host,
            port=self.port,
            log_path=str(self.log_path),
            started_at=started_at,
            marker=self.marker,
            details=self.details(),
        )
        record.write(self.state_path)
        try:
            await self._wait_ready(proc, progress)
        except BaseException:
            # Never leave a half-started process behind (also on Ctrl-C).
            with contextlib.suppress(ServiceStopError):
                terminate(proc.pid, timeout_s=5.0, service=self.service)
            proc.poll()
            self.state_path.unlink(missing_ok=True)
            raise
        return ServiceStatus(self.service, running=True, record=record)

    def stop(self) -> ServiceStatus:
        """Stop the service if it runs; return its status from before the stop.

        Raises:
            ServiceStopError: It did not exit even after SIGKILL.
        """
        current = self.status()
        if current.running and current.record is not None:
            terminate(
                current.record.pid,
                timeout_s=self.stop_timeout_s,
                service=self.service,
                marker=current.record.marker,
            )
        self.state_path.unlink(missing_ok=True)
        return current

    async def _wait_ready(self, proc: DetachedProcess, progress: ProgressCallback) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        started = loop.time()
        while True:
            code = proc.poll()
            if code is not None:
                tail = log_tail(self.log_path, lines=1).strip()
                raise ServiceStartError(
                    f"{self.service} exited with code {code} while starting"
                    + (f": {tail}" if tail else "")
                    + f" (log: {self.log_path})",
                    service=self.service,
                    log_path=self.log_path,
                    exit_code=code,
                )
            if await self.is_ready():
                return
            now = loop.time()
            if now >= deadline:
                raise StartupTimeoutError(
                    f"{self.service} did not become ready within {self.start_timeout_s:g}s "
                    f"(log: {self.log_path})",
                    service=self.service,
                    timeout_s=self.start_timeout_s,
                    log_path=self.log_path,
                )
            progress(
                f"waiting for {self.service} on {self.host}:{self.port} ({now - started:.0f}s)"
            )
            await asyncio.sleep(_POLL_INTERVAL_S)
