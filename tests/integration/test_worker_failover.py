"""Two workers share the partitions; one is killed with SIGKILL, or stopped, mid-run.

Every request still gets a result (at least once: the survivor re-runs what the
dead worker had not committed), and the client delivers each exactly once. A
graceful stop (SIGTERM, as in a rolling deploy) answers nothing twice and
repeats no LM call: in-flight requests finish and are committed before the
partitions move. The scripted LM answers after 20 ms so the run lasts long
enough to stop a worker in the middle of it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

import dspex
from bench._deployment import read_json_records, write_topology
from dspex.programs.state import ProgramSpec
from dspex.streams.client import DSPExClient
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import scripted_lm_process

REQUESTS = 300


async def count_raw_results(bootstrap: str, topic: str) -> Counter[str]:
    return Counter(record["request_id"] for record in await read_json_records(bootstrap, topic))


async def test_sigkill_of_one_worker_loses_no_request(tmp_path: Path, kafka_bootstrap: str) -> None:
    run = await serve_and_stop(tmp_path, kafka_bootstrap, signal.SIGKILL)
    assert run.code == -signal.SIGKILL
    assert len(run.delivered) == REQUESTS
    assert set(run.delivered.values()) == {1}, "the client delivered a request twice"
    assert set(run.raw) == set(run.delivered), "a request has no result on the topic"
    assert run.after_stop[run.survivor] > 0, "the survivor took over the dead worker's partitions"
    print(f"results on the topic: {sum(run.raw.values())} for {REQUESTS} requests")


async def test_a_graceful_stop_answers_nothing_twice(tmp_path: Path, kafka_bootstrap: str) -> None:
    run = await serve_and_stop(tmp_path, kafka_bootstrap, signal.SIGTERM)
    assert run.code == 0, "the stopped worker did not exit cleanly"
    assert len(run.delivered) == REQUESTS
    assert run.after_stop[run.survivor] > 0, "the survivor took over the stopped worker's partition"
    twice = sorted(request_id for request_id, count in run.raw.items() if count > 1)
    assert not twice, f"{len(twice)} requests answered twice on the topic, e.g. {twice[:3]}"
    assert set(run.raw) == set(run.delivered)
    assert run.lm_calls == REQUESTS, "an LM call was repeated"


@dataclass(frozen=True)
class Run:
    """What a run with one worker stopped mid-way left behind."""

    survivor: str
    #: Results the client delivered, per request id.
    delivered: Counter[str]
    #: Results delivered after the stop, per worker.
    after_stop: Counter[str]
    #: Results on the results topic, per request id.
    raw: Counter[str]
    #: The stopped worker's exit code.
    code: int | None
    #: Chat completions the LM answered.
    lm_calls: int


async def serve_and_stop(tmp_path: Path, kafka_bootstrap: str, signum: signal.Signals) -> Run:
    """Two workers on a fresh deployment; ``signum`` to the busier one a third of the way."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    with scripted_lm_process(text=json.dumps({"answer": "ok"}), delay_s=0.02) as lm_url:
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=4,
            inflight_limit=4,
            session_timeout_s=6,
        )
        await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=4))
        _victim, survivor, delivered, after_stop, raw, code = await _run_and_stop(
            topology, kafka_bootstrap, names, signum
        )
        async with httpx.AsyncClient() as http:
            lm_calls = (await http.get(f"{lm_url.removesuffix('/v1')}/stats")).json()["served"]
    return Run(survivor, delivered, after_stop, raw, code, lm_calls)


async def _run_and_stop(
    topology: Path, kafka_bootstrap: str, names: TopicNames, signum: signal.Signals
) -> tuple[str, str, Counter[str], Counter[str], Counter[str], int | None]:
    """Serve REQUESTS with two workers; send ``signum`` to the busier one a third of the way."""
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-m", "dspex", "worker", str(topology), "--worker-id", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("worker-a", "worker-b")
    }
    delivered: Counter[str] = Counter()
    by_worker: Counter[str] = Counter()
    victim: str | None = None
    after_kill: Counter[str] = Counter()
    try:
        async with DSPExClient(bootstrap_servers=kafka_bootstrap, prefix=names.prefix) as client:
            program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
            await client.register("echo", ProgramSpec.from_program(program))
            requests = [{"question": f"q{i}"} for i in range(REQUESTS)]
            async for result in client.submit_many(requests, program_id="echo", timeout_s=180):
                assert result.status == "ok", result
                delivered[result.request_id] += 1
                by_worker[result.worker_id] += 1
                if victim is not None:
                    after_kill[result.worker_id] += 1
                elif sum(delivered.values()) == REQUESTS // 3:
                    # Stop the worker that is busiest now: it surely holds work in flight.
                    victim = by_worker.most_common(1)[0][0]
                    workers[victim].send_signal(signum)
        raw = await count_raw_results(kafka_bootstrap, names.inference_results)
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.terminate()
            worker.wait(timeout=60)
    assert victim is not None
    survivor = next(name for name in workers if name != victim)
    return victim, survivor, delivered, after_kill, raw, workers[victim].returncode
