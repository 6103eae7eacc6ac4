"""How a dspex process runs Faust: a worker without the spinner, a collector tuned for serving.

Both change process-wide state (the root logger, the collector), so each runs
in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _run(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_quiet_worker_keeps_the_root_logger_at_the_level_asked_for() -> None:
    found = _run(
        """
        import json, logging
        import faust
        from dspex.streams._faust import QuietWorker, scratch_datadir

        def root_level(worker_class):
            app = faust.App("t", broker="kafka://127.0.0.1:1", datadir=scratch_datadir("t"))
            worker = worker_class(app, loglevel="warning", quiet=True, redirect_stdouts=False)
            worker._setup_logging()
            return logging.getLogger().level

        print(json.dumps({"faust": root_level(faust.Worker), "quiet": root_level(QuietWorker)}))
        """
    )
    # Faust's own worker lowers the root logger to DEBUG for its spinner; ours does not.
    assert found == {"faust": 10, "quiet": 30}


def test_tune_gc_freezes_start_up_and_collects_the_young_less_often() -> None:
    found = _run(
        """
        import gc, json
        from dspex.streams._faust import tune_gc

        before = gc.get_threshold()
        tune_gc()
        print(json.dumps({"before": before, "after": gc.get_threshold(),
                          "frozen": gc.get_freeze_count()}))
        """
    )
    before, after = found["before"], found["after"]
    assert isinstance(before, list)
    assert isinstance(after, list)
    assert after[0] > before[0]
    assert after[1:] == before[1:]
    assert isinstance(found["frozen"], int)
    assert found["frozen"] > 1000
