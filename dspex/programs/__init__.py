"""Signatures, modules, adapters and LM clients: DSPy's vocabulary.

This package must never import Faust or aiokafka: a program runs in a notebook
with no broker at all.
"""
