"""Benchmarks; results are written under bench/results/."""
