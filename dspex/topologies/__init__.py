"""Declarative deployments: which programs, channels, partitions and limits."""

from dspex.topologies.settings import KafkaSettings, TopicSettings
from dspex.topologies.topology import LMEndpoint, OptimizerConfig, Topology

__all__ = ["KafkaSettings", "LMEndpoint", "OptimizerConfig", "TopicSettings", "Topology"]
