"""The worker's partitioner picks what Kafka's default partitioner picks, for any key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from dspex.streams.worker.delivery import KeyHashPartitioner

PARTITIONER = KeyHashPartitioner(remember=8)


@given(key=st.binary(max_size=64), partitions=st.integers(min_value=1, max_value=64))
def test_same_partition_as_the_default_partitioner(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    expected = DefaultPartitioner()(key, every, every)
    # Twice: the second answer comes from the remembered hash.
    assert PARTITIONER(key, every, every) == expected
    assert PARTITIONER(key, every, every) == expected


def test_a_key_less_record_goes_to_an_available_partition() -> None:
    assert KeyHashPartitioner()(None, [0, 1, 2, 3], [2]) == 2
