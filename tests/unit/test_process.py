"""The lifecycle shared by local services, on small real processes."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from dspex._local._process import (
    ManagedService,
    ProgressCallback,
    accepts_connections,
    free_port,
    pid_alive,
    port_in_use,
)
from dspex.errors import PortInUseError, ServiceStartError, StartupTimeoutError


class HttpService(ManagedService):
    """``python -m http.server`` as a managed service."""

    service = "test http server"

    def __init__(
        self, tmp: Path, port: int, *, start_timeout_s: float = 20.0, argv: list[str] | None = None
    ) -> None:
        super().__init__(
            state_path=tmp / "svc.json",
            log_path=tmp / "svc.log",
            host="127.0.0.1",
            port=port,
            start_timeout_s=start_timeout_s,
            stop_timeout_s=5.0,
        )
        self.argv = argv
        self.ready_checks = 0

    @property
    def marker(self) -> str:
        return f"http.server {self.port}"

    def ports(self) -> list[int]:
        return [self.port]

    async def prepare(self, progress: ProgressCallback) -> None:
        progress("preparing")

    def command(self) -> list[str]:
        if self.argv is not None:
            return self.argv
        return [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"]

    async def is_ready(self) -> bool:
        self.ready_checks += 1
        return accepts_connections(self.host, self.port)


async def test_start_status_second_start_and_stop(tmp_path: Path) -> None:
    svc = HttpService(tmp_path, free_port())
    messages: list[str] = []
    status = await svc.start(messages.append)
    try:
        assert status.running
        assert not status.already_running
        assert status.record is not None
        assert accepts_connections("127.0.0.1", svc.port)
        assert "preparing" in messages
        assert svc.status().running

        again = await HttpService(tmp_path, svc.port).start()
        assert again.already_running
        assert again.record is not None
        assert again.record.pid == status.record.pid
    finally:
        stopped = svc.stop()
    assert stopped.running
    assert not pid_alive(status.record.pid)
    assert not svc.status().running
    assert not svc.state_path.exists()


async def test_port_taken_by_another_process_is_named(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port} is already in use") as info:
            await HttpService(tmp_path, port).start()
    assert info.value.port == port


async def test_process_that_exits_early_reports_code_and_output(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad flag --frob'); sys.exit(3)"]
    svc = HttpService(tmp_path, free_port(), argv=argv)
    with pytest.raises(ServiceStartError, match=r"exited with code 3.*bad flag --frob") as info:
        await svc.start()
    assert info.value.exit_code == 3
    assert not svc.state_path.exists()


async def test_startup_timeout_is_reported_and_leaves_nothing_running(tmp_path: Path) -> None:
    # Listens on a different port than the one probed, so it never gets ready.
    argv = [sys.executable, "-m", "http.server", str(free_port()), "--bind", "127.0.0.1"]
    svc = HttpService(tmp_path, free_port(), start_timeout_s=1.0, argv=argv)
    with pytest.raises(StartupTimeoutError, match="within 1s") as info:
        await svc.start()
    assert info.value.timeout_s == 1.0
    assert svc.ready_checks >= 2
    assert not svc.state_path.exists()
    assert not svc.status().running


def test_stale_state_file_is_not_running(tmp_path: Path) -> None:
    svc = HttpService(tmp_path, free_port())
    svc.state_path.write_text(
        '{"service": "x", "pid": 999999, "host": "127.0.0.1", "port": 1, '
        '"log_path": "l", "started_at": 0, "marker": "m"}'
    )
    status = svc.status()
    assert not status.running
    assert status.record is not None
    assert status.record.pid == 999999


def test_pid_alive_checks_the_marker() -> None:
    import os

    assert pid_alive(os.getpid())
    assert pid_alive(os.getpid(), marker="python")
    assert not pid_alive(os.getpid(), marker="definitely-not-in-my-command-line")
