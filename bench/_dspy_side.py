"""The DSPy side of ``bench.dspy_compare``: runs in its own virtualenv, DSPy from PyPI.

Started by the benchmark as ``.venv/bench-dspy/bin/python -I bench/_dspy_side.py``
(isolated: neither this checkout nor the project's virtualenv is on its path;
it imports DSPy and the standard library only). It reads one JSON command
per line on stdin and answers each with one JSON line on stdout:

* ``{"op": "hello"}``: DSPy's and LiteLLM's versions and DSPy's default
  ``num_threads`` (what ``dspy.Evaluate`` uses when given none);
* ``{"op": "evaluate", "url", "model", "dataset", "num_threads"}``:
  ``dspy.Evaluate`` of ``dspy.Predict("question -> answer")`` on the JSON
  Lines ``dataset``; the answer holds the wall time of the ``Evaluate`` call
  alone, every example's score, the examples that failed and the engine used;
* ``{"op": "compile", "url", "model", "trainset", "max_bootstrapped_demos",
  "max_labeled_demos", "max_rounds"}``: ``BootstrapFewShot(...).compile`` of the
  same program; the wall time of ``compile`` alone and the demos it chose;
* ``{"op": "quit"}``.

DSPy is given its best settings from its documentation: the LM's cache off
(``dspy.LM(..., cache=False)`` and ``dspy.configure_cache`` with neither disk
nor memory cache), ``display_progress=False`` (``Evaluate``'s default), its
default ChatAdapter and engine. Anything DSPy prints goes to stderr, so stdout
carries the answers only. An error answers ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import metadata
from typing import Any, TextIO

# LiteLLM would fetch its model price map over the network at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_IMPORT_STARTED = time.perf_counter()
import dspy  # type: ignore[import-not-found]  # noqa: E402  (only in the DSPy virtualenv)
from dspy.evaluate import answer_exact_match  # type: ignore[import-not-found]  # noqa: E402
from dspy.teleprompt import BootstrapFewShot  # type: ignore[import-not-found]  # noqa: E402

_IMPORT_S = time.perf_counter() - _IMPORT_STARTED


def read_examples(path: str) -> list[Any]:
    """The JSON Lines file as ``dspy.Example``s with ``question`` as input."""
    with open(path, encoding="utf-8") as lines:
        return [
            dspy.Example(**json.loads(line)).with_inputs("question")
            for line in lines
            if line.strip()
        ]


#: The LM of the current server: a warm-up and the timed run share its connections.
_LM: dict[tuple[str, str], Any] = {}


def language_model(command: dict[str, Any]) -> Any:
    """DSPy's LM for the benchmark server, every cache off (one per server, reused)."""
    key = (command["model"], command["url"])
    if key not in _LM:
        for old in _LM.values():
            old.close()
        _LM.clear()
        _LM[key] = dspy.LM(
            f"openai/{command['model']}", api_base=command["url"], api_key="unused", cache=False
        )
    return _LM[key]


def engines(lm: Any) -> list[str]:
    """The classes of the engines the LM has opened (which backend served the calls)."""
    store = getattr(lm, "_engine_store", {})
    return sorted({f"{type(e).__module__}.{type(e).__qualname__}" for e in store.values()})


def evaluate(command: dict[str, Any]) -> dict[str, Any]:
    devset = read_examples(command["dataset"])
    program = dspy.Predict("question -> answer")
    evaluator = dspy.Evaluate(
        devset=devset,
        metric=answer_exact_match,
        num_threads=command["num_threads"],
        display_progress=False,
    )
    lm = language_model(command)
    with dspy.context(lm=lm):
        started = time.perf_counter()
        result = evaluator(program)
        wall_s = time.perf_counter() - started
    scores = [float(score) for _, _, score in result.results]
    # Evaluate stands an empty Prediction in for an example whose call failed.
    errors = sum(1 for _, prediction, _ in result.results if prediction.get("answer") is None)
    return {"wall_s": wall_s, "scores": scores, "errors": errors, "engines": engines(lm)}


def compile_program(command: dict[str, Any]) -> dict[str, Any]:
    trainset = read_examples(command["trainset"])
    optimizer = BootstrapFewShot(
        metric=answer_exact_match,
        max_bootstrapped_demos=command["max_bootstrapped_demos"],
        max_labeled_demos=command["max_labeled_demos"],
        max_rounds=command["max_rounds"],
    )
    with dspy.context(lm=language_model(command)):
        started = time.perf_counter()
        compiled = optimizer.compile(dspy.Predict("question -> answer"), trainset=trainset)
        wall_s = time.perf_counter() - started
    demos = [
        {
            "question": demo.get("question"),
            "answer": demo.get("answer"),
            "augmented": bool(demo.get("augmented", False)),
        }
        for _, predictor in compiled.named_predictors()
        for demo in predictor.demos
    ]
    return {"wall_s": wall_s, "demos": demos}


def hello() -> dict[str, Any]:
    return {
        "dspy": metadata.version("dspy"),
        "litellm": metadata.version("litellm"),
        "default_num_threads": int(dspy.settings.num_threads),
        "import_s": _IMPORT_S,
        "python": sys.version.split()[0],
    }


def serve(commands: TextIO, answers: TextIO) -> None:
    for line in commands:
        if not line.strip():
            continue
        command = json.loads(line)
        op = command.get("op")
        if op == "quit":
            return
        try:
            if op == "hello":
                answer = hello()
            elif op == "evaluate":
                answer = evaluate(command)
            elif op == "compile":
                answer = compile_program(command)
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the benchmark, which fails the run
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> None:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    # Answers go to the original stdout; whatever DSPy prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
