"""``dspex eval``: score a registered program on a JSON Lines dataset, on the workers.

Each line of the dataset is one flat object of input and label fields; the
registered program's signature says which keys are inputs. The whole file is
checked first, line by line, before any request is sent. The run then goes
through :class:`~dspex.streams.executor.KafkaExecutor`: the file is read
again lazily as requests go out, and the scores are folded into running
aggregates as they arrive (mean and variance by Welford's method, latency
quantiles from a bounded histogram), so memory stays flat however many
examples the file holds. The command is registered on ``dspex`` by
:mod:`dspex.cli`; ``python -m dspex.cli.eval`` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import click

from dspex.cli._common import (
    EXIT_USAGE,
    fail,
    handles_errors,
    kafka_options,
    kafka_or_default,
    prefix_or_default,
)
from dspex.cli._datasets import DatasetFields, check_dataset, read_examples
from dspex.errors import ConfigurationError
from dspex.programs._progress import StatusLine
from dspex.programs._scoring import standard_error_from_moments
from dspex.programs.example import Example
from dspex.programs.metrics import BUILTIN_METRICS

if TYPE_CHECKING:
    from dspex.optimizers.executor import ScoredOutput, ScoreError
    from dspex.streams.executor import KafkaExecutor

__all__ = ["LatencyHistogram", "RunStats", "eval_command"]

#: Seconds between progress updates: redrawn in place on a terminal, a new line elsewhere.
_PROGRESS_TTY_S: Final = 0.5
_PROGRESS_PIPE_S: Final = 2.0
#: z of a two-sided 95% normal interval.
_Z95: Final = 1.959963984540054


# -- running aggregates -----------------------------------------------------------------


class LatencyHistogram:
    """Quantiles of many latencies in bounded memory: log-spaced buckets, 1 % wide.

    Example:
        >>> histogram = LatencyHistogram()
        >>> for ms in range(1, 101):
        ...     histogram.add(float(ms))
        >>> round(histogram.quantile(0.5))
        50
    """

    #: Relative width of a bucket: quantiles are within this of the true value.
    PRECISION: Final = 0.01
    #: Latencies below this (ms) share the lowest bucket.
    FLOOR_MS: Final = 0.001

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.max_ms = 0.0
        self.min_ms = math.inf
        self._log_step = math.log1p(self.PRECISION)

    def add(self, latency_ms: float) -> None:
        bucket = (
            int(math.log(latency_ms / self.FLOOR_MS) / self._log_step)
            if latency_ms > self.FLOOR_MS
            else 0
        )
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        self.count += 1
        self.max_ms = max(self.max_ms, latency_ms)
        self.min_ms = min(self.min_ms, latency_ms)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in ms, to :attr:`PRECISION`; 0 with no data."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                middle = self.FLOOR_MS * math.exp((bucket + 0.5) * self._log_step)
                return min(max(middle, self.min_ms), self.max_ms)
        return self.max_ms


@dataclass
class RunStats:
    """What the command shows of a run, folded in one score at a time."""

    total: int
    count: int = 0
    score_sum: float = 0.0
    #: Welford's running mean and sum of squared deviations, for the variance.
    _running_mean: float = 0.0
    _m2: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    first_error: ScoreError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    cost_usd: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def add(self, output: ScoredOutput) -> None:
        self.count += 1
        self.score_sum += output.score
        delta = output.score - self._running_mean
        self._running_mean += delta / self.count
        self._m2 += delta * (output.score - self._running_mean)
        if output.error is not None:
            self.errors[output.error.type] = self.errors.get(output.error.type, 0) + 1
            if self.first_error is None:
                self.first_error = output.error
        usage = output.usage
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.calls += usage.calls
        self.cached_calls += usage.cached_calls
        self.cost_usd += usage.cost_usd
        self.latency.add(output.latency_s * 1000)
        if self.count == self.total:
            self.finished = time.monotonic()

    @property
    def mean(self) -> float:
        """Mean score (a plain sum: exact for 0/1 metrics, unlike the running mean)."""
        return self.score_sum / self.count if self.count else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def standard_error(self) -> float:
        return standard_error_from_moments(self.count, self._m2)

    @property
    def wall_time_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        elapsed = self.wall_time_s
        return self.count / elapsed if elapsed > 0 else 0.0

    def progress(self) -> str:
        if not self.count:
            return f"0/{self.total} scored, waiting for the workers"
        rate = self.rate
        eta = _duration((self.total - self.count) / rate) if rate > 0 else "?"
        return (
            f"{self.count}/{self.total} ({100 * self.count / self.total:.0f}%)  "
            f"mean {self.mean:.3f}  errors {self.error_count}  {rate:.1f}/s  ETA {eta}"
        )

    def report(self, **about: Any) -> dict[str, Any]:
        """The final numbers as one JSON-ready object (``about`` goes first)."""
        margin = _Z95 * self.standard_error
        return {
            **about,
            "examples": self.count,
            "mean": self.mean,
            "standard_error": self.standard_error,
            "ci95": [self.mean - margin, self.mean + margin],
            "errors": self.error_count,
            "errors_by_type": dict(sorted(self.errors.items())),
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "calls": self.calls,
                "cached_calls": self.cached_calls,
                "cost_usd": self.cost_usd,
            },
            "latency_ms": {
                "p50": self.latency.quantile(0.50),
                "p95": self.latency.quantile(0.95),
                "max": self.latency.max_ms,
            },
            "wall_time_s": self.wall_time_s,
            "examples_per_s": self.rate,
        }


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_table(report: dict[str, Any]) -> str:
    """The final report as aligned ``name  value`` rows."""
    usage, latency = report["usage"], report["latency_ms"]
    low, high = report["ci95"]
    rows = [
        ("program", f"{report['program_id']} version {report['program_version']}"),
        ("dataset", report["dataset"]),
        ("metric", report["metric"]),
        ("examples", f"{report['examples']}"),
        ("mean score", f"{report['mean']:.4f}"),
        ("std. error", f"{report['standard_error']:.4f}"),
        ("95% interval", f"{low:.4f} .. {high:.4f}"),
        ("errors", f"{report['errors']}"),
        *((f"  {kind}", f"{count}") for kind, count in report["errors_by_type"].items()),
        (
            "tokens",
            f"{usage['total_tokens']} (prompt {usage['prompt_tokens']}, "
            f"completion {usage['completion_tokens']}; {usage['calls']} LM calls, "
            f"{usage['cached_calls']} cached)",
        ),
        ("cost", f"${usage['cost_usd']:.4f}"),
        ("latency p50", f"{latency['p50']:.1f} ms"),
        ("latency p95", f"{latency['p95']:.1f} ms"),
        ("wall time", f"{report['wall_time_s']:.1f} s"),
        ("examples/s", f"{report['examples_per_s']:.1f}"),
        ("run id", report["run_id"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


# -- the run ----------------------------------------------------------------------------


def _score_line(output: ScoredOutput, line: int | None) -> str:
    usage = output.usage
    error = output.error
    return json.dumps(
        {
            "index": output.index,
            "line": line,
            "score": output.score,
            "outputs": output.outputs,
            "error": None if error is None else {"type": error.type, "message": error.message},
            "latency_ms": output.latency_s * 1000,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_usd": usage.cost_usd,
            },
        },
        default=str,
    )


async def _evaluate(
    executor: KafkaExecutor,
    examples: Iterator[Example],
    stats: RunStats,
    *,
    metric: str,
    version: int,
    run_id: str,
    sink: TextIO | None,
    lines_of: dict[int, int] | None,
    progress: Callable[[str], None],
    every_s: float,
) -> None:
    async def show() -> None:
        while True:
            progress(stats.progress())
            await asyncio.sleep(every_s)

    async with executor:
        stats.started = time.monotonic()
        ticker = asyncio.create_task(show())
        try:
            async for output in executor.score_registered(
                examples, metric, version=version, run_id=run_id, run_size=stats.total
            ):
                stats.add(output)
                if sink is not None:
                    line = lines_of.pop(output.index, None) if lines_of is not None else None
                    sink.write(_score_line(output, line) + "\n")
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    progress(stats.progress())


def _parse_inputs(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise click.BadParameter("name at least one input field", ctx=ctx, param=param)
    return names


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("program_id")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--metric",
    type=click.Choice(sorted(BUILTIN_METRICS)),
    default="exact_match",
    show_default=True,
    help="How each output is scored against the example's label.",
)
@click.option("--version", type=click.IntRange(min=1), help="Version [default: the active one].")
@click.option(
    "--inputs",
    callback=_parse_inputs,
    metavar="NAMES",
    help="Comma-separated input fields [default: the inputs of the program's signature; "
    "needed for custom modules, whose specs have none].",
)
@click.option(
    "--max-outstanding",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Most examples sent and not yet scored.",
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Fail when no score arrives for this many seconds (no worker answering).",
)
@click.option(
    "--run-id",
    type=click.STRING,
    help="Name of the run in scores and the workers' report [default: a random id].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--scores",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write each scored example here, one JSON object per line, as they arrive.",
)
@kafka_options
@handles_errors
def eval_command(
    program_id: str,
    dataset: Path,
    metric: str,
    version: int | None,
    inputs: tuple[str, ...],
    max_outstanding: int,
    idle_timeout_s: float,
    run_id: str | None,
    as_json: bool,
    scores: Path | None,
    bootstrap_servers: str | None,
    prefix: str | None,
) -> None:
    """Score PROGRAM_ID on DATASET (JSON Lines) on the workers; print the report.

    Each line is an object of the program's input fields and its label (an
    output field, e.g. {"review": "Great!", "sentiment": "positive"}); keys
    that are neither are ignored, blank lines skipped. Every line is checked
    before anything is sent. The version evaluated is fixed when the run
    starts (--version, else the one active then).

    Progress goes to stderr; the report (mean score, standard error and 95 %
    interval, errors by type, tokens, cost, latency, throughput) to stdout.

    Exit code 0 when the run completes (failed examples count with score 0
    and are listed by type); 1 if every example failed, the program is not
    registered, Kafka cannot be reached or no score arrives within the
    idle timeout; 2 for bad usage or a bad dataset.
    """
    # Kafka loads only when the command runs, like dspex.cli's commands.
    from dspex.streams.executor import KafkaExecutor
    from dspex.streams.registry import load_catalog
    from dspex.streams.topics import TopicNames

    if run_id is not None and not 1 <= len(run_id) <= 200:
        raise click.BadParameter("1 to 200 characters", param_hint="'--run-id'")
    servers = kafka_or_default(bootstrap_servers)
    names = TopicNames(prefix_or_default(prefix))
    catalog = asyncio.run(load_catalog(servers, names))
    record = catalog.record(program_id, version)
    try:
        fields = DatasetFields.of(record, inputs)
        total = check_dataset(dataset, fields)
    except ConfigurationError as exc:
        fail(str(exc), EXIT_USAGE)
    run_id = run_id or uuid.uuid4().hex
    executor = KafkaExecutor(
        program_id=program_id,
        bootstrap_servers=servers,
        prefix=names.prefix,
        max_outstanding=max_outstanding,
        idle_timeout_s=idle_timeout_s,
    )
    stats = RunStats(total=total)
    lines_of: dict[int, int] | None = {} if scores is not None else None
    try:
        sink = None if scores is None else scores.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {scores}: {exc.strerror}") from exc
    try:
        with StatusLine() as status:
            every_s = _PROGRESS_TTY_S if sys.stderr.isatty() else _PROGRESS_PIPE_S
            asyncio.run(
                _evaluate(
                    executor,
                    read_examples(dataset, fields, lines_of),
                    stats,
                    metric=metric,
                    version=record.version,
                    run_id=run_id,
                    sink=sink,
                    lines_of=lines_of,
                    progress=status,
                    every_s=every_s,
                )
            )
    finally:
        if sink is not None:
            sink.close()
    report = stats.report(
        program_id=program_id,
        program_version=record.version,
        dataset=str(dataset),
        metric=metric,
        run_id=run_id,
    )
    click.echo(json.dumps(report) if as_json else format_table(report))
    if stats.first_error is not None and stats.error_count == stats.count:
        first = stats.first_error
        fail(f"all {stats.count} examples failed; first: {first.type}: {first.message}")
