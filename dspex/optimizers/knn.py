"""KNNFewShot: demos chosen per call, the trainset examples nearest to the inputs.

At compile time the input fields of every trainset example are embedded once
(and kept by the optimizer, so compiling again embeds nothing new). At call
time the call's inputs are embedded and the ``k`` examples with the highest
cosine similarity become the demos of every predictor, most similar first,
ties broken by trainset order.

DSPy bootstraps a fresh BootstrapFewShot program from those neighbours on
every call; dspex uses the neighbours as labelled demos instead: one
embedding call and no extra LM calls per request, and deterministic. To
bootstrap, compile the student with :class:`BootstrapFewShot` first; its own
demos are replaced per call by the neighbours.

Example:
    >>> knn = KNNFewShot(3, trainset, embedder)                   # doctest: +SKIP
    >>> program = await knn.acompile(Predict("question -> answer"))  # doctest: +SKIP
    >>> await program.acall(question="...")                         # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dspex.errors import ConfigurationError
from dspex.optimizers.base import Optimizer, TrialCallback
from dspex.optimizers.embeddings import Embedder
from dspex.optimizers.executor import Executor
from dspex.optimizers.labeled import DemoCheck, check_demos, check_trainset
from dspex.programs.example import Example, Prediction
from dspex.programs.metrics import Metric
from dspex.programs.module import Module
from dspex.programs.predict import Predict

__all__ = ["KNNFewShot", "KNNProgram", "cosine_similarity", "embedding_text"]


class KNNFewShot(Optimizer):
    """Give each call the ``k`` trainset examples nearest to its inputs as demos.

    Args:
        k: Demos per call (fewer when the trainset is smaller).
        trainset: Labelled examples with inputs marked; ``acompile`` may pass another.
        embedder: Embeds the examples' and the calls' input fields.
        metric: Scores the valset check (see :mod:`dspex.optimizers.labeled`);
            defaults to ``"exact_match"``.
        executor: Where the valset check runs.
        seed: Unused (the choice is deterministic); kept for uniformity.
        on_trial: Unused.
        keep_worse: Return the KNN program even when its demos lowered the
            valset score (a warning is logged either way).

    Raises:
        ConfigurationError: ``k`` is below 1.
    """

    def __init__(
        self,
        k: int,
        trainset: Sequence[Example],
        embedder: Embedder,
        *,
        metric: Metric | str | None = None,
        executor: Executor | None = None,
        seed: int = 0,
        on_trial: TrialCallback | None = None,
        keep_worse: bool = False,
    ) -> None:
        if k < 1:
            raise ConfigurationError(f"k must be >= 1, got {k}")
        super().__init__(
            metric=metric if metric is not None else "exact_match",
            executor=executor,
            seed=seed,
            on_trial=on_trial,
        )
        self.k = k
        self.trainset = list(trainset)
        self.embedder = embedder
        self._vectors: dict[str, list[float]] = {}
        self.keep_worse = keep_worse
        #: The valset check of the last compile (None without a valset).
        self.check: DemoCheck | None = None

    async def acompile(
        self,
        student: Module,
        *,
        trainset: Sequence[Example] | None = None,
        valset: Sequence[Example] | None = None,
    ) -> Module:
        """Embed the trainset (once) and return the student wrapped as a :class:`KNNProgram`.

        Args:
            student: The program (copied, not modified).
            trainset: Overrides the constructor's trainset.
            valset: Examples to check the demos on (see :mod:`dspex.optimizers.labeled`).

        Returns:
            The program that picks its demos per call; a copy of the student
            when those demos lowered the valset score and ``keep_worse`` is False.

        Raises:
            ConfigurationError: Empty trainset, examples without inputs
                marked, or vectors of different lengths.
            LMError: The embedder failed.
        """
        examples = list(trainset) if trainset is not None else self.trainset
        check_trainset(examples)
        texts = [embedding_text(example.inputs()) for example in examples]
        missing = sorted({text for text in texts if text not in self._vectors})
        if missing:
            vectors = await self.embedder.embed(missing)
            if len(vectors) != len(missing):
                raise ConfigurationError(
                    f"the embedder returned {len(vectors)} vectors for {len(missing)} texts"
                )
            self._vectors.update(zip(missing, vectors, strict=True))
        matrix = [self._vectors[text] for text in texts]
        if len({len(vector) for vector in matrix}) > 1:
            raise ConfigurationError("the embedder returned vectors of different lengths")
        program = KNNProgram(student.deepcopy(), examples, matrix, self.embedder, k=self.k)
        returned, self.check = await check_demos(
            self, student, program, valset, keep_worse=self.keep_worse
        )
        return returned


class KNNProgram(Module):
    """A program whose predictors get the nearest trainset examples as demos per call.

    Its predictors, state and trace paths are the wrapped program's own, so
    ``dump_state``/``load_state`` fit the student. Each call runs a copy of the
    program, so concurrent calls never see each other's demos.

    Args:
        program: The program to run.
        trainset: The candidate demos.
        vectors: The embedding of each trainset example's inputs.
        embedder: Embeds the call's inputs.
        k: Demos per call.
    """

    def __init__(
        self,
        program: Module,
        trainset: Sequence[Example],
        vectors: Sequence[Sequence[float]],
        embedder: Embedder,
        *,
        k: int,
    ) -> None:
        if len(trainset) != len(vectors):
            raise ConfigurationError(
                f"{len(vectors)} vectors for {len(trainset)} trainset examples"
            )
        self.program = program
        self.k = k
        self._trainset = list(trainset)
        self._vectors = [list(vector) for vector in vectors]
        self._embedder = embedder

    def named_predictors(self) -> list[tuple[str, Predict]]:
        return self.program.named_predictors()

    async def nearest(self, **inputs: Any) -> list[Example]:
        """The ``k`` trainset examples nearest to ``inputs``, most similar first.

        Raises:
            ConfigurationError: The query's vector length differs from the trainset's.
            LMError: The embedder failed.
        """
        [query] = await self._embedder.embed([embedding_text(inputs)])
        if self._vectors and len(query) != len(self._vectors[0]):
            raise ConfigurationError(
                f"the query's embedding has {len(query)} dimensions, "
                f"the trainset's have {len(self._vectors[0])}"
            )
        scores = [cosine_similarity(query, vector) for vector in self._vectors]
        ranked = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
        return [self._trainset[index] for index in ranked[: self.k]]

    async def aforward(self, **inputs: Any) -> Prediction:
        demos = await self.nearest(**inputs)
        copy = self.program.deepcopy()
        for predictor in copy.predictors():
            predictor.demos = list(demos)
        return await copy.acall(**inputs)

    async def acall(self, **inputs: Any) -> Prediction:
        """Run the program with the nearest demos.

        The per-call copy gathers trace and usage itself, under the wrapped
        program's predictor paths (which are this program's too). Called from
        inside another program, the steps are named by signature instead: the
        copy is not an attribute of the outer program.
        """
        return await self.aforward(**inputs)


def embedding_text(fields: Mapping[str, Any]) -> str:
    """The text embedded for a set of input fields: ``key: value`` pairs by key name.

    Example:
        >>> embedding_text({"question": "Why?", "context": "Because."})
        'context: Because. | question: Why?'
    """
    return " | ".join(f"{key}: {fields[key]}" for key in sorted(fields))


def cosine_similarity(left: Sequence[float], right: Sequence[float]) -> float:
    """Cosine of the angle between two vectors; 0.0 when either is all zeros.

    Example:
        >>> cosine_similarity([1.0, 0.0], [2.0, 0.0])
        1.0
    """
    dot = math.fsum(a * b for a, b in zip(left, right, strict=True))
    norms = math.sqrt(math.fsum(a * a for a in left)) * math.sqrt(math.fsum(b * b for b in right))
    return dot / norms if norms else 0.0
