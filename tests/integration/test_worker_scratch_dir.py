"""A worker leaves nothing in the directory it was started from."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import dspex
from bench._deployment import produce_backlog, read_json_records, write_topology
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import scripted_lm_process, start_worker, stop_worker


async def test_a_served_request_leaves_the_working_directory_empty(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"sd{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1))
    program = dspex.Predict("question -> answer", adapter=dspex.JSONAdapter())
    await register_program(kafka_bootstrap, names, "echo", ProgramSpec.from_program(program))
    workdir = tmp_path / "started-here"
    workdir.mkdir()
    with scripted_lm_process(text=json.dumps({"answer": "ok"})) as lm_url:
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=1,
        )
        worker = start_worker(topology, f"{prefix}-w", cwd=workdir)
        try:
            await produce_backlog(
                kafka_bootstrap, names.inference_requests, program_id="echo", count=1
            )
            deadline = time.monotonic() + 60
            results: list[object] = []
            while not results and time.monotonic() < deadline:
                results = await read_json_records(kafka_bootstrap, names.inference_results)
                await asyncio.sleep(0.5)
            assert len(results) == 1, "the worker never answered"
        finally:
            code, output = stop_worker(worker)
        assert code == 0, output
    assert sorted(p.name for p in workdir.iterdir()) == []
