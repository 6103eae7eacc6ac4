"""The example programs, shared by the scripts here and by `dspex up`."""

from __future__ import annotations

from typing import Literal

import dspex


class ClassifySentiment(dspex.Signature):
    """Classify the sentiment of a product review."""

    review: str = dspex.InputField(desc="a customer review")
    sentiment: Literal["positive", "negative", "neutral"] = dspex.OutputField()


class ShortAnswer(dspex.Signature):
    """Answer the question in one to five words."""

    question: str = dspex.InputField()
    answer: str = dspex.OutputField(desc="one to five words")


def sentiment_program() -> dspex.Predict:
    """A Literal-typed classifier; JSONAdapter makes the server constrain the label."""
    return dspex.Predict(ClassifySentiment, adapter=dspex.JSONAdapter())


def qa_program() -> dspex.ChainOfThought:
    """Short-answer QA that reasons first."""
    return dspex.ChainOfThought(ShortAnswer, adapter=dspex.JSONAdapter())


#: Program id -> builder, registered by `dspex up`.
EXAMPLE_PROGRAMS = {"sentiment": sentiment_program, "qa": qa_program}
