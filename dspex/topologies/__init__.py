"""Declarative deployments: which programs, channels, partitions and limits."""
