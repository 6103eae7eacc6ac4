"""The client SDK and ``dspex submit`` against the real broker, real workers and the real LM.

Every test has its own topic prefix. Programs are registered before the
worker starts, so the worker knows every version when it begins serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex._local._process import free_port
from dspex.cli.submit import parse_value
from dspex.errors import (
    AdapterParseError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    DSPExError,
    InputError,
    LMAuthError,
    LMConnectionError,
    LMError,
    LMRateLimitError,
    LocalServiceError,
    ProgramNotFoundError,
    ToolError,
)
from dspex.programs.state import ProgramSpec
from dspex.streams.client import DSPExClient, DSPExClientSync, error_from_result
from dspex.streams.records import ErrorInfo, ErrorType, InferenceRequest, InferenceResult
from dspex.streams.registry import register_program
from tests.support.client_harness import (
    SENTIMENTS,
    TOPICS,
    Deployment,
    HandResponder,
    classifier,
    make_deployment,
    read_requests,
    run_cli,
    topic_spec,
)
from tests.support.deployment import start_worker, stop_worker

pytestmark = pytest.mark.kafka

#: Generous: the first request also waits for the worker to start.
WAIT_S = 90.0

StartWorker = Callable[[Deployment], None]


@pytest.fixture
def deployment(tmp_path: Path, kafka_bootstrap: str, local_lm_url: str) -> Deployment:
    """Topics of a new prefix and a worker topology with the real local LM."""
    return make_deployment(kafka_bootstrap, tmp_path, local_lm_url)


@pytest.fixture
def bare_deployment(tmp_path: Path, kafka_bootstrap: str) -> Deployment:
    """Topics of a new prefix; no worker will run."""
    return make_deployment(kafka_bootstrap, tmp_path, None)


@pytest.fixture
def run_worker() -> Iterator[StartWorker]:
    """Start a real worker for a deployment; it is stopped (and must exit 0) after the test."""
    workers = []

    def start(deployment: Deployment) -> None:
        assert deployment.topology is not None
        workers.append(start_worker(deployment.topology, f"worker-{deployment.prefix}"))

    yield start
    for worker in workers:
        code, output = stop_worker(worker)
        assert code == 0, output


def client_for(deployment: Deployment, **options: float) -> DSPExClient:
    return DSPExClient(bootstrap_servers=deployment.bootstrap, prefix=deployment.prefix, **options)


def leaked_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() - before if task is not current}


# -- request/reply with a real worker -----------------------------------------------------


async def test_run_round_trip_for_two_programs_pinned_and_active(
    deployment: Deployment, run_worker: StartWorker
) -> None:
    async with client_for(deployment, default_timeout_s=WAIT_S) as client:
        first = await client.register("classify", classifier())
        second = await client.register(
            "classify", classifier("Label the review's mood."), description="mood"
        )
        topic = await client.register("topic", topic_spec())
        assert (first.version, second.version, topic.version) == (1, 2, 1)
        run_worker(deployment)

        active = await client.run("classify", review="I love this phone.")
        pinned = await client.run("classify", version=1, review="It broke in a week.")
        headline = await client.run("topic", headline="Local team wins the cup final")
        outputs = await client.predict("topic", version=1, headline="New comet seen tonight")
        wrong_inputs = await client.run("classify", text="no review field")
        with pytest.raises(ProgramNotFoundError) as unknown:
            await client.predict("nope", review="x")
        with pytest.raises(ProgramNotFoundError) as unknown_version:
            await client.predict("classify", version=9, review="x")
        with pytest.raises(InputError):
            await client.predict("topic", review="not a headline")

    assert active.status == "ok", active.error
    assert (active.program_id, active.program_version) == ("classify", 2)
    assert active.outputs is not None
    assert active.outputs["sentiment"] in SENTIMENTS
    assert pinned.status == "ok", pinned.error
    assert pinned.program_version == 1
    assert headline.status == "ok", headline.error
    assert (headline.program_id, headline.program_version) == ("topic", 1)
    assert headline.outputs is not None
    assert headline.outputs["topic"] in TOPICS
    assert headline.worker_id == f"worker-{deployment.prefix}"
    assert outputs["topic"] in TOPICS
    assert wrong_inputs.status == "error"
    assert wrong_inputs.error is not None
    assert wrong_inputs.error.type == "invalid_inputs"
    assert unknown.value.program_id == "nope"
    assert "unknown_program" in str(unknown.value)
    assert unknown_version.value.version == 9
    assert client.stats.timeouts == 0


async def test_submit_many_yields_each_result_once_within_the_in_flight_bound(
    deployment: Deployment, run_worker: StartWorker
) -> None:
    max_in_flight = 8
    pulled = 0

    async def requests() -> AsyncIterator[dict[str, str] | InferenceRequest]:
        nonlocal pulled
        for number in range(48):
            pulled += 1
            yield {"review": f"Review {number}: {'great' if number % 2 else 'poor'} value."}
        for request_id in ("mine-1", "mine-2"):
            pulled += 1
            yield InferenceRequest(
                request_id=request_id, program_id="classify", inputs={"review": "Fine."}
            )

    async with client_for(deployment) as client:
        await client.register("classify", classifier())
        run_worker(deployment)
        results: list[InferenceResult] = []
        async for result in client.submit_many(
            requests(), program_id="classify", max_in_flight=max_in_flight, timeout_s=120
        ):
            results.append(result)
            # The client takes one more request before it waits for a free slot.
            assert pulled <= max_in_flight + len(results) + 1

    ids = [result.request_id for result in results]
    assert len(ids) == 50
    assert len(set(ids)) == 50
    assert {"mine-1", "mine-2"} <= set(ids)
    for result in results:
        assert result.status == "ok", result.error
        assert result.outputs is not None
        assert result.outputs["sentiment"] in SENTIMENTS
    sent = await read_requests(deployment)
    assert sorted(request.request_id for request in sent) == sorted(ids)
    for request in sent:
        assert request.deadline_ms is not None
        assert 0 < request.deadline_ms - request.created_at_ms <= 121_000


# -- duplicates, noise and the results stream (results produced by hand) ------------------


async def test_duplicate_results_are_delivered_once_and_noise_is_skipped(
    bare_deployment: Deployment,
) -> None:
    tasks_before = asyncio.all_tasks()
    async with HandResponder(bare_deployment) as responder, client_for(bare_deployment) as client:
        single = await client.run("echo", timeout_s=30, text="hi")
        batch = [
            result
            async for result in client.submit_many(
                ({"n": n} for n in range(20)), program_id="echo", timeout_s=30
            )
        ]
        # Every answer came twice: wait until the client has read the second copies.
        for _ in range(150):
            if client.stats.duplicates_dropped >= 21:
                break
            await asyncio.sleep(0.1)

        stream = client.results(from_beginning=True)
        streamed: list[InferenceResult] = []
        with contextlib.suppress(TimeoutError):
            while True:
                # Once everything is in, keep reading a little: nothing may repeat.
                quiet_s = 3.0 if len(streamed) >= 42 else 30.0
                streamed.append(await asyncio.wait_for(anext(stream), quiet_s))
        await stream.aclose()
        stats = client.stats

    assert single.outputs == {"echo": {"text": "hi"}}
    assert sorted(result.outputs["echo"]["n"] for result in batch if result.outputs) == list(
        range(20)
    )
    assert len({result.request_id for result in batch}) == 20
    assert {single.request_id, *(r.request_id for r in batch)} == set(responder.answered)
    streamed_ids = [result.request_id for result in streamed]
    assert len(streamed_ids) == len(set(streamed_ids)) == 42
    assert set(streamed_ids) == set(responder.answered) | set(responder.strangers)
    # 21 second copies and 21 noise records, seen once by the reader and once by the stream.
    assert (stats.duplicates_dropped, stats.invalid_records, stats.timeouts) == (42, 42, 0)
    assert not leaked_tasks(tasks_before)


# -- no worker: timeouts and start failures ---------------------------------------------


async def test_timeouts_without_a_worker(bare_deployment: Deployment) -> None:
    tasks_before = asyncio.all_tasks()
    async with client_for(bare_deployment, default_timeout_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as raised:
            await client.run("classify", review="Anyone there?")
        waited = time.monotonic() - started
        expired = [
            result
            async for result in client.submit_many(
                [{"review": "a"}, {"review": "b"}, {"review": "c"}],
                program_id="classify",
                timeout_s=0.5,
            )
        ]
        async with contextlib.aclosing(
            client.submit_many(
                ({"review": str(n)} for n in range(10_000)),
                program_id="classify",
                max_in_flight=5,
                timeout_s=0.3,
            )
        ) as endless:
            async for _ in endless:
                break  # leaving early must stop the batch's producer task
        client_id, timeouts = client.client_id, client.stats.timeouts

    sent = {request.inputs["review"]: request for request in await read_requests(bare_deployment)}
    lonely = sent["Anyone there?"]
    assert lonely.request_id in str(raised.value)
    assert raised.value.timeout_s == 1.0
    # It waited out its timeout (how much longer depends on the machine's load).
    assert waited >= 1.0
    assert lonely.deadline_ms is not None
    assert 900 <= lonely.deadline_ms - lonely.created_at_ms <= 1100
    assert {result.request_id for result in expired} == {sent[x].request_id for x in "abc"}
    for result in expired:
        assert result.status == "error"
        assert result.error is not None
        assert result.error.type == "deadline_exceeded"
        assert result.error.retryable
        assert result.worker_id == client_id
    assert timeouts >= 4
    assert len(sent) < 30, "the early-closed batch kept producing requests"
    assert not leaked_tasks(tasks_before)


async def test_start_fails_clearly_without_topics_or_broker(kafka_bootstrap: str) -> None:
    missing = f"missing{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigurationError, match=rf"{missing}\.inference\.requests does not"):
        async with DSPExClient(bootstrap_servers=kafka_bootstrap, prefix=missing):
            pass
    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(LocalServiceError, match=rf"cannot connect to Kafka at {nowhere}"):
        async with DSPExClient(bootstrap_servers=nowhere, connect_timeout_s=10):
            pass
    not_started = DSPExClient(bootstrap_servers=kafka_bootstrap)
    with pytest.raises(ConfigurationError, match="not started"):
        await not_started.run("classify", review="x")


# -- the sync wrapper -------------------------------------------------------------------


def test_sync_client_registers_runs_and_closes(
    deployment: Deployment, run_worker: StartWorker
) -> None:
    with DSPExClientSync(
        bootstrap_servers=deployment.bootstrap, prefix=deployment.prefix, default_timeout_s=WAIT_S
    ) as client:
        record = client.register("classify", ProgramSpec.from_program(classifier()))
        run_worker(deployment)
        result = client.run("classify", review="Lovely little speaker.")
        outputs = client.predict("classify", version=1, review="Terrible sound.")
        many = list(
            client.submit_many([{"review": "Good."}, {"review": "Bad."}], program_id="classify")
        )
    assert record.version == 1
    assert result.status == "ok", result.error
    assert result.program_version == 1
    assert outputs["sentiment"] in SENTIMENTS
    assert len({r.request_id for r in many}) == 2
    assert all(r.status == "ok" for r in many)
    with pytest.raises(ConfigurationError, match="closed"):
        client.run("classify", review="after close")


# -- dspex submit -----------------------------------------------------------------------


def register_classifier(deployment: Deployment) -> None:
    spec = ProgramSpec.from_program(classifier())
    asyncio.run(register_program(deployment.bootstrap, deployment.names, "classify", spec))


def connection(deployment: Deployment) -> list[str]:
    return ["--bootstrap-servers", deployment.bootstrap, "--prefix", deployment.prefix]


def test_submit_cli_with_inputs_writes_one_result(
    deployment: Deployment, run_worker: StartWorker, tmp_path: Path
) -> None:
    register_classifier(deployment)
    run_worker(deployment)
    out = tmp_path / "results.jsonl"
    done = run_cli(
        "classify",
        "--input",
        "review=Great value for money",
        *connection(deployment),
        "--timeout",
        str(WAIT_S),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    (line,) = out.read_text(encoding="utf-8").splitlines()
    result = json.loads(line)
    assert result["schema"] == "dspex.inference.result/v1"
    assert result["status"] == "ok"
    assert result["outputs"]["sentiment"] in SENTIMENTS


def test_submit_cli_with_a_file_streams_json_lines_and_fails_on_an_error_result(
    deployment: Deployment, run_worker: StartWorker, tmp_path: Path
) -> None:
    register_classifier(deployment)
    run_worker(deployment)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        '{"review": "Great phone."}\n'
        '{"review": "Broke in a week."}\n'
        '{"inputs": {"review": "It is a box."}, "request_id": "line-3"}\n'
        '{"text": "no review field"}\n'
        "\n"
        '{"review": "Five stars."}\n',
        encoding="utf-8",
    )
    done = run_cli("classify", "--file", str(requests), *connection(deployment), "--timeout", "90")
    assert done.returncode == 1, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 5
    assert len({result["request_id"] for result in results}) == 5
    assert "line-3" in {result["request_id"] for result in results}
    statuses = sorted(result["status"] for result in results)
    assert statuses == ["error", "ok", "ok", "ok", "ok"]
    stderr = done.stderr.splitlines()
    assert "submitted 5, done 5, errors 1" in stderr
    assert stderr[-1].startswith("error: 1 of 5 requests failed; first: request ")
    assert "invalid_inputs" in stderr[-1]


def test_submit_cli_usage_and_connection_errors(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    no_equals = run_cli("classify", "--input", "review", "--bootstrap-servers", nowhere)
    assert no_equals.returncode == 2
    assert "'review' is not KEY=VALUE" in no_equals.stderr

    both = run_cli("classify", "--input", "a=1", "--file", str(tmp_path / "x.jsonl"))
    assert both.returncode == 2
    assert "not both" in both.stderr

    unreachable = run_cli("classify", "--input", "review=hi", "--bootstrap-servers", nowhere)
    assert unreachable.returncode == 1
    assert unreachable.stdout == ""
    (line,) = unreachable.stderr.splitlines()
    assert line.startswith(f"error: cannot connect to Kafka at {nowhere}")

    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"review": "fine"}\nnot json\n', encoding="utf-8")
    unread = run_cli("classify", "--file", str(bad_file), "--bootstrap-servers", nowhere)
    assert unread.returncode == 1
    (line,) = unread.stderr.splitlines()
    # Every line is checked before anything is sent: the broker is never asked.
    assert line.startswith(f"error: {bad_file} line 2: not JSON")


def test_input_values_are_json_when_they_parse() -> None:
    assert parse_value("3") == 3
    assert parse_value("true") is True
    assert parse_value('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_value("hello world") == "hello world"
    assert parse_value("") == ""


@pytest.mark.parametrize(
    ("error_type", "exception", "expected"),
    [
        ("unknown_program", "ProgramNotFoundError", ProgramNotFoundError),
        ("unknown_version", "ProgramNotFoundError", ProgramNotFoundError),
        ("invalid_inputs", "InputError", InputError),
        ("parse_error", "AdapterParseError", AdapterParseError),
        ("tool_error", "ToolError", ToolError),
        ("lm_error", "LMAuthError", LMAuthError),
        ("lm_error", None, LMError),
        ("lm_rate_limited", "LMRateLimitError", LMRateLimitError),
        ("lm_unavailable", "CircuitOpenError", CircuitOpenError),
        ("lm_unavailable", "SomethingElse", LMConnectionError),
        ("deadline_exceeded", "DeadlineExceededError", DeadlineExceededError),
        ("internal", None, DSPExError),
    ],
)
def test_error_results_become_dspex_errors(
    error_type: ErrorType, exception: str | None, expected: type[DSPExError]
) -> None:
    info = ErrorInfo(
        type=error_type, message="it failed", retryable=False, field="review", exception=exception
    )
    result = InferenceResult(
        request_id="r-1",
        program_id="classify",
        program_version=None,
        status="error",
        error=info,
        latency_ms=5.0,
        worker_id="w",
    )
    error = error_from_result(result, requested_version=3)
    assert type(error) is expected
    assert str(error) == f"request r-1 to program 'classify' failed ({error_type}): it failed"
    if isinstance(error, ProgramNotFoundError):
        assert error.version == (3 if error_type == "unknown_version" else None)
    if isinstance(error, InputError):
        assert error.fields == ("review",)
    ok = result.model_copy(update={"status": "ok", "error": None, "outputs": {}})
    with pytest.raises(ConfigurationError, match="not an error result"):
        error_from_result(ok)
