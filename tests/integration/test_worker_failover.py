"""Two workers share the partitions; one is killed with SIGKILL mid-run.

Every request still gets a result (at least once: the survivor re-runs what the
dead worker had not committed), and the client delivers each exactly once.
The scripted LM answers after 20 ms so the run lasts long enough to kill a
worker in the middle of it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

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
        victim, survivor, delivered, after_kill, raw, killed_code = await _run_and_kill(
            topology, kafka_bootstrap, names
        )
    assert killed_code == -signal.SIGKILL
    assert len(delivered) == REQUESTS
    assert set(delivered.values()) == {1}, "the client delivered a request twice"
    assert set(raw) == set(delivered), "a request has no result on the topic"
    assert after_kill[survivor] > 0, "the survivor took over the dead worker's partitions"
    print(f"results on the topic: {sum(raw.values())} for {REQUESTS} requests; killed {victim}")


async def _run_and_kill(
    topology: Path, kafka_bootstrap: str, names: TopicNames
) -> tuple[str, str, Counter[str], Counter[str], Counter[str], int | None]:
    """Serve REQUESTS with two workers; SIGKILL the busier one a third of the way."""
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
                    # Kill the worker that is busiest now: it surely holds work in flight.
                    victim = by_worker.most_common(1)[0][0]
                    workers[victim].send_signal(signal.SIGKILL)
        raw = await count_raw_results(kafka_bootstrap, names.inference_results)
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.terminate()
            worker.wait(timeout=60)
    assert victim is not None
    survivor = next(name for name in workers if name != victim)
    return victim, survivor, delivered, after_kill, raw, workers[victim].returncode
