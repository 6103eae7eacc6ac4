"""The optimizer service on the real broker, with a worker and a scripted LM.

The scripted LM reverses the word it is asked about only when the prompt shows
a demo whose answer is its word reversed; otherwise it echoes the word. So the
registered program (no demos) scores 0, and a candidate with demos scores 1:
promotion must change what the running worker answers, and rollback must
change it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import dspex
from bench._deployment import read_json_records, write_topology
from bench.scripted_lm import RecordedRequest, Reply, ScriptedLM
from dspex._local._process import free_port
from dspex.streams.client import DSPExClient
from dspex.streams.client.optimizer import JournalRecord, OptimizerClient
from dspex.streams.records import CandidateRecord, ControlCommand, FeedbackRecord, OptimizerEvent
from dspex.streams.registry import load_catalog
from dspex.streams.topics import TopicNames, ensure_topics
from dspex.topologies.settings import TopicSettings
from tests.functional.optimizers.test_labeled import learner
from tests.support.deployment import start_worker, stop_worker
from tests.support.metrics import scrape

TRAIN = ["stone", "river", "cloud", "apple", "lemon", "tiger", "piano", "ocean"]
VAL = ["mango", "bread", "chair", "grape", "house"]


def rows(words: list[str]) -> list[dict[str, str]]:
    return [{"word": w, "answer": w[::-1]} for w in words]


def write_jsonl(path: Path, words: list[str]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows(words)))
    return path


def slow_learner(delay_s: float) -> Callable[[RecordedRequest], Reply]:
    def respond(request: RecordedRequest) -> Reply:
        system = request.json["messages"][0]["content"]
        if "poison" in request.json["messages"][-1]["content"]:
            return Reply.completion("no fields at all", delay_s=delay_s)
        if "[[ ## proposed_instruction ## ]]" in system:  # COPRO asks for an instruction
            text = "[[ ## proposed_instruction ## ]]\nSpell the word backwards."
            return Reply.completion(f"{text}\n\n[[ ## completed ## ]]", delay_s=delay_s)
        if "[[ ## advice ## ]]" in system:  # SIMBA asks for advice per module
            text = '[[ ## advice ## ]]\n{"self": "Spell the word backwards."}'
            return Reply.completion(f"{text}\n\n[[ ## completed ## ]]", delay_s=delay_s)
        return dataclasses.replace(learner(request), delay_s=delay_s)

    return respond


@dataclass
class Deployment:
    prefix: str
    bootstrap: str
    topology: Path
    server: ScriptedLM
    tmp: Path

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    def start_optimizer(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "dspex", "optimizer", "serve", str(self.topology)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @contextlib.contextmanager
    def optimizer(self) -> Iterator[subprocess.Popen[str]]:
        """The optimizer service, stopped on the way out."""
        service = self.start_optimizer()
        try:
            yield service
        finally:
            service.terminate()
            service.communicate(timeout=60)

    async def journal(self) -> list[dict[str, Any]]:
        return await read_json_records(self.bootstrap, self.names.candidates)

    async def wait_journal(
        self, done: Callable[[list[dict[str, Any]]], bool], *, timeout_s: float = 90
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            records = await self.journal()
            if done(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"journal never got there: {records[-5:]}")
            await asyncio.sleep(0.3)

    async def cli(self, *args: str, timeout_s: float = 180) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dspex",
            *args,
            "--prefix",
            self.prefix,
            "--bootstrap-servers",
            self.bootstrap,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.tmp,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            process.kill()
            output, _ = await process.communicate()
            raise AssertionError(f"dspex {' '.join(args)} hung:\n{output.decode()}") from None
        return process.returncode or 0, output.decode()

    async def answer(self, word: str) -> tuple[int | None, Any]:
        async with DSPExClient(bootstrap_servers=self.bootstrap, prefix=self.prefix) as client:
            result = await client.run("words", word=word, timeout_s=60)
        assert result.status == "ok", result.error
        return result.program_version, (result.outputs or {}).get("answer")

    async def wait_version(self, version: int, word: str = "zebra") -> Any:
        """The answer once the worker serves ``version`` (it follows the registry)."""
        deadline = time.monotonic() + 30
        while True:
            served, answer = await self.answer(word)
            if served == version:
                return answer
            assert time.monotonic() < deadline, f"worker still serves version {served}"
            await asyncio.sleep(0.5)


@pytest.fixture
async def deployment(tmp_path: Path, kafka_bootstrap: str) -> AsyncIterator[Deployment]:
    prefix = f"o{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, TopicSettings(prefix=prefix, partitions=2))
    async with ScriptedLM(responder=slow_learner(0.05), record=False) as server:
        topology = write_topology(
            tmp_path / "topology.yaml",
            prefix=prefix,
            bootstrap=kafka_bootstrap,
            lm_url=server.openai_url,
            partitions=2,
            inflight_limit=4,
            optimizer={"margin": 0.1, "eval_idle_timeout_s": 60, "metrics_port": free_port()},
        )
        async with DSPExClient(bootstrap_servers=kafka_bootstrap, prefix=prefix) as client:
            await client.register("words", dspex.Predict("word -> answer"))
        worker = start_worker(topology, "w-opt")
        deployment = Deployment(prefix, kafka_bootstrap, topology, server, tmp_path)
        try:
            yield deployment
        finally:
            code, output = stop_worker(worker)
            assert code == 0, output


def last_event(outcome: list[JournalRecord]) -> OptimizerEvent:
    last = outcome[-1]
    assert isinstance(last, OptimizerEvent), last
    return last


def events(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == kind]


def candidates(records: list[dict[str, Any]], kind: str = "trial") -> list[dict[str, Any]]:
    return [r for r in records if r["schema"] == "dspex.candidate/v1" and r["kind"] == kind]


async def test_a_job_promotes_its_result_and_rollback_restores_the_old_version(
    deployment: Deployment,
) -> None:
    with deployment.optimizer():
        assert await deployment.wait_version(1) == "zebra"  # echoes: wrong
        train = write_jsonl(deployment.tmp / "train.jsonl", TRAIN)
        val = write_jsonl(deployment.tmp / "val.jsonl", VAL)
        code, output = await deployment.cli(
            "optimize", "words", "--optimizer", "random_search",
            "--trainset", str(train), "--valset", str(val),
            "--set", "num_candidate_programs=2", "--seed", "3", "--job-id", "job-a",
        )  # fmt: skip
        assert code == 0, output
        journal = await deployment.journal()
        [baseline] = events(journal, "baseline")
        assert baseline["baseline"] == 0.0
        assert baseline["version"] == 1
        trials = candidates(journal)
        assert [t["number"] for t in trials] == list(range(len(trials)))
        assert len(trials) >= 3
        for trial in trials:  # printed as they finished
            assert f"trial {trial['number']:>3}  score" in output
        [final] = candidates(journal, "final")
        assert final["score"] == 1.0
        [promoted] = events(journal, "promoted")
        assert promoted["version"] == 2
        assert promoted["candidate_id"] == final["candidate_id"]
        plot = deployment.tmp / "optimize-job-a.png"
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # The same numbers are Prometheus metrics of the service.
        port = yaml.safe_load(deployment.topology.read_text())["optimizer"]["metrics_port"]
        metrics = await asyncio.to_thread(scrape, port)
        ok_trials = sum(1 for t in trials if t["score"] is not None)
        assert (
            metrics[
                'dspex_optimizer_trials_total{optimizer="random_search",program="words",status="ok"}'
            ]
            == ok_trials
        )
        assert metrics['dspex_optimizer_promotions_total{decision="promoted",program="words"}'] == 1
        assert metrics['dspex_optimizer_best_score{program="words"}'] == 1.0
        assert metrics['dspex_optimizer_active_score{program="words"}'] == 0.0

        # The running worker applies the promotion: it now reverses words.
        assert await deployment.wait_version(2) == "arbez"

        code, output = await deployment.cli("optimizer", "rollback", "words")
        assert code == 0, output
        assert "version 3 restores version 1" in output
        assert await deployment.wait_version(3) == "zebra"
        catalog = await load_catalog(deployment.bootstrap, deployment.names)
        assert catalog.record("words", 3).spec == catalog.record("words", 1).spec

        # A candidate can also be promoted by hand.
        code, output = await deployment.cli("optimizer", "promote", "words", final["candidate_id"])
        assert code == 0, output
        assert await deployment.wait_version(4) == "arbez"


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("copro", ["breadth=2", "depth=1"]),
        ("simba", ["bsize=4", "num_candidates=2", "max_steps=1", "max_demos=2"]),
    ],
)
async def test_copro_and_simba_run_as_service_jobs(
    deployment: Deployment, name: str, settings: list[str]
) -> None:
    with deployment.optimizer():
        await deployment.wait_version(1)
        train = write_jsonl(deployment.tmp / "train.jsonl", TRAIN)
        val = write_jsonl(deployment.tmp / "val.jsonl", VAL)
        options = [part for setting in settings for part in ("--set", setting)]
        code, output = await deployment.cli(
            "optimize", "words", "--optimizer", name, "--trainset", str(train),
            "--valset", str(val), *options, "--seed", "1", "--job-id", f"job-{name}",
        )  # fmt: skip
        assert code == 0, output
        journal = await deployment.journal()
        [started] = events(journal, "job_started")
        assert started["job_id"] == f"job-{name}"
        assert events(journal, "job_finished"), output
        assert candidates(journal), output  # each trial journaled
        assert candidates(journal, "final"), output


async def test_killed_service_resumes_the_job_without_repeating_finished_trials(
    deployment: Deployment,
) -> None:
    deployment.server.responder = slow_learner(0.15)
    command = ControlCommand(
        command="optimize",
        program_id="words",
        job_id="job-k",
        optimizer="random_search",
        settings={"num_candidate_programs": 6},
        trainset=rows(TRAIN),
        valset=rows(VAL),
        seed=1,
    )
    service = deployment.start_optimizer()
    async with OptimizerClient(
        bootstrap_servers=deployment.bootstrap, prefix=deployment.prefix
    ) as c:
        await c.send(command)
    before = await deployment.wait_journal(lambda r: len(candidates(r)) >= 2)
    service.send_signal(signal.SIGKILL)
    service.communicate(timeout=30)
    before = await deployment.journal()
    finished = {t["number"] for t in candidates(before)}
    assert not events(before, "job_finished")
    restarted_ms = int(time.time() * 1000)
    with deployment.optimizer() as service:
        after = await deployment.wait_journal(
            lambda r: bool(events(r, "job_finished")), timeout_s=120
        )
    numbers = [t["number"] for t in candidates(after)]
    assert sorted(numbers) == list(range(len(numbers))), "each trial recorded exactly once"
    assert len(numbers) == 9  # zero-shot, labelled, unshuffled and 6 shuffled demo sets
    assert len(events(after, "baseline")) == 1

    # Evaluations of the valset sent after the restart: one per unfinished
    # trial and one for the final result, none for a trial finished before.
    requests = await read_json_records(deployment.bootstrap, deployment.names.eval_requests)
    runs = {
        r["run_id"]
        for r in requests
        if r["created_at_ms"] >= restarted_ms and r["example"]["word"] in VAL
    }
    assert len(runs) == len(numbers) - len(finished) + 1


async def test_bad_commands_and_failing_jobs_leave_the_service_serving(
    deployment: Deployment,
) -> None:
    with deployment.optimizer() as service:
        async with OptimizerClient(
            bootstrap_servers=deployment.bootstrap, prefix=deployment.prefix
        ) as client:
            unknown = ControlCommand(
                command="optimize", program_id="words", optimizer="bootstrap",
                settings={"num_trials": 3}, trainset=rows(TRAIN), valset=rows(VAL),
            )  # fmt: skip
            refused = last_event([record async for record in client.run(unknown)])
            assert refused.event == "command_failed"
            assert "unknown setting(s) ['num_trials']" in refused.message

            # Every candidate fails on this valset (the LM's answers cannot be
            # parsed): each trial is recorded as failed, not scored zero, and
            # the job ends with a failed-job record naming why.
            poison = ControlCommand(
                command="optimize", program_id="words", optimizer="random_search",
                settings={"num_candidate_programs": 1}, trainset=rows(TRAIN),
                valset=[{"word": f"poison{i}", "answer": "x"} for i in range(3)],
            )  # fmt: skip
            outcome = [record async for record in client.run(poison)]
            failed = last_event(outcome)
            assert failed.event == "job_failed"
            assert failed.message.startswith("OptimizationError: every one of")
            assert "parse_error" in failed.message
            trials = [r for r in outcome if isinstance(r, CandidateRecord)]
            assert trials
            assert all(trial.score is None for trial in trials)

            # Garbage on the control topic goes to the dead-letter topic.
            await client._producer.send_and_wait(deployment.names.control, b"{not json")

            rollback = ControlCommand(command="rollback", program_id="words")
            refused = last_event([record async for record in client.run(rollback)])
            assert refused.event == "command_failed"  # only version 1 exists
            assert "no version before 1" in refused.message
        letters = await read_json_records(deployment.bootstrap, deployment.names.inference_dlq)
        assert [letter["topic"] for letter in letters] == [deployment.names.control]
        assert service.poll() is None


async def test_online_job_promotes_demos_from_labelled_production_traces(
    deployment: Deployment,
) -> None:
    with deployment.optimizer():
        async with OptimizerClient(
            bootstrap_servers=deployment.bootstrap, prefix=deployment.prefix
        ) as optimizer:
            online = ControlCommand(
                command="online", program_id="words", job_id="job-o", valset=rows(VAL),
                settings={"min_traces": 2, "max_demos": 2, "interval_s": 1.0},
            )  # fmt: skip
            await optimizer.send(online)
            async with DSPExClient(
                bootstrap_servers=deployment.bootstrap, prefix=deployment.prefix
            ) as client:
                results = [await client.run("words", word=w, timeout_s=60) for w in TRAIN[:3]]
            assert [r.outputs for r in results] == [{"answer": w} for w in TRAIN[:3]]
            # Users say what the right answers were for two of them.
            for result, word in zip(results[:2], TRAIN, strict=False):
                await optimizer.feedback(
                    FeedbackRecord(request_id=result.request_id, label={"answer": word[::-1]})
                )
            journal = await deployment.wait_journal(lambda r: bool(events(r, "promoted")))
        [candidate] = candidates(journal, "online")
        assert candidate["score"] == 1.0
        assert sorted(candidate["params"]["traces"]) == sorted(r.request_id for r in results[:2])
        assert await deployment.wait_version(2) == "arbez"


async def test_pause_stops_a_job_and_resume_finishes_it_from_its_trials(
    deployment: Deployment,
) -> None:
    deployment.server.responder = slow_learner(0.4)
    with deployment.optimizer():
        async with OptimizerClient(
            bootstrap_servers=deployment.bootstrap, prefix=deployment.prefix
        ) as client:
            await client.send(
                ControlCommand(
                    command="optimize",
                    program_id="words",
                    job_id="job-p",
                    optimizer="random_search",
                    settings={"num_candidate_programs": 6},
                    trainset=rows(TRAIN),
                    valset=rows(VAL),
                )
            )
            await deployment.wait_journal(lambda r: len(candidates(r)) >= 1)
            pause = ControlCommand(command="pause", program_id="words", job_id="job-p")
            assert last_event([r async for r in client.run(pause)]).event == "job_paused"
        paused = len(candidates(await deployment.journal()))
        await asyncio.sleep(3)  # several trials' time: none may finish while paused
        assert len(candidates(await deployment.journal())) == paused
        code, output = await deployment.cli("optimizer", "pause", "words", "job-p")
        assert code == 1
        assert "is paused, not running" in output

        code, output = await deployment.cli("optimizer", "resume", "words", "job-p")
        assert code == 0, output
        journal = await deployment.wait_journal(lambda r: bool(events(r, "job_finished")))
    numbers = [t["number"] for t in candidates(journal)]
    assert sorted(numbers) == list(range(9))  # each trial once, across the pause
    assert events(journal, "promoted")
