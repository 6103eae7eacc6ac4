"""The chaos harness's short run: killed workers, a restarted broker and LM faults lose nothing.

``python -m bench.chaos --quick`` runs every scenario on a private broker
(it restarts that broker, so it never uses the session's) with real
``dspex worker`` processes and a real client; the LM is the scripted server
on loopback, failing on demand. Every request must get a result, the client
must deliver each once, and LM faults must delay requests, not fail them.
With ``exactly_once``, a read_committed reader of the results topic must find
each request's result once, however often workers die.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.support.benchmarks import RUN_TIMEOUT_S, STOP_GRACE_S, check_record, run_to_completion

# The module's first test runs the harness (a minute or two) in its fixture.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(RUN_TIMEOUT_S + STOP_GRACE_S + 120)]

SCENARIOS = {
    "kill",
    "rolling_restart",
    "broker_restart",
    "exactly_once",
    "lm_flaky",
    "lm_429",
    "lm_outage",
}


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("chaos") / "chaos.json"
    command = [sys.executable, "-m", "bench.chaos", "--quick", "--output", str(output)]
    run = run_to_completion(command)
    tail = f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"bench.chaos exited {run.returncode}:\n{tail}"
    record: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    check_record("chaos", record)
    results: dict[str, Any] = record["results"]
    return results


def test_every_scenario_ran(chaos: dict[str, Any]) -> None:
    assert set(chaos) == SCENARIOS


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_nothing_is_lost_and_the_client_delivers_each_result_once(
    chaos: dict[str, Any], scenario: str
) -> None:
    found = chaos[scenario]
    assert found["lost"] == 0, found
    assert found["client_timeouts"] == 0, found
    assert found["answered"] == found["requests"], found
    assert found["delivered_twice_by_client"] == 0, found


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_request_ends_in_an_error(chaos: dict[str, Any], scenario: str) -> None:
    # Requests wait out kills, the broker's restart, flaky calls, 429s and the
    # outage: their deadline (300 s) is far beyond each of them.
    found = chaos[scenario]
    assert found["errors_by_type"] == {}, found
    assert found["ok"] == found["requests"], found


def test_the_damage_was_done(chaos: dict[str, Any]) -> None:
    kills = [event for event in chaos["kill"]["damage"] if event["what"] == "SIGKILL"]
    assert len(kills) == 3
    restart = [event["what"] for event in chaos["broker_restart"]["damage"]]
    assert restart == ["broker stop", "broker started"]
    assert chaos["lm_flaky"]["lm_calls"].get("500", 0) > 0
    assert chaos["lm_flaky"]["lm_calls"].get("hung", 0) > 0
    assert chaos["lm_429"]["lm_calls"].get("429", 0) > 0
    assert chaos["lm_outage"]["lm_calls"].get("503", 0) > 0


def test_a_rolling_restart_answers_nothing_twice(chaos: dict[str, Any]) -> None:
    found = chaos["rolling_restart"]
    stops = [event for event in found["damage"] if event["what"] == "SIGTERM"]
    assert len(stops) == 2
    assert all(stop["exit_code"] == 0 for stop in stops), stops
    assert found["duplicated_on_topic"] == 0, found
    assert found["lm_calls_beyond_one_per_request"] == 0, found


def test_with_exactly_once_a_committed_reader_sees_every_result_once(chaos: dict[str, Any]) -> None:
    found = chaos["exactly_once"]
    whats = [event["what"] for event in found["damage"]]
    assert whats.count("SIGKILL") == 2
    assert whats.count("broker stop") == 1
    assert found["duplicated_on_topic"] == 0, found
    assert found["repeats_dropped_by_client"] == 0, found
