"""``dspex submit``: run a registered program on the workers from the command line.

Requests come from ``--input KEY=VALUE`` options (one request) or a JSON Lines
file (one request per line); each result is printed as one JSON line, in the
wire format of ``dspex.inference.result/v1`` (docs/wire-format.md), in the
order the results arrive. The command is registered on ``dspex`` by
:mod:`dspex.cli`; ``python -m dspex.cli.submit`` runs it alone.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import click

from dspex.cli._common import fail, handles_errors, kafka_options
from dspex.errors import ConfigurationError
from dspex.programs._progress import StatusLine
from dspex.streams.client._base import new_request

if TYPE_CHECKING:
    from dspex.streams.client import DSPExClient
    from dspex.streams.records import InferenceRequest, InferenceResult

__all__ = ["submit"]

#: Keys an envelope line may have besides ``inputs``.
_ENVELOPE_KEYS: Final = frozenset({"inputs", "request_id", "metadata"})
#: Seconds between progress updates (a pipe gets one line per update).
_PROGRESS_EVERY_S: Final = 0.5


def parse_value(text: str) -> Any:
    """A ``--input`` value: JSON when it parses as JSON, else the text itself.

    Example:
        >>> parse_value("3"), parse_value('["a", "b"]'), parse_value("hello world")
        (3, ['a', 'b'], 'hello world')
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_inputs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        inputs[key.strip()] = parse_value(value)
    return inputs


def read_requests(path: Path, program_id: str, version: int | None) -> Iterator[InferenceRequest]:
    """The requests of a JSON Lines file, read lazily; blank lines are skipped.

    A line is an object of input fields, or an envelope: an object with an
    ``inputs`` object and, optionally, ``request_id`` and ``metadata``.

    Raises:
        ConfigurationError: The file cannot be read, or a line is not a request
            (the message names the line).
    """
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield _request(line, program_id, version, where=f"{path} line {number}")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc


def _request(line: str, program_id: str, version: int | None, *, where: str) -> InferenceRequest:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: not a JSON object of inputs")
    if isinstance(value.get("inputs"), dict) and set(value) <= _ENVELOPE_KEYS:
        extra = {key: item for key, item in value.items() if key != "inputs"}
        return new_request(program_id, version, value["inputs"], where=where, **extra)
    return new_request(program_id, version, value, where=where)


@dataclass
class _Tally:
    """Requests submitted and results written so far, for progress and the exit code."""

    submitted: int = 0
    done: int = 0
    errors: int = 0
    first_error: InferenceResult | None = None

    def counting(self, requests: Iterable[InferenceRequest]) -> Iterator[InferenceRequest]:
        for request in requests:
            self.submitted += 1  # taken by the client to be produced now
            yield request

    def add(self, result: InferenceResult) -> None:
        self.done += 1
        if result.status == "error":
            self.errors += 1
            if self.first_error is None:
                self.first_error = result

    def line(self) -> str:
        return f"submitted {self.submitted}, done {self.done}, errors {self.errors}"


async def _submit(
    client: DSPExClient,
    requests: Iterable[InferenceRequest],
    *,
    program_id: str,
    max_in_flight: int,
    sink: TextIO,
    progress: Callable[[str], None] | None,
) -> _Tally:
    from dspex.streams.records import encode

    tally = _Tally()
    last_shown = 0.0
    async with client:
        stream = client.submit_many(
            tally.counting(requests), program_id=program_id, max_in_flight=max_in_flight
        )
        async for result in stream:
            sink.write(encode(result).decode("utf-8") + "\n")
            sink.flush()
            tally.add(result)
            if progress is not None and time.monotonic() - last_shown >= _PROGRESS_EVERY_S:
                progress(tally.line())
                last_shown = time.monotonic()
    if progress is not None:
        progress(tally.line())
    return tally


@click.command("submit", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("program_id")
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_inputs,
    help="An input field (repeat for each). VALUE is parsed as JSON when it is JSON "
    '(3, true, ["a"]), else taken as a string.',
)
@click.option(
    "--file",
    "-f",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON Lines, one request per line: an object of inputs, or "
    '{"inputs": {...}, "request_id": "...", "metadata": {...}}.',
)
@click.option("--version", type=click.IntRange(min=1), help="Version [default: the active one].")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds to wait for each result.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Most requests waiting for a result at once (--file).",
)
@kafka_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results here [default: stdout].",
)
@handles_errors
def submit(
    program_id: str,
    inputs: dict[str, Any],
    file: Path | None,
    version: int | None,
    timeout_s: float,
    max_in_flight: int,
    bootstrap_servers: str | None,
    prefix: str | None,
    out: Path | None,
) -> None:
    """Run PROGRAM_ID on the workers; print each result as one JSON line.

    Give the inputs of one request with --input, or many requests with --file
    (progress on stderr: "submitted N, done M, errors E"). Results are printed
    as they arrive (any order), one dspex.inference.result/v1 object per line;
    a request without a result within --timeout gets a deadline_exceeded
    error result.

    Exit code 0 if every result is ok; 1 if any result is an error (unknown
    program, invalid inputs, LM failure, timeout, ...) or Kafka cannot be
    reached; 2 for bad usage.
    """
    # Kafka and the client load only when a request is sent, like dspex.cli's commands.
    from dspex.streams.client import DSPExClient, error_from_result

    if file is not None and inputs:
        raise click.UsageError("give --input or --file, not both")
    if file is None and not inputs:
        raise click.UsageError("give the inputs with --input KEY=VALUE, or a --file of requests")
    client = DSPExClient(
        bootstrap_servers=bootstrap_servers, prefix=prefix, default_timeout_s=timeout_s
    )
    requests: Iterable[InferenceRequest]
    if file is None:
        requests = [new_request(program_id, version, inputs, where="--input")]
    else:
        # Check every line before sending any, so a bad line 900 sends nothing.
        total = sum(1 for _ in read_requests(file, program_id, version))
        if total == 0:
            raise ConfigurationError(f"{file} holds no requests")
        requests = read_requests(file, program_id, version)
    try:
        sink = sys.stdout if out is None else out.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {out}: {exc.strerror}") from exc
    try:
        with StatusLine() as status:
            tally = asyncio.run(
                _submit(
                    client,
                    requests,
                    program_id=program_id,
                    max_in_flight=max_in_flight,
                    sink=sink,
                    progress=status if file is not None else None,
                )
            )
    finally:
        if sink is not sys.stdout:
            sink.close()
    if tally.first_error is not None:
        first = str(error_from_result(tally.first_error, requested_version=version))
        if tally.done == 1:
            fail(first)
        fail(f"{tally.errors} of {tally.done} requests failed; first: {first}")
