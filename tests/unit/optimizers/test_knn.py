"""KNNFewShot's pure parts: similarity, ranking, state and copies (no HTTP)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import dspex
from dspex.errors import ConfigurationError
from dspex.optimizers.embeddings import CallableEmbedder
from dspex.optimizers.knn import KNNFewShot, KNNProgram, cosine_similarity, embedding_text


def axis_embedding(texts: Sequence[str]) -> list[list[float]]:
    """``word: x,y`` embeds as the vector (x, y)."""
    return [[float(v) for v in text.split(": ")[1].split(",")] for text in texts]


TRAIN = [
    dspex.Example(word=w, answer=str(i)).with_inputs("word")
    for i, w in enumerate(["1,0", "0,1", "1,1", "-1,0", "2,0"])
]


def test_cosine_similarity() -> None:
    assert cosine_similarity([1.0, 0.0], [3.0, 0.0]) == pytest.approx(1.0)
    assert cosine_similarity([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert cosine_similarity([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(-1.0)
    assert cosine_similarity([0.0, 0.0], [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="zip"):
        cosine_similarity([1.0], [1.0, 2.0])


def test_embedding_text_orders_fields_by_name() -> None:
    assert embedding_text({"b": 1, "a": "x"}) == embedding_text({"a": "x", "b": 1}) == "a: x | b: 1"


async def test_nearest_ranks_by_cosine_and_breaks_ties_by_trainset_order() -> None:
    program = await KNNFewShot(3, TRAIN, CallableEmbedder(axis_embedding)).acompile(
        dspex.Predict("word -> answer")
    )
    # (1, 0) and (2, 0) tie at 1.0 (trainset order decides), then (1, 1) at 0.71.
    assert [e.word for e in await program.nearest(word="5,0")] == ["1,0", "2,0", "1,1"]
    assert [e.word for e in await program.nearest(word="0,3")] == ["0,1", "1,1", "1,0"]


async def test_the_program_looks_like_the_student() -> None:
    student = dspex.ChainOfThought("word -> answer")
    embedder = CallableEmbedder(axis_embedding)
    program = await KNNFewShot(2, TRAIN, embedder).acompile(student)
    assert isinstance(program, KNNProgram)
    assert [name for name, _ in program.named_predictors()] == ["predict"]
    assert program.dump_state() == student.dump_state()
    program.load_state(student.dump_state())
    copy = program.deepcopy()
    assert copy._embedder is embedder  # shared, like an LM client
    assert copy.program is not program.program


async def test_bad_inputs() -> None:
    with pytest.raises(ConfigurationError, match="k must be"):
        KNNFewShot(0, TRAIN, CallableEmbedder(axis_embedding))
    with pytest.raises(ConfigurationError, match="empty"):
        await KNNFewShot(1, [], CallableEmbedder(axis_embedding)).acompile(
            dspex.Predict("word -> answer")
        )
    with pytest.raises(ConfigurationError, match="different lengths"):
        await KNNFewShot(
            1, [*TRAIN, TRAIN[0].copy(word="1,2,3")], CallableEmbedder(axis_embedding)
        ).acompile(dspex.Predict("word -> answer"))
    program = await KNNFewShot(1, TRAIN, CallableEmbedder(axis_embedding)).acompile(
        dspex.Predict("word -> answer")
    )
    with pytest.raises(ConfigurationError, match="dimensions"):
        await program.nearest(word="1,2,3")
    short = CallableEmbedder(lambda texts: [[1.0]])
    with pytest.raises(ConfigurationError, match="1 vectors for 2 texts"):
        await short.embed(["a", "b"])


async def test_async_embedding_functions_work_too() -> None:
    async def embed(texts: Sequence[str]) -> list[list[float]]:
        return axis_embedding(texts)

    assert await CallableEmbedder(embed).embed(["w: 1,2"]) == [[1.0, 2.0]]
    assert await CallableEmbedder(embed).embed([]) == []
