"""``dspex eval`` as a user runs it: a subprocess against the real broker and a real worker.

One worker serves a fresh topic prefix with a scripted LM that always answers
"positive", so an example scores 1 exactly when its label is positive: the
expected count and mean come from the dataset the test writes. Bad datasets
must fail with their line numbers before a single request reaches the
evaluation topic.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import dspex
from bench._deployment import read_json_records, write_topology
from dspex.cli._common import EXIT_FAILURE, EXIT_USAGE
from dspex.errors import ConfigurationError
from dspex.programs.state import ProgramSpec
from dspex.streams.executor import KafkaExecutor
from dspex.streams.records import EvalRequest, EvalScore, decode, encode
from dspex.streams.registry import register_program
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.support.deployment import scripted_lm_process, start_worker, stop_worker

pytestmark = pytest.mark.kafka

PARTITIONS = 2
#: The first scores also wait for the worker to join its group.
IDLE_TIMEOUT_S = "60"


class Review(dspex.Signature):
    """Classify the sentiment of the review."""

    review: str = dspex.InputField()
    sentiment: str = dspex.OutputField()


class Verdict(dspex.Signature):
    """Give a verdict on the review."""

    review: str = dspex.InputField()
    verdict: str = dspex.OutputField()


def register(bootstrap: str, names: TopicNames, program_id: str, signature: type) -> None:
    program = dspex.Predict(signature, adapter=dspex.JSONAdapter())
    asyncio.run(register_program(bootstrap, names, program_id, ProgramSpec.from_program(program)))


def dspex_eval(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dspex", "eval", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    return line


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def deployment(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """A prefix with two programs registered and one worker; the options to reach it."""
    prefix = f"ev{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    asyncio.run(ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=PARTITIONS)))
    register(kafka_bootstrap, names, "review", Review)
    register(kafka_bootstrap, names, "verdict", Verdict)
    with scripted_lm_process(text=json.dumps({"sentiment": "positive"})) as lm_url:
        topology = write_topology(
            tmp_path_factory.mktemp("eval") / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=lm_url,
            partitions=PARTITIONS,
        )
        worker = start_worker(topology, f"w-{prefix}")
        try:
            yield ["--bootstrap-servers", kafka_bootstrap, "--prefix", prefix]
        finally:
            code, output = stop_worker(worker)
        assert code == 0, output


def eval_requests_sent(options: list[str]) -> int:
    bootstrap, prefix = options[1], options[3]
    records = asyncio.run(read_json_records(bootstrap, TopicNames(prefix).eval_requests))
    return len(records)


def labelled_rows(count: int) -> list[dict[str, object]]:
    # Every third review is negative; the extra `id` key is not a field and is ignored.
    return [
        {"id": i, "review": f"review {i}", "sentiment": "negative" if i % 3 == 0 else "positive"}
        for i in range(count)
    ]


def test_eval_reports_the_mean_the_labels_imply(deployment: list[str], tmp_path: Path) -> None:
    rows = labelled_rows(60)
    dataset = write_jsonl(tmp_path / "reviews.jsonl", rows)
    scores_file = tmp_path / "scores.jsonl"
    done = dspex_eval(
        "review",
        str(dataset),
        *deployment,
        "--idle-timeout",
        IDLE_TIMEOUT_S,
        "--max-outstanding",
        "16",
        "--scores",
        str(scores_file),
        "--json",
    )
    assert done.returncode == 0, done.stderr

    correct = [1.0 if row["sentiment"] == "positive" else 0.0 for row in rows]
    mean = sum(correct) / len(correct)
    variance = sum((x - mean) ** 2 for x in correct) / (len(correct) - 1)
    report = json.loads(done.stdout)
    assert report["examples"] == len(rows)
    assert report["mean"] == pytest.approx(mean)
    assert report["standard_error"] == pytest.approx(math.sqrt(variance / len(rows)))
    assert report["ci95"][0] < mean < report["ci95"][1]
    assert report["errors"] == 0
    assert report["errors_by_type"] == {}
    assert report["program_version"] == 1
    # Every example made one LM call; the scripted LM reports 11 + 7 tokens per call.
    assert report["usage"]["calls"] == len(rows)
    assert report["usage"]["total_tokens"] == 18 * len(rows)
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"]
    assert report["examples_per_s"] > 0

    written = [json.loads(line) for line in scores_file.read_text(encoding="utf-8").splitlines()]
    assert sorted(score["index"] for score in written) == list(range(len(rows)))
    by_index = {score["index"]: score for score in written}
    assert all(by_index[i]["line"] == i + 1 for i in range(len(rows)))
    assert all(by_index[i]["score"] == correct[i] for i in range(len(rows)))
    assert all(score["outputs"] == {"sentiment": "positive"} for score in written)
    # The last progress line on stderr is the whole run.
    assert f"{len(rows)}/{len(rows)} (100%)" in done.stderr.splitlines()[-1]


def test_eval_prints_the_report_as_a_table(deployment: list[str], tmp_path: Path) -> None:
    rows = labelled_rows(7)
    dataset = write_jsonl(tmp_path / "table.jsonl", rows)
    done = dspex_eval("review", str(dataset), *deployment, "--idle-timeout", IDLE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    table = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in done.stdout.splitlines())
    positive = sum(1 for row in rows if row["sentiment"] == "positive")
    assert table["examples"] == str(len(rows))
    assert table["mean score"] == f"{positive / len(rows):.4f}"
    assert table["errors"] == "0"
    assert table["program"] == "review version 1"
    assert table["metric"] == "exact_match"
    assert {"std. error", "95% interval", "tokens", "cost", "latency p50", "latency p95"} <= set(
        table
    )


def test_every_example_failing_is_an_error_not_a_silent_zero(
    deployment: list[str], tmp_path: Path
) -> None:
    # `verdict` expects a field the scripted LM never answers: each call fails to parse.
    rows = [{"review": f"r{i}", "verdict": "positive"} for i in range(4)]
    dataset = write_jsonl(tmp_path / "failing.jsonl", rows)
    done = dspex_eval(
        "verdict", str(dataset), *deployment, "--idle-timeout", IDLE_TIMEOUT_S, "--json"
    )
    report = json.loads(done.stdout)
    assert report["examples"] == 4
    assert report["mean"] == 0.0
    assert report["errors_by_type"] == {"parse_error": 4}
    assert done.returncode == EXIT_FAILURE
    assert error_line(done).startswith("error: all 4 examples failed; first: parse_error: ")


def test_bad_lines_are_reported_with_their_numbers_and_nothing_is_sent(
    deployment: list[str], tmp_path: Path
) -> None:
    good = json.dumps({"review": "fine", "sentiment": "positive"})
    lines = [
        good,
        "not json",
        "",
        "[1, 2]",
        json.dumps({"text": "no review", "sentiment": "positive"}),
        json.dumps({"review": "no label"}),
        good,
    ]
    dataset = tmp_path / "bad.jsonl"
    dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = eval_requests_sent(deployment)

    done = dspex_eval("review", str(dataset), *deployment)

    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stdout == ""
    line = error_line(done)
    assert line.startswith(f"error: {dataset}: 4 bad lines, nothing was sent: ")
    assert "line 2: not JSON" in line
    assert "line 4: not a JSON object but an array" in line
    assert "line 5: missing input field `review`" in line
    assert "line 6: no label: expected a field `sentiment`" in line
    assert "line 1:" not in line
    assert "line 7:" not in line
    assert eval_requests_sent(deployment) == before


def test_many_bad_lines_list_the_first_ten(deployment: list[str], tmp_path: Path) -> None:
    dataset = tmp_path / "garbage.jsonl"
    dataset.write_text("x\n" * 25, encoding="utf-8")
    done = dspex_eval("review", str(dataset), *deployment)
    assert done.returncode == EXIT_USAGE
    line = error_line(done)
    assert "25 bad lines" in line
    assert "line 10: not JSON" in line
    assert "line 11:" not in line
    assert line.endswith("; and 15 more")


def test_empty_dataset_and_unknown_program_are_clear_errors(
    deployment: list[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    blank = dspex_eval("review", str(empty), *deployment)
    assert blank.returncode == EXIT_USAGE
    assert error_line(blank) == f"error: {empty} holds no examples (no non-blank lines)"

    dataset = write_jsonl(tmp_path / "one.jsonl", labelled_rows(1))
    unknown = dspex_eval("nope", str(dataset), *deployment)
    assert unknown.returncode == EXIT_FAILURE
    assert error_line(unknown) == "error: program 'nope' is not registered"

    no_version = dspex_eval("review", str(dataset), *deployment, "--version", "7")
    assert no_version.returncode == EXIT_FAILURE
    assert "has no version 7" in error_line(no_version)


def test_no_worker_answering_fails_after_the_idle_timeout(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"ev{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1)))
    register(kafka_bootstrap, TopicNames(prefix), "review", Review)
    dataset = write_jsonl(tmp_path / "two.jsonl", labelled_rows(2))

    done = dspex_eval(
        "review",
        str(dataset),
        "--bootstrap-servers",
        kafka_bootstrap,
        "--prefix",
        prefix,
        "--idle-timeout",
        "2",
    )

    assert done.returncode == EXIT_FAILURE
    assert done.stdout == ""
    line = error_line(done)
    assert "no score for 2s (0/2 scored)" in line
    assert f"are workers running for prefix {prefix!r}?" in line


# -- the executor's streaming run ---------------------------------------------------------


async def answer_by_hand(bootstrap: str, names: TopicNames, count: int) -> None:
    """Score ``count`` requests like a worker would, but each twice, plus noise."""
    consumer = AIOKafkaConsumer(
        names.eval_requests,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    try:
        answered = 0
        while answered < count:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    request = decode(record.value or b"", expect=EvalRequest)
                    score = EvalScore(
                        run_id=request.run_id,
                        run_size=request.run_size,
                        index=request.index,
                        program_id=request.program_id,
                        score=1.0,
                        outputs={"sentiment": "positive"},
                        latency_ms=1.0,
                        worker_id="by-hand",
                    )
                    stranger = score.model_copy(update={"run_id": "another-run"})
                    await producer.send(names.eval_scores, b"not a score", key=score.kafka_key())
                    await producer.send(names.eval_scores, encode(stranger), key=b"another-run")
                    for _ in range(2):
                        await producer.send(names.eval_scores, encode(score), key=score.kafka_key())
                    answered += 1
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()


async def test_executor_streams_lazy_examples_and_yields_each_score_once(
    kafka_bootstrap: str,
) -> None:
    prefix = f"ev{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=1))

    def examples(count: int) -> Iterator[dspex.Example]:
        for i in range(count):
            yield dspex.Example(review=f"r{i}", sentiment="positive").with_inputs("review")

    async with KafkaExecutor(
        program_id="review", bootstrap_servers=kafka_bootstrap, prefix=prefix, idle_timeout_s=30
    ) as executor:
        answering = asyncio.create_task(answer_by_hand(kafka_bootstrap, names, 3))
        outputs = [
            output
            async for output in executor.score_registered(
                examples(3), "exact_match", run_id="run-by-hand", run_size=3
            )
        ]
        await asyncio.wait_for(answering, 30)

        with pytest.raises(ConfigurationError, match="without a len\\(\\) need run_size"):
            async for _ in executor.score_registered(examples(1), "exact_match"):
                pass
        with pytest.raises(ConfigurationError, match="the examples ended after 2; run_size is 3"):
            async for _ in executor.score_registered(examples(2), "exact_match", run_size=3):
                pass
        with pytest.raises(ConfigurationError, match="more examples than run_size 1"):
            async for _ in executor.score_registered(examples(2), "exact_match", run_size=1):
                pass

    assert sorted(output.index for output in outputs) == [0, 1, 2]
    assert [output.example["review"] for output in sorted(outputs, key=lambda o: o.index)] == [
        "r0",
        "r1",
        "r2",
    ]
    assert all(output.score == 1.0 for output in outputs)
