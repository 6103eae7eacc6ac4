"""A real Prometheus server (Debian's ``prometheus`` package) for tests.

It runs in a folder of the test's (configuration, data and log), listens on a
free loopback port, scrapes the given targets and evaluates the given rule
files. ``async with PrometheusServer(...)`` starts it and stops it at the end::

    async with PrometheusServer(
        tmp_path / "prometheus",
        jobs={"dspex-worker": ["127.0.0.1:9100"]},
        rule_files=[RULES_DIR / "recording.yml"],
    ) as prometheus:
        series = await prometheus.query("up")
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml

from dspex._local._process import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "infra" / "prometheus" / "rules"


class PrometheusServer:
    """One Prometheus process.

    Args:
        folder: Where its configuration, data (``data/``) and log (``prometheus.log``) go.
        jobs: Static targets (``host:port``) per scrape job name.
        rule_files: Recording and alert rule files to evaluate.
        interval_s: Scrape and rule evaluation interval.
    """

    def __init__(
        self,
        folder: Path,
        *,
        jobs: Mapping[str, Sequence[str]] | None = None,
        rule_files: Sequence[Path] = (),
        interval_s: float = 1.0,
    ) -> None:
        self.folder = folder
        self.jobs = dict(jobs or {})
        self.rule_files = list(rule_files)
        self.interval_s = interval_s
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.folder / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write_config(self) -> Path:
        interval = f"{int(self.interval_s * 1000)}ms"
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(path.resolve()) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": list(targets)}]}
                for name, targets in self.jobs.items()
            ],
        }
        path = self.folder / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    async def start(self, timeout_s: float = 60) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make install` installs Debian's package"
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        self.port = free_port()
        with (self.folder / "prometheus.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
        self._http = httpx.AsyncClient(base_url=self.url, timeout=30)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                await self.stop()
                raise AssertionError(f"prometheus exited while starting:\n{self.log}")
            try:
                if (await self._http.get("/-/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                await self.stop()
                raise AssertionError(f"prometheus not ready within {timeout_s}s:\n{self.log}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                await asyncio.to_thread(self._process.wait, 30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the HTTP API --------------------------------------------------------------

    async def api(self, path: str, **params: str) -> Any:
        """``data`` of a GET on ``/api/v1/<path>``; fails the test on an API error."""
        assert self._http is not None, "prometheus is not running"
        response = await self._http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now."""
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def query_range(
        self, expr: str, *, start: float, end: float, step_s: float = 1.0
    ) -> list[dict[str, Any]]:
        """The series of ``expr`` between ``start`` and ``end`` (Unix seconds)."""
        data = await self.api(
            "query_range", query=expr, start=str(start), end=str(end), step=str(step_s)
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    async def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        data = await self.api("alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts

    async def rule_groups(self) -> list[dict[str, Any]]:
        """Every rule group loaded, with each rule's health and last error."""
        data = await self.api("rules")
        groups: list[dict[str, Any]] = data["groups"]
        return groups

    async def wait_for_targets(self, timeout_s: float = 30) -> None:
        """Wait until every target has been scraped successfully once."""
        deadline = time.monotonic() + timeout_s
        while True:
            targets = (await self.api("targets"))["activeTargets"]
            if targets and all(target["health"] == "up" for target in targets):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not up within {timeout_s}s: {targets}")
            await asyncio.sleep(0.5)
