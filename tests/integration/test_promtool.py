"""infra/prometheus/ passes Prometheus' own checks: config, rules and alert unit tests.

promtool comes from Debian's prometheus package, which `make install` installs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*_test.yml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make install` installs Debian's prometheus package"
    return path


def run(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def test_config_is_valid_and_loads_every_rule_file(promtool: str) -> None:
    result = run(promtool, "check", "config", "prometheus.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output
    for path in RULE_FILES:
        assert f"Checking {path.relative_to(PROMETHEUS_DIR)}" in output


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda path: path.name)
def test_rules_file_is_valid(promtool: str, rules: Path) -> None:
    result = run(promtool, "check", "rules", str(rules))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output
    assert " 0 rules found" not in output


@pytest.mark.parametrize("tests", RULE_TESTS, ids=lambda path: path.name)
def test_alerts_fire_as_their_unit_tests_expect(promtool: str, tests: Path) -> None:
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_cover_the_key_alerts() -> None:
    tested = " ".join(path.read_text("utf-8") for path in RULE_TESTS)
    for alert in (
        "DSPExLMCircuitOpen",
        "DSPExInferenceErrorRatioHigh",
        "DSPExOptimizationWithoutPromotion",
    ):
        assert f"alertname: {alert}" in tested


def test_example_target_files_are_valid_file_sd(promtool: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, config)
    targets = config / "targets"
    # Named as deployments name them, so the scrape configs' globs pick them up.
    for service in ("worker", "optimizer"):
        shutil.copy(targets / f"example-{service}.json", targets / f"{service}-example.json")
    result = run(promtool, "check", "config", "prometheus.yml", cwd=config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "does not exist" not in output

    (targets / "worker-broken.json").write_text('[{"targets": "127.0.0.1:9100"}]')
    result = run(promtool, "check", "config", "prometheus.yml", cwd=config)
    assert result.returncode != 0
    assert "worker-*.json" in result.stdout + result.stderr
