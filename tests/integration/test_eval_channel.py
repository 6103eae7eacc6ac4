"""Evaluation on the cluster: the same scores as in-process, and a running report.

A worker serves the evaluation channel against a scripted LM that always
answers "positive". The same program and examples are scored in-process by
LocalExecutor and on the worker through KafkaExecutor: every score, output
and error must be identical. The worker's aggregator must publish the run's
report (count, mean, errors) on the compacted reports topic.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import dspex
from bench._deployment import read_json_records, write_topology
from dspex.optimizers.executor import LocalExecutor
from dspex.streams.executor import KafkaExecutor
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import scripted_lm_process, start_worker, stop_worker


def examples() -> list[dspex.Example]:
    labelled = [
        dspex.Example(review=f"review {i}", sentiment="positive" if i % 3 else "negative")
        for i in range(30)
    ]
    # No label: the metric raises on these, in both places alike.
    unlabelled = [dspex.Example(review=f"unlabelled {i}") for i in range(2)]
    return [example.with_inputs("review") for example in [*labelled, *unlabelled]]


async def test_kafka_executor_scores_exactly_like_local_executor(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"e{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2))
    program = dspex.Predict(
        "review -> sentiment", adapter=dspex.JSONAdapter()
    ).signature.with_instructions("Classify the review.")
    candidate = dspex.Predict(program, adapter=dspex.JSONAdapter())
    data = examples()
    with scripted_lm_process(text=json.dumps({"sentiment": "positive"})) as lm_url:
        async with (
            dspex.OpenAIChat(model="scripted", base_url=lm_url) as lm,
            LocalExecutor(max_concurrency=4) as local,
        ):
            with dspex.context(lm=lm):
                here = await local.evaluate(candidate, data, "exact_match")
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=2,
        )
        worker = start_worker(topology, "w-eval")
        try:
            async with KafkaExecutor(
                program_id="classify",
                bootstrap_servers=kafka_bootstrap,
                prefix=prefix,
                max_outstanding=8,
                idle_timeout_s=90,
            ) as remote:
                there = await remote.evaluate(candidate, data, "exact_match")
            # The aggregator publishes the report after the last score.
            deadline = time.monotonic() + 30
            final: list[dict[str, object]] = []
            while not final and time.monotonic() < deadline:
                reports = await read_json_records(kafka_bootstrap, TopicNames(prefix).eval_reports)
                final = [r for r in reports if r["count"] == len(data)]
        except Exception:
            print(stop_worker(worker)[1])
            raise
        code, output = stop_worker(worker)
        assert code == 0, output

    assert [o.score for o in there.outputs] == [o.score for o in here.outputs]
    assert [o.outputs for o in there.outputs] == [o.outputs for o in here.outputs]
    assert [o.error.type if o.error else None for o in there.outputs] == [
        o.error.type if o.error else None for o in here.outputs
    ]
    assert here.score == there.score == 20 / 32
    assert there.error_counts() == {"metric_error": 2}
    assert all(len(o.trace) == 1 for o in there.outputs)
    assert [o.trace[0].outputs for o in there.outputs] == [o.trace[0].outputs for o in here.outputs]

    assert final, f"no complete report among {len(reports)}"
    assert final[-1]["mean"] == there.score
    assert final[-1]["errors"] == 2
    assert final[-1]["seen"] == [[0, len(data) - 1]]
