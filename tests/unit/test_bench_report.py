"""docs/benchmarks.md and docs/reliability.md are what bench/results/*.json say."""

from __future__ import annotations

from bench._reliability import render_reliability
from bench.report import CHAOS, DOC, RELIABILITY, RESULTS, SECTIONS, UNITS, render


def test_benchmarks_doc_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m bench.report"


def test_every_result_file_has_a_section_and_a_plot_unit() -> None:
    names = {path.stem for path in RESULTS.glob("*.json")}
    assert names <= set(SECTIONS), f"no section renders {sorted(names - set(SECTIONS))}"
    assert set(SECTIONS) == set(UNITS)


def test_reliability_doc_is_current() -> None:
    assert RELIABILITY.read_text(encoding="utf-8") == render_reliability(CHAOS), (
        "run: python -m bench.report"
    )
