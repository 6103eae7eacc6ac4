"""The registry reader sees programs on every partition of the programs topic."""

from __future__ import annotations

import uuid

import dspex
from dspex.programs.state import ProgramSpec
from dspex.streams.registry import load_catalog, register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings


async def test_programs_on_every_partition_are_loaded(kafka_bootstrap: str) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    settings = TopicSettings(prefix=prefix, coordination_partitions=3)
    await ensure_topics(kafka_bootstrap, settings)
    names = TopicNames(prefix)
    spec = ProgramSpec.from_program(dspex.Predict("question -> answer"))
    program_ids = [f"program-{i}" for i in range(12)]  # keys spread over the 3 partitions
    for program_id in program_ids:
        await register_program(kafka_bootstrap, names, program_id, spec)
    catalog = await load_catalog(kafka_bootstrap, names)
    assert sorted(catalog.programs()) == sorted(program_ids)
    assert set(catalog.programs().values()) == {1}
