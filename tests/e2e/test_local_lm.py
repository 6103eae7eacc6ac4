"""The real local model answers over its OpenAI-compatible API, alone and via Kafka."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dspex._local._process import accepts_connections, free_port
from dspex._local.lm import DEFAULT_MODEL_ALIAS


async def test_models_endpoint_lists_the_served_model(local_lm_url: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{local_lm_url}/models")
    assert response.status_code == 200
    assert DEFAULT_MODEL_ALIAS in [m["id"] for m in response.json()["data"]]


async def test_chat_completion_is_non_empty(local_lm_url: str) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(
            f"{local_lm_url}/chat/completions",
            json={
                "model": DEFAULT_MODEL_ALIAS,
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 16,
                "temperature": 0,
            },
        )
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0


def test_serve_in_foreground_stops_cleanly_on_sigterm(tmp_path: Path, state_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspex", "lm", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (
                accepts_connections("127.0.0.1", port)
                and httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).is_success
            ):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        else:
            raise AssertionError("lm server did not answer within 120s")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "lm server stopped" in out
    assert not accepts_connections("127.0.0.1", port)


def test_detached_serve_status_and_stop(state_dir: Path) -> None:
    port = str(free_port())

    def dspex(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dspex", "lm", *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    started = dspex("serve", "--detach", "--port", port)
    assert started.returncode == 0, started.stderr
    try:
        assert f"ready at http://127.0.0.1:{port}/v1" in started.stdout
        assert dspex("status", "--port", port).returncode == 0
        again = dspex("serve", "--detach", "--port", port)
        assert "already running" in again.stdout
    finally:
        stopped = dspex("stop", "--port", port)
    assert "lm server stopped" in stopped.stdout
    assert dspex("status", "--port", port).returncode == 3
