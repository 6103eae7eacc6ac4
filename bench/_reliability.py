"""``docs/reliability.md``: the guarantees, and what ``bench.chaos`` measured of them.

Rendered by ``python -m bench.report`` beside docs/benchmarks.md (which shows
the same table in short) from ``bench/results/chaos.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["chaos_rows", "chaos_table", "render_reliability"]

HEADER = [
    "scenario",
    "requests",
    "answered",
    "lost",
    "repeats on the results topic (per disruption)",
    "delivered twice by the client",
    "error results",
    "LM calls beyond one per request",
    "latency p50 / p99 (ms)",
    "duration (s)",
]

GUARANTEES = """\
## What a deployment guarantees

**Every request gets a result, at least once.** A worker commits a request's
offset only after its result (and its events, or its dead letter) has been
produced and acknowledged by the broker, and only when every earlier offset of
its partition is too: requests finish out of order, the committed offset never
passes one still running. Offsets are committed every `commit_interval_s`
(0.1 s by default). What a worker had not committed when it dies is read
again by the worker that takes its partitions over.

**What a crash repeats is bounded.** After a SIGKILL the next owner re-runs
what the dead worker had in flight (at most `inflight_limit` per channel) and
what it finished in its last commit interval. Each repeat is a result on the
results topic with the same `request_id`; `DSPExClient` delivers each request
id once (`stats.duplicates_dropped` counts the repeats it dropped). A client
written elsewhere should do the same: the request id is the idempotency key.

**A graceful stop repeats nothing.** On SIGTERM (a rolling deploy), and when
a rebalance takes partitions away, the worker stops fetching, finishes what is
in flight from those partitions (bounded by 0.8 x `stop_timeout_s`), commits,
and only then gives the partitions up (the `rolling_restart` scenario below
measures it).

**A broker restart loses nothing.** Results that cannot be produced are
retried with backoff and never committed before delivery; consumers and
producers reconnect by themselves. A restart costs a pause and some repeats
(commits fail while the broker is away, so the group re-reads from the last
commit that landed).

**LM faults delay requests; they do not fail them.** Each LM call is retried
(exponential backoff with full jitter; a server's `Retry-After` is obeyed)
until the request's own deadline (`request_timeout_s`, or the client's
`deadline_ms` when sooner). The circuit breaker of each LM endpoint opens on a
failure *rate* over a window (at least `breaker_failures` failures that are at
least `breaker_failure_rate` of the window's calls, counting the calls still
running), not on a run of consecutive failures among concurrent calls; 5xx,
timeouts and connection errors count, 4xx (a 429 included) do not. While it
is open, calls wait instead of failing (`breaker_when_open: wait`): the
worker's in-flight slots fill, it pauses its partitions and stops consuming,
requests stay in Kafka, and one probe per `breaker_recovery_s` finds out when
the LM is back. Only a request whose deadline passes ends as `lm_unavailable`
(or `deadline_exceeded`). A 429 storm works the same way: calls wait out
`Retry-After`, in-flight slots stay full, and consumption slows to what the
provider serves.

**A wedged consumer gives its partitions up.** Each channel's loop and
commit rounds are watched; a consumer that stops making progress for
0.6 x `session_timeout_s` is logged, counted
(`dspex_consumer_stalls_total`) and replaced, within the session timeout.

**Exactly once, as an option.** With `processing_guarantee: exactly_once`
a worker holds each answer until every earlier offset of its partition is
answered, then produces the answers (results, events, dead letters) and
commits the offset after them in one Kafka transaction, every
`commit_interval_s`. A reader with `isolation_level=read_committed` (every
dspex reader: the client, the CLI, the evaluation aggregator, the optimizer
service) sees each
result once: a round that did not commit is aborted, and its offsets are read
again by whoever owns the partition next. Each input partition has its own
transactional producer, whose id is the group, topic and partition: the
partition's next owner starts a producer with that id, which fences the old
one (the broker refuses its transactions and aborts the one it left open). A
fenced worker drops what it held and rejoins its group. The price: results
become visible at the commit round (up to `commit_interval_s` later), and a
crash still repeats the *work* (the LM calls) of what was not committed; only
the output is once. The optimizer service's agents (commands, feedback, and
the requests and results it follows for online traces) read committed
records too: its Faust consumers are made with `read_committed` while the
service itself processes at least once.

