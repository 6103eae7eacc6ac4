"""The benchmark LM server: scripted completions, latency draws and its rate limit."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.lm_server import Latency, RateLimit, Rule, responder
from bench.scripted_lm import ScriptedLM


def chat(text: str) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


async def test_rules_choose_the_completion_and_the_rate_limit_answers_429() -> None:
    reply = responder(
        latency=Latency.parse("fixed:0"),
        text="fallback",
        rules=[Rule("capital", "Paris"), Rule("sum", "4")],
        rate_limit=3,
        clock=lambda: 0.0,  # time stands still: no token comes back during the test
    )
    async with (
        ScriptedLM(responder=reply, record=False) as server,
        httpx.AsyncClient(base_url=server.openai_url) as client,
    ):
        answers = [
            await client.post("/chat/completions", json=chat(text))
            for text in ("the capital?", "a sum", "hello", "hello again", "and again")
        ]
    texts = [a.json()["choices"][0]["message"]["content"] for a in answers[:3]]
    assert texts == ["Paris", "4", "fallback"]
    # The burst is one second's worth: the 4th and 5th requests are refused.
    assert [a.status_code for a in answers[3:]] == [429, 429]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers[3:])


def test_the_rate_limit_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = RateLimit(2, clock=lambda: now[0])
    assert [bucket.admit() for _ in range(2)] == [None, None]
    assert bucket.admit() == pytest.approx(0.5)  # one token comes back in 1/2 s
    now[0] = 0.5
    assert bucket.admit() is None
    assert bucket.admit() == pytest.approx(0.5)


def test_latency_distributions_parse_and_draw_reproducibly() -> None:
    assert Latency.parse("fixed:0.1").sample(random.Random(0)) == 0.1
    uniform = Latency.parse("uniform:0.05:0.15")
    draws = [uniform.sample(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    assert 0.05 <= draws[0] <= 0.15
    lognormal = Latency.parse("lognormal:0.1:0.5")
    values = [lognormal.sample(random.Random(i)) for i in range(200)]
    assert min(values) > 0
    assert sorted(values)[100] == pytest.approx(0.1, rel=0.2)  # the median
    for bad in ("fixed", "gamma:1", "uniform:1", "fixed:-1", "fixed:x"):
        with pytest.raises(ValueError, match="latency"):
            Latency.parse(bad)


def test_command_line_serves_and_rejects_bad_arguments(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"contains": "ping", "text": "pong"}]))
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.lm_server", "--latency", "uniform:0:0.01",
         "--script", str(rules)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("ping"))
        assert answer.json()["choices"][0]["message"]["content"] == "pong"
    finally:
        server.terminate()
        server.communicate(timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "bench.lm_server", "--latency", "gamma:1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "expected fixed:S" in bad.stderr
