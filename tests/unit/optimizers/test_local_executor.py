"""LocalExecutor without an LM: what happens when the program itself is broken."""

from __future__ import annotations

import asyncio

import pytest

import dspex
from dspex.programs.example import Prediction


class _Broken(dspex.Module):
    """A program with a bug: every call raises a plain TypeError."""

    async def aforward(self, question: str) -> Prediction:
        raise TypeError(f"cannot handle {question!r}")


async def test_a_program_bug_is_raised_to_the_caller_not_waited_on() -> None:
    examples = [
        dspex.Example(question=f"q{i}", answer="a").with_inputs("question") for i in range(5)
    ]
    async with dspex.LocalExecutor(max_concurrency=2) as executor:
        # The timeout only stops a regression from hanging the suite; the bug
        # arrives as soon as the first task fails.
        with pytest.raises(TypeError, match="cannot handle"):
            await asyncio.wait_for(executor.evaluate(_Broken(), examples, "exact_match"), 60)
