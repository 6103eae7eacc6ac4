"""A PNG of an optimizer job: score per trial, best so far, the baseline and the decision."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dspex.streams.client.optimizer import JournalRecord

__all__ = ["write_trial_plot"]


def write_trial_plot(records: Sequence[JournalRecord], path: Path, *, title: str) -> bool:
    """Draw the candidates among ``records``; False (and no file) when there are none."""
    from dspex.streams.records import CandidateRecord, OptimizerEvent

    candidates = [r for r in records if isinstance(r, CandidateRecord)]
    if not candidates:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    xs = list(range(1, len(candidates) + 1))
    for full, marker, label in ((True, "o", "full valset"), (False, "x", "minibatch")):
        points = [
            (x, c.score)
            for x, c in zip(xs, candidates, strict=True)
            if c.full_eval is full and c.score is not None
        ]
        if points:
            axes.scatter(*zip(*points, strict=True), marker=marker, label=f"trial ({label})")
    failed = [x for x, c in zip(xs, candidates, strict=True) if c.score is None]
    if failed:
        axes.scatter(failed, [0.0] * len(failed), marker="v", color="red", label="failed")
    best: list[float] = []
    for candidate in candidates:
        score = candidate.score if candidate.score is not None else float("-inf")
        best.append(max(best[-1], score) if best else score)
    axes.step(
        xs,
        [b if b != float("-inf") else float("nan") for b in best],
        where="post",
        label="best so far",
    )
    baseline = next(
        (r.baseline for r in records if isinstance(r, OptimizerEvent) and r.event == "baseline"),
        None,
    )
    if baseline is not None:
        axes.axhline(
            baseline, linestyle="--", color="gray", label=f"active version ({baseline:.3f})"
        )
    decision = next(
        (
            r
            for r in records
            if isinstance(r, OptimizerEvent) and r.event in ("promoted", "rejected")
        ),
        None,
    )
    if decision is not None:
        title += f" — {decision.event}" + (f" as v{decision.version}" if decision.version else "")
    axes.set(xlabel="candidate (in order evaluated)", ylabel="score", title=title)
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True