**Bad input.** Hypothesis-generated bursts of records (arbitrary bytes, and
valid records broken one way each: a field dropped, retyped or added, the
schema renamed, the JSON cut short, bytes that are not UTF-8, any key) go to
every input topic on a real broker, with a worker and the optimizer service
serving them (`tests/faults/test_fuzzed_input.py`). Every record is accounted
for: a request, evaluation request, command or feedback record is answered
(result, score, journal event, counted in /metrics) or dead-lettered on
`dspex.inference.dlq` with its offset and reason; a program record the wire
format cannot read, or the catalog refuses, is skipped with a log line naming
its offset (the registry is a compacted log, and one bad version must not stop
a worker). After each burst a valid record is answered: nothing gets stuck
behind the garbage.

**Secured clusters.** Every Kafka client dspex runs (worker, optimizer
service, client, CLI) connects with SASL (SCRAM) over TLS or mutual TLS from
the topology's `kafka:` section or `DSPEX_*` variables; passwords are read
from a variable or file at connect time and never stored. On a broker started
with `dspex broker start --secure` (no plaintext port, ACLs enforced), a
worker and clients with the right credentials work end to end, a wrong
password fails fast with `KafkaAuthError` (exit code 4), a principal without
a WRITE ACL is refused, and the password appears in no output
(`tests/integration/test_secure_kafka.py`).
"""


def chaos_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, found in results.items():
        per = found.get("duplicated_per_disruption")
        repeats = f"{found['duplicated_on_topic']:,}" + (f" ({per:g})" if per is not None else "")
        errors = ", ".join(f"{k} {v:,}" for k, v in sorted(found["errors_by_type"].items()))
        latency = found.get("latency_ms", {})
        rows.append(
            [f"`{name}`: {found['what']}", f"{found['requests']:,}", f"{found['answered']:,}",
             f"{found['lost']:,}", repeats, f"{found['delivered_twice_by_client']:,}",
             errors or "none", f"{found['lm_calls_beyond_one_per_request']:,}",
             f"{latency.get('p50', 0):,.0f} / {latency.get('p99', 0):,.0f}",
             f"{found['duration_s']:,.1f}"]
        )  # fmt: skip
    return rows


def chaos_table(results: Mapping[str, Any]) -> str:
    rows = chaos_rows(results)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _lm_calls(results: Mapping[str, Any]) -> str:
    lines = []
    for name, found in results.items():
        calls = ", ".join(f"{k} {v:,}" for k, v in sorted(found["lm_calls"].items()))
        damage = "; ".join(
            f"{event['what']} at {event['t_s']:g} s"
            + (f" ({event['worker']})" if "worker" in event else "")
            for event in found["damage"]
        )
        lines.append(f"- `{name}`: LM answers {calls}." + (f" Done: {damage}." if damage else ""))
    return "\n".join(lines)


def render_reliability(chaos_json: Path) -> str:
    """The whole of docs/reliability.md."""
    parts = [
        "# Reliability",
        "Generated by `python -m bench.report` from `bench/results/chaos.json` (written by "
        "`python -m bench.chaos`, part of `make bench`). A short run of the same harness is "
        "part of `make test` (tests/integration/test_chaos.py): it fails when a request is "
        "lost, delivered twice or ends in an error under any of the scenarios.",
        GUARANTEES,
    ]
    if chaos_json.exists():
        data = json.loads(chaos_json.read_text(encoding="utf-8"))
        env = data.get("environment", {})
        setup = data.get("setup", {})
        results = data["results"]
        parts += [
            "## Measured",
            f"Recorded {data.get('recorded_at', '?')} ({data.get('mode', '?')} mode), "
            f"{env.get('cpu_count', '?')} CPUs, Python {env.get('python', '?')}, everything on "
            f"one machine: a private broker ({setup.get('partitions', '?')} partitions, session "
            f"timeout {setup.get('session_timeout_s', '?')} s), `dspex worker` processes, the "
            "client (`DSPExClient.submit_many`, every request sent at once, each with a 300 s "
            "deadline) and a scripted LM on loopback that fails on demand (answers take 20 ms; "
            "100 ms where workers are killed or the broker restarts, so the damage lands while "
            "requests are in flight). Results on the topic are counted as a read_committed "
            "reader sees them.",
            chaos_table(results),
            "Lost: requests with no result on the results topic at all. Repeats: results on "
            "the topic beyond one per request (at-least-once), per stop, kill or broker restart. "
            "LM calls beyond one per request: retries of failed calls, and repeats. Latency: "
            "from sending to the client delivering the result; with every request sent at "
            "once it is mostly queueing, and a SIGKILL adds the session timeout before the "
            "dead worker's partitions move.",
            _lm_calls(results),
        ]
    return "\n\n".join(parts) + "\n"
