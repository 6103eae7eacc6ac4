"""Online mode: production traces joined with the feedback users attach to them.

A trace is a request's inputs (from the requests topic), the outputs its
result gave (from the results topic) and a score or gold label (from the
feedback topic). The three arrive in any order; each side waits in a bounded,
oldest-first-forgotten buffer until the others come. Per program, the best
traces are kept, and the optimizer service turns them into demos.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from dspex.programs.example import Example
from dspex.streams.records._inference import InferenceRequest, InferenceResult
from dspex.streams.records._optimizer import FeedbackRecord

__all__ = ["Trace", "TraceBook"]

#: Best traces kept per program.
_KEPT_PER_PROGRAM = 64


@dataclass(frozen=True)
class Trace:
    """One production request with its outputs and how good they were."""

    request_id: str
    program_id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    score: float
    sequence: int  # order of joining: among equal scores, newer is preferred

    def example(self) -> Example:
        return Example({**self.inputs, **self.outputs}).with_inputs(*self.inputs)


class _Bounded(OrderedDict[str, Any]):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class TraceBook:
    """Joins requests, results and feedback; keeps each program's best traces.

    Args:
        capacity: Requests, results and unmatched feedback each remembered
            (the oldest is forgotten first), so memory is bounded however long
            the topics are.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._requests = _Bounded(capacity)
        self._results = _Bounded(capacity)
        self._feedback = _Bounded(capacity)
        self._best: dict[str, list[Trace]] = {}
        self._joined = 0

    def add_request(self, request: InferenceRequest) -> Trace | None:
        self._requests.put(request.request_id, (request.program_id, dict(request.inputs)))
        return self._join(request.request_id)

    def add_result(self, result: InferenceResult) -> Trace | None:
        if result.status != "ok" or result.outputs is None:
            return None
        self._results.put(result.request_id, dict(result.outputs))
        return self._join(result.request_id)

    def add_feedback(self, feedback: FeedbackRecord) -> Trace | None:
        self._feedback.put(feedback.request_id, feedback)
        return self._join(feedback.request_id)

    def _join(self, request_id: str) -> Trace | None:
        request = self._requests.get(request_id)
        feedback: FeedbackRecord | None = self._feedback.get(request_id)
        if request is None or feedback is None:
            return None
        program_id, inputs = request
        if feedback.label:
            # A gold label is a correct answer, whatever the program said.
            outputs, score = dict(feedback.label), 1.0
        else:
            result = self._results.get(request_id)
            if result is None or feedback.score is None:
                return None
            outputs, score = result, feedback.score
        for side in (self._requests, self._results, self._feedback):
            side.pop(request_id, None)
        self._joined += 1
        trace = Trace(request_id, program_id, inputs, outputs, score, self._joined)
        best = self._best.setdefault(program_id, [])
        best.append(trace)
        best.sort(key=lambda t: (t.score, t.sequence), reverse=True)
        del best[_KEPT_PER_PROGRAM:]
        return trace

    def waiting_feedback(self, request_id: str) -> bool:
        """Whether feedback for ``request_id`` waits for its request or result."""
        return request_id in self._feedback

    def best(self, program_id: str, *, min_score: float, count: int | None = None) -> list[Trace]:
        """The program's best traces (``count`` at most) scoring at least ``min_score``."""
        eligible = [t for t in self._best.get(program_id, []) if t.score >= min_score]
        return eligible if count is None else eligible[:count]

    def held(self, program_id: str) -> int:
        return len(self._best.get(program_id, []))
