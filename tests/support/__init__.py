"""Helpers shared by test tiers: worker processes, client harness, Prometheus.

The scripted LM server, the one test double for LM calls, is
:mod:`bench.scripted_lm`: the benchmarks run it as their LM.
"""
