"""Shared command-line plumbing for the examples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dspex

DATA = Path(__file__).parent / "data"


def add_lm_arguments(parser: argparse.ArgumentParser) -> None:
    """``--base-url`` (alias ``--lm-url``) and ``--model``: the local LM by default."""
    parser.add_argument(
        "--base-url",
        "--lm-url",
        dest="lm_url",
        default="http://127.0.0.1:8080/v1",
        help="OpenAI-compatible API root [default: the local LM of `dspex lm serve`]",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name")


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    add_lm_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    return parser.parse_args()


def load(name: str, *inputs: str, limit: int | None = None) -> list[dspex.Example]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [dspex.Example(row).with_inputs(*inputs) for row in rows[:limit]]
