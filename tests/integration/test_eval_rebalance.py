"""Evaluation runs go on while a second worker joins: no example stalls, reports stay whole.

A worker starts alone; evaluation runs of 24 examples go through
KafkaExecutor while a second worker joins the group and partitions move. Every
run must be fully scored (none waits past the idle timeout), and the report
of every run on the compacted reports topic must count each example once,
whichever worker aggregated it. With the reports kept in a Faust table on the
worker's consumer, about one cold start in five stalled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

import dspex
from bench._deployment import read_json_records, write_topology
from dspex.programs.state import ProgramSpec
from dspex.streams.executor import KafkaExecutor
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import scripted_lm_process, start_worker, stop_worker

COLD_STARTS = 3
EXAMPLES = 24


async def members(admin: AIOKafkaAdminClient, group: str) -> tuple[str, int]:
    [response] = await admin.describe_consumer_groups([group])
    [described] = response.to_object()["groups"]
    return described["state"], len(described["members"])


async def wait_stable(admin: AIOKafkaAdminClient, group: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the group may not exist yet
            if await members(admin, group) == ("Stable", count):
                return
        await asyncio.sleep(0.3)
    raise AssertionError(f"group {group} never had {count} stable member(s)")


async def cold_start(tmp_path: Path, bootstrap: str, lm_url: str) -> None:
    """Runs evaluated while worker B joins: each fully scored, each report whole."""
    prefix = f"rb{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, TopicSettings(prefix=prefix, partitions=6))
    program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    await register_program(bootstrap, TopicNames(prefix), "echo", ProgramSpec.from_program(program))
    topology = write_topology(
        tmp_path / f"{prefix}.yaml",
        prefix=prefix,
        bootstrap=bootstrap,
        lm_url=lm_url,
        partitions=6,
        inflight_limit=32,
        stop_timeout_s=20,
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    workers = [start_worker(topology, f"{prefix}-a")]
    runs: list[str] = []
    try:
        await wait_stable(admin, f"{prefix}-evaluation", 1)
        async with KafkaExecutor(
            program_id="echo", bootstrap_servers=bootstrap, prefix=prefix, idle_timeout_s=20
        ) as executor:
            workers.append(start_worker(topology, f"{prefix}-b"))
            settled = 0
            started = time.monotonic()
            while settled < 2:
                assert time.monotonic() - started < 120, "the group never settled"
                examples = [
                    dspex.Example(question=f"q{len(runs)}-{i}", answer="ok").with_inputs("question")
                    for i in range(EXAMPLES)
                ]
                run_id = f"{prefix}-{len(runs)}"
                outputs = [
                    o
                    async for o in executor.score_registered(examples, "exact_match", run_id=run_id)
                ]
                assert sorted(o.index for o in outputs) == list(range(EXAMPLES))
                runs.append(run_id)
                with contextlib.suppress(Exception):
                    if await members(admin, f"{prefix}-evaluation") == ("Stable", 2):
                        settled += 1
        # While both workers still run: the aggregator may have moved runs too.
        reports = await final_reports(bootstrap, TopicNames(prefix).eval_reports, runs)
        for run_id in runs:
            report = reports[run_id]
            assert report["count"] == EXAMPLES, report
            assert report["seen"] == [[0, EXAMPLES - 1]]
            assert report["mean"] == 1.0
    finally:
        for worker in workers:
            code, output = stop_worker(worker)
            # Faust's consumer used to wait forever, now and then, on a commit
            # handed to its thread after rebalances; the channels' consumers do
            # not, so a stop after rebalances ends cleanly.
            assert code == 0, output
        await admin.close()


async def final_reports(bootstrap: str, topic: str, runs: list[str]) -> dict[str, Any]:
    """The latest report of each run, once every run's is complete (or after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        latest: dict[str, Any] = {}
        for report in await read_json_records(bootstrap, topic):
            latest[report["run_id"]] = report
        if all(latest.get(r, {}).get("count") == EXAMPLES for r in runs):
            return latest
        if time.monotonic() > deadline:
            return latest
        await asyncio.sleep(1)


async def test_runs_finish_and_reports_stay_whole_while_a_worker_joins(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    with scripted_lm_process(text=json.dumps({"answer": "ok"}), delay_s=0.1) as lm_url:
        for _ in range(COLD_STARTS):
            await cold_start(tmp_path, kafka_bootstrap, lm_url)
