"""The dashboards, recording rules, alerts and ``dspex report`` against a real Prometheus.

One pipeline for the module: the real broker, the real local LM (SmolLM2), a
worker and the optimizer service serving ``/metrics``, and a real Prometheus
(Debian's package) scraping both every second and evaluating
``infra/prometheus/rules`` every second. Traffic, kept small for a slow LM:

- 20 inference requests, one with a missing input (an error result) and one
  undecodable record (a dead letter);
- one ``dspex eval`` run of 10 examples;
- one ``dspex optimize`` job: ``random_search`` with one shuffled candidate,
  so the job runs trials (``labeled`` and ``bootstrap`` compile without any,
  which would leave every trial panel empty).

Then every query of every dashboard panel, with Grafana's "All" for each
variable, and every recording rule must return data through the HTTP API.

A second program is served by an LM endpoint that answers HTTP 500 (the
scripted LM); failing calls open its circuit breaker and the circuit-open
alert must fire. The alert rules are a copy of
``infra/prometheus/rules/alerts.yml`` whose ``for:`` durations are rewritten
to 1s in the test's folder, so the alert fires within seconds (the shipped
rule waits a minute). Those failures also give the LM error series that only
a failing LM produces.

``dspex report`` runs against the same Prometheus (so the module starts the
pipeline once), against a dead URL and against a Prometheus with no targets.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from aiokafka import AIOKafkaProducer

import dspex
from bench.scripted_lm import Reply, ScriptedLM
from dspex._local._process import free_port
from dspex.observability.dashboards import expand_variables, panel_queries, render_dashboards
from dspex.observability.report import REPORT_PANELS
from dspex.programs.state import ProgramSpec
from dspex.streams.client import DSPExClient
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import start_worker, stop_worker
from tests.support.prometheus import RULES_DIR, PrometheusServer

pytestmark = [pytest.mark.kafka, pytest.mark.lm]

CIRCUIT_ALERT = "DSPExLMCircuitOpen"
FAILING_MODEL = "failing-scripted"
#: Consecutive failures that open the failing endpoint's breaker.
BREAKER_FAILURES = 3
REVIEWS = [
    ("Great product, works perfectly.", "positive"),
    ("Terrible, it broke after a day.", "negative"),
    ("It is a box. It holds things.", "neutral"),
    ("I love it, best purchase this year.", "positive"),
    ("Awful support and a refund that never came.", "negative"),
    ("Arrived on Tuesday.", "neutral"),
    ("Fantastic quality for the price.", "positive"),
    ("Waste of money.", "negative"),
    ("The colour is grey.", "neutral"),
    ("Works as described, very happy.", "positive"),
]
INFERENCE_REQUESTS = 20


class Classify(dspex.Signature):
    """Classify the sentiment of the review."""

    review: str = dspex.InputField()
    sentiment: Literal["positive", "negative", "neutral"] = dspex.OutputField()


@dataclass
class Pipeline:
    prefix: str
    bootstrap: str
    folder: Path
    prometheus: PrometheusServer
    failing_lm: ScriptedLM
    #: Unix time before the first request: the start of every range query.
    traffic_from: float

    async def has_data(self, expr: str) -> bool:
        """Whether ``expr`` has a finite sample between the traffic's start and now.

        The range ends exactly now (a whole number of steps from its start), so
        a sample recorded a moment ago counts.
        """
        end = time.time()
        start = end - math.ceil(end - self.traffic_from)
        result = await self.prometheus.query_range(expr, start=start, end=end, step_s=1)
        return has_samples(result)


def has_samples(result: list[dict[str, Any]]) -> bool:
    """Whether a query_range result holds a finite sample (NaN from 0/0 is not data)."""
    return any(math.isfinite(float(v)) for series in result for _, v in series["values"])


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"review": r, "sentiment": s}) + "\n" for r, s in rows))
    return path


def alerts_with_short_for(folder: Path) -> Path:
    """A copy of alerts.yml with every ``for:`` set to 1s (the real ones wait minutes)."""
    rules = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    shortened = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
                shortened.append(rule["alert"])
    assert CIRCUIT_ALERT in shortened, f"{CIRCUIT_ALERT} has no `for:` to shorten: {shortened}"
    path = folder / "alerts-short-for.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


async def dspex_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m dspex ARGS``: exit code, stdout, stderr (killed if the test stops first)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dspex", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 300)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, out.decode(), err.decode()


async def wait_for_value(
    prometheus: PrometheusServer,
    expr: str,
    done: Callable[[float], bool],
    *,
    timeout_s: float = 180,
) -> float:
    """Poll ``expr`` (one value) until ``done(value)``; fails naming the last value."""
    deadline = time.monotonic() + timeout_s
    value = math.nan
    while True:
        result = await prometheus.query(expr)
        if result:
            value = float(result[0]["value"][1])
            if done(value):
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{expr} is {value} after {timeout_s}s")
        await asyncio.sleep(0.5)


async def drive_inference(bootstrap: str, prefix: str) -> None:
    async with DSPExClient(bootstrap_servers=bootstrap, prefix=prefix) as client:
        reviews = [REVIEWS[i % len(REVIEWS)][0] for i in range(INFERENCE_REQUESTS - 1)]
        results = await asyncio.gather(
            *(client.run("classify", review=review, timeout_s=180) for review in reviews),
            client.run("classify", text="the wrong input field", timeout_s=180),
        )
    statuses = [(r.status, r.error.type if r.error else None) for r in results]
    assert statuses[-1] == ("error", "invalid_inputs")
    assert all(status == "ok" for status, _ in statuses[:-1]), statuses
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            TopicNames(prefix).inference_requests, b"\xff not json", key=b"classify"
        )
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
async def pipeline(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, local_lm_url: str
) -> AsyncIterator[Pipeline]:
    folder = tmp_path_factory.mktemp("prometheus-pipeline")
    prefix = f"p{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    worker_port, optimizer_port = free_port(), free_port()
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1))
    classify = dspex.Predict(Classify, adapter=dspex.JSONAdapter())
    await register_program(kafka_bootstrap, names, "classify", ProgramSpec.from_program(classify))
    flaky = dspex.Predict("question -> answer")
    await register_program(kafka_bootstrap, names, "flaky", ProgramSpec.from_program(flaky))
    async with ScriptedLM(default=Reply.error(500, "scripted outage"), record=False) as failing:
        topology = folder / "topology.yaml"
        topology.write_text(yaml.safe_dump({
            "name": prefix,
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "topics": {"prefix": prefix, "partitions": 1},
            "lms": {
                "local": {"model": "smollm2-135m-instruct", "base_url": local_lm_url,
                          "max_tokens": 32},
                "failing": {"model": FAILING_MODEL, "base_url": failing.openai_url,
                            "max_attempts": 1, "breaker_failures": BREAKER_FAILURES,
                            "breaker_recovery_s": 300, "breaker_when_open": "fail"},
            },
            "default_lm": "local",
            "program_lms": {"flaky": "failing"},
            "inflight_limit": 4,
            "request_timeout_s": 120,
            "metrics_port": worker_port,
            "optimizer": {"metrics_port": optimizer_port, "eval_idle_timeout_s": 180},
        }))  # fmt: skip
        worker = start_worker(topology, "w-prometheus")
        with (folder / "optimizer.log").open("wb") as log:
            optimizer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dspex", "optimizer", "serve", str(topology),
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        prometheus = PrometheusServer(
            folder / "prometheus",
            jobs={
                "dspex-worker": [f"127.0.0.1:{worker_port}"],
                "dspex-optimizer": [f"127.0.0.1:{optimizer_port}"],
            },
            rule_files=[RULES_DIR / "recording.yml", alerts_with_short_for(folder)],
        )
        try:
            async with prometheus:
                await prometheus.wait_for_targets(timeout_s=90)
                traffic_from = time.time()
                train = write_jsonl(folder / "train.jsonl", REVIEWS[:4])
                val = write_jsonl(folder / "val.jsonl", REVIEWS[4:7])
                dataset = write_jsonl(folder / "eval.jsonl", REVIEWS)
                kafka = ("--prefix", prefix, "--bootstrap-servers", kafka_bootstrap)
                async with asyncio.TaskGroup() as traffic:
                    traffic.create_task(drive_inference(kafka_bootstrap, prefix))
                    evaluated = traffic.create_task(
                        dspex_cli("eval", "classify", str(dataset), "--idle-timeout", "180", *kafka)
                    )
                    optimized = traffic.create_task(dspex_cli(
                        "optimize", "classify", "--optimizer", "random_search",
                        "--trainset", str(train), "--valset", str(val), "--seed", "1",
                        "--set", "num_candidate_programs=1", "--set", "max_bootstrapped_demos=1",
                        "--set", "max_labeled_demos=2", "--no-plot", *kafka,
                    ))  # fmt: skip
                assert evaluated.result()[0] == 0, evaluated.result()
                assert optimized.result()[0] == 0, optimized.result()
                # Prometheus has scraped the end of the traffic once it shows all of it.
                answered = 'sum(dspex_inference_requests_total{program="classify"})'
                await wait_for_value(
                    prometheus, answered, lambda value: value >= INFERENCE_REQUESTS
                )
                await wait_for_value(
                    prometheus,
                    "sum(dspex_inference_dead_letters_total)",
                    lambda value: value >= 1,
                )
                await wait_for_value(
                    prometheus, "sum(dspex_optimizer_jobs_total)", lambda value: value >= 1
                )
                yield Pipeline(prefix, kafka_bootstrap, folder, prometheus, failing, traffic_from)
        finally:
            optimizer.terminate()
            await optimizer.wait()
            code, output = stop_worker(worker)
            assert code == 0, output


@pytest.fixture(scope="module")
async def open_circuit(pipeline: Pipeline) -> list[tuple[str, str | None]]:
    """Requests to the program whose LM fails, until its breaker is open: their results.

    The first failure is scraped before the others happen: a series born at
    its final value would show no rate, and these panels would stay empty.
    Prometheus has scraped the LM errors they caused when this returns.
    """
    # Before: no alert, and no breaker for the failing model yet (made at first use).
    assert not [
        a for a in await pipeline.prometheus.alerts() if a["labels"]["alertname"] == CIRCUIT_ALERT
    ]
    assert not await pipeline.prometheus.query(f'dspex_lm_circuit_state{{model="{FAILING_MODEL}"}}')
    async with DSPExClient(bootstrap_servers=pipeline.bootstrap, prefix=pipeline.prefix) as client:
        results = [await client.run("flaky", question="question 0", timeout_s=120)]
        await wait_for_value(
            pipeline.prometheus,
            'sum(dspex_inference_requests_total{program="flaky"})',
            lambda value: value >= 1,
            timeout_s=60,
        )
        results += [
            await client.run("flaky", question=f"question {i}", timeout_s=120)
            for i in range(1, BREAKER_FAILURES + 2)
        ]
    await wait_for_value(
        pipeline.prometheus,
        f'sum(provider_model_error_type:dspex_lm_errors:rate5m{{model="{FAILING_MODEL}"}})',
        lambda value: value >= 0,
        timeout_s=60,
    )
    return [(r.status, r.error.type if r.error else None) for r in results]


async def test_every_dashboard_query_returns_data(pipeline: Pipeline) -> None:
    queries = panel_queries()
    assert len(queries) > 40, "the dashboards lost their panels"
    empty = []
    for query in queries:
        expr = expand_variables(query.expr)  # every variable as Grafana's "All"
        if not await pipeline.has_data(expr):
            empty.append(f"{query.dashboard} / {query.panel} [{query.ref_id}]: {expr}")
    assert not empty, f"{len(empty)} of {len(queries)} panel queries without data:\n" + "\n".join(
        empty
    )

    # The template variables list values too (Grafana's label_values(metric, label)).
    missing = []
    for board in map(json.loads, render_dashboards().values()):
        for variable in board["templating"]["list"]:
            call = re.fullmatch(r"label_values\((?:(\w+), )?(\w+)\)", variable["query"]["query"])
            assert call, variable["query"]
            metric, label = call.groups()
            match = {"match[]": metric} if metric else {}
            if not await pipeline.prometheus.api(f"label/{label}/values", **match):
                missing.append(f"{board['uid']} ${variable['name']}: {variable['query']['query']}")
    assert not missing, f"template variables without values: {missing}"


async def test_every_recording_rule_is_healthy_and_has_data(
    pipeline: Pipeline, open_circuit: list[tuple[str, str | None]]
) -> None:
    # open_circuit: LM errors by type (a rule without an "or 0" fallback) exist
    # only once an LM call failed; the healthy traffic has none.
    recorded = [
        rule
        for group in yaml.safe_load((RULES_DIR / "recording.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    loaded = [rule for g in await pipeline.prometheus.rule_groups() for rule in g["rules"]]
    assert len([r for r in loaded if r["type"] == "recording"]) == len(recorded)
    unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    empty = []
    for rule in recorded:
        labels = ", ".join(f'{k}="{v}"' for k, v in rule.get("labels", {}).items())
        selector = f"{rule['record']}{{{labels}}}"
        if not await pipeline.has_data(selector):
            empty.append(selector)
    assert not empty, f"recording rules without data: {empty}"


async def test_failing_lm_opens_the_circuit_and_the_alert_fires(
    pipeline: Pipeline, open_circuit: list[tuple[str, str | None]]
) -> None:
    assert all(status == "error" for status, _ in open_circuit), open_circuit
    # The first failures reach the LM; once the breaker is open, calls fail fast.
    assert open_circuit[0] == ("error", "lm_error")
    assert open_circuit[-1] == ("error", "lm_unavailable")
    assert pipeline.failing_lm.served == BREAKER_FAILURES
    # Pending as soon as a rule evaluation sees the open circuit, firing after
    # the (shortened) `for:`; the real `for: 1m` would only add a minute.
    deadline = time.monotonic() + 60
    while True:
        alerts = [
            a
            for a in await pipeline.prometheus.alerts()
            if a["labels"]["alertname"] == CIRCUIT_ALERT
        ]
        if any(a["state"] == "firing" for a in alerts):
            break
        assert time.monotonic() < deadline, f"{CIRCUIT_ALERT} not firing within 60s: {alerts}"
        await asyncio.sleep(0.5)
    [alert] = alerts  # only the failing model's circuit
    assert alert["labels"]["model"] == FAILING_MODEL
    assert alert["labels"]["provider"] == "openai"
    assert alert["labels"]["severity"] == "critical"
    assert FAILING_MODEL in alert["annotations"]["summary"]
    # The healthy model's circuit stays closed.
    [state] = await pipeline.prometheus.query(
        'dspex_lm_circuit_state{model="smollm2-135m-instruct"}'
    )
    assert state["value"][1] == "0"


# -- dspex report -----------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def test_report_draws_every_key_panel_from_prometheus(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    out = tmp_path / "report" / "report.png"
    code, stdout, stderr = await dspex_cli(
        "report", "--since", "15m", "--out", str(out), "--prometheus", pipeline.prometheus.url
    )
    assert code == 0, stderr
    assert f"querying {len(REPORT_PANELS)} panels from {pipeline.prometheus.url}" in stderr
    assert "no data" not in stderr
    assert f"{len(REPORT_PANELS)} of {len(REPORT_PANELS)} panels" in stdout
    width, height = png_size(out)
    assert (width, height) == (1400, 800)  # 2 x 2 panels of 7 x 4 inches at 100 dpi
    assert not list(out.parent.glob(".*.tmp"))


async def test_report_marks_panels_without_data_and_still_draws_the_others(
    pipeline: Pipeline, open_circuit: list[tuple[str, str | None]], tmp_path: Path
) -> None:
    out = tmp_path / "flaky.png"
    # The failing program has requests (all errors) but was never evaluated.
    code, stdout, stderr = await dspex_cli(
        "report", "--out", str(out), "--program", "flaky",
        env={"DSPEX_PROMETHEUS_URL": pipeline.prometheus.url},
    )  # fmt: skip
    assert code == 0, stderr
    [notice] = [line for line in stderr.splitlines() if "no data" in line]
    assert notice.endswith("for: Eval score by version (drawn as 'no data')"), notice
    assert "3 of 4 panels" in stdout
    png_size(out)


async def test_report_without_any_data_writes_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    titles = [title for _, title, _ in REPORT_PANELS]
    out = tmp_path / "empty.png"
    code, _, stderr = await dspex_cli(
        "report", "--out", str(out), "--prometheus", pipeline.prometheus.url,
        "--program", "never-registered",
    )  # fmt: skip
    assert code == 1
    assert f"for any panel: {', '.join(titles)}" in stderr
    assert not out.exists()

    # A Prometheus that scrapes nothing: every panel is empty.
    async with PrometheusServer(tmp_path / "idle") as idle:
        code, _, stderr = await dspex_cli("report", "--out", str(out), "--prometheus", idle.url)
    assert code == 1
    [error] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: no data in the last 15m ({idle.url}) for any panel: ")
    for title in titles:
        assert title in error
    assert not out.exists()


async def test_report_names_a_prometheus_that_does_not_answer(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "dead.png"
    code, _, stderr = await dspex_cli(
        "report", "--out", str(out), env={"DSPEX_PROMETHEUS_URL": dead}
    )
    assert code == 1
    [error] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: Prometheus at {dead} does not answer")
    assert not out.exists()


async def test_report_usage() -> None:
    code, stdout, _ = await dspex_cli("report", "--help")
    assert code == 0
    for text in ("--since", "[default: 15m]", "DSPEX_PROMETHEUS_URL", "http://127.0.0.1:9090"):
        assert text in stdout
    code, _, stderr = await dspex_cli("report", "--out", "x.png", "--since", "soon")
    assert code == 2
    assert "'soon' is not a duration" in stderr
    code, _, stderr = await dspex_cli("report", "--out", "x.png", "--program", 'x"}')
    assert code == 2
    assert "is not a program id" in stderr
