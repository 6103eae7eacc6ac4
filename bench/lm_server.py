"""A latency-controlled, OpenAI-compatible LM server: a benchmark instrument, not a model.

It answers every chat completion after a latency drawn from a configured
distribution, with a fixed completion or one chosen per prompt by a script,
and optionally rate-limits: beyond N requests per second it answers 429 with
``Retry-After``. Benchmarks point DSPEx and its alternatives (DSPy, a bare
loop) at the same instance, so every contender waits on the same LM.

    python -m bench.lm_server --port 0 --latency fixed:0.1
    python -m bench.lm_server --latency lognormal:0.1:0.5 --rate-limit 200 --script rules.json

The first line printed is the port. ``--script`` names a JSON list of
``{"contains": "...", "text": "..."}`` rules: the first whose ``contains``
occurs in the last message gives the completion; ``--text`` otherwise.
``GET /stats`` reports requests served and the most answered at once. The
HTTP side is :class:`bench.scripted_lm.ScriptedLM`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.scripted_lm import (
    DEFAULT_TEXT,
    RecordedRequest,
    Reply,
    Responder,
    ScriptedLM,
    serve_until_signalled,
)

__all__ = ["Latency", "RateLimit", "Rule", "main", "responder"]


@dataclass(frozen=True)
class Latency:
    """A latency distribution, in seconds.

    ``fixed:M`` always M; ``uniform:LO:HI``; ``lognormal:MEDIAN:SIGMA`` (the
    heavy right tail of real providers).

    Example:
        >>> Latency.parse("uniform:0.05:0.15").sample(random.Random(1))
        0.06343642441124012
    """

    kind: Literal["fixed", "uniform", "lognormal"]
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Latency:
        kind, *numbers = text.split(":")
        try:
            values = [float(n) for n in numbers]
        except ValueError:
            raise ValueError(f"latency {text!r}: numbers expected after the kind") from None
        needed = {"fixed": 1, "uniform": 2, "lognormal": 2}
        if kind not in needed or len(values) != needed[kind]:
            raise ValueError(
                f"latency {text!r}: expected fixed:S, uniform:LO:HI or lognormal:MEDIAN:SIGMA"
            )
        if any(v < 0 for v in values):
            raise ValueError(f"latency {text!r}: negative")
        return cls(kind, *values)  # type: ignore[arg-type]

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return self.a * math.exp(rng.gauss(0.0, self.b))


class RateLimit:
    """A token bucket of ``per_s`` requests per second (burst: one second's worth).

    ``clock`` gives the time in seconds (``time.monotonic`` unless a test stops it).
    """

    def __init__(self, per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self.tokens = per_s
        self._clock = clock
        self.updated = clock()

    def admit(self) -> float | None:
        """None if a request may pass now, else the seconds until one may."""
        now = self._clock()
        self.tokens = min(self.per_s, self.tokens + (now - self.updated) * self.per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.per_s


@dataclass(frozen=True)
class Rule:
    contains: str
    text: str


def responder(
    *,
    latency: Latency,
    text: str = DEFAULT_TEXT,
    rules: Sequence[Rule] = (),
    rate_limit: float | None = None,
    seed: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> Responder:
    """The server's reply to each request (``clock`` drives the rate limit)."""
    rng = random.Random(seed)
    bucket = RateLimit(rate_limit, clock=clock) if rate_limit else None

    def reply(request: RecordedRequest) -> Reply:
        if bucket is not None:
            wait = bucket.admit()
            if wait is not None:
                retry_after = str(max(1, math.ceil(wait)))
                return Reply.error(429, "rate limited", headers={"Retry-After": retry_after})
        # A body that is not a JSON object (GET /v1/models, say) has no last message.
        sent = request.json if isinstance(request.json, dict) else {}
        messages = sent.get("messages") or [{}]
        last = str(messages[-1].get("content", ""))
        chosen = next((rule.text for rule in rules if rule.contains in last), text)
        return Reply.completion(chosen, delay_s=latency.sample(rng))

    return reply


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0: any free port [default]")
    parser.add_argument(
        "--latency", default="fixed:0.1", help="fixed:S | uniform:LO:HI | lognormal:MEDIAN:SIGMA"
    )
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s before 429s")
    parser.add_argument(
        "--text", default=DEFAULT_TEXT, help="the completion without a script match"
    )
    parser.add_argument("--script", type=Path, default=None, help="JSON list of {contains, text}")
    parser.add_argument("--seed", type=int, default=0, help="seeds the latency draws")
    args = parser.parse_args(argv)
    try:
        latency = Latency.parse(args.latency)
        rules = [Rule(**r) for r in json.loads(args.script.read_text())] if args.script else []
    except (ValueError, TypeError, OSError) as exc:
        parser.error(str(exc))
    reply = responder(
        latency=latency, text=args.text, rules=rules, rate_limit=args.rate_limit, seed=args.seed
    )
    asyncio.run(serve_until_signalled(ScriptedLM(port=args.port, responder=reply, record=False)))


if __name__ == "__main__":
    main()
