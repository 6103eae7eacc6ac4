"""Declarative deployments: which programs, channels, partitions and limits."""

from dspex.topologies.topology import (
    KafkaConfig,
    LMEndpoint,
    OptimizerConfig,
    TopicsConfig,
    Topology,
)

__all__ = ["KafkaConfig", "LMEndpoint", "OptimizerConfig", "TopicsConfig", "Topology"]
