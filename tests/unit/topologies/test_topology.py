"""Topologies load from YAML/JSON, name their problems, and build LM clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspex.errors import ConfigurationError
from dspex.programs.lm import AnthropicChat, OpenAIChat
from dspex.topologies import Topology

ROOT = Path(__file__).resolve().parents[3]


def test_the_example_topology_loads() -> None:
    topology = Topology.from_file(ROOT / "examples" / "topology.yaml")
    assert topology.programs == "all"
    assert topology.lm_name_for("anything") == "local"
    assert topology.inflight_limit == 16
    assert topology.serves("qa")


def test_json_and_yaml_give_the_same_topology(tmp_path: Path) -> None:
    data = {
        "name": "t",
        "lms": {"a": {"model": "m1"}, "b": {"provider": "anthropic", "model": "m2"}},
        "default_lm": "a",
        "program_lms": {"special": "b"},
        "programs": ["qa", "special"],
    }
    (tmp_path / "t.json").write_text(json.dumps(data))
    import yaml

    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data))
    assert Topology.from_file(tmp_path / "t.json") == Topology.from_file(tmp_path / "t.yaml")
    topology = Topology.from_file(tmp_path / "t.json")
    assert topology.serves("qa")
    assert not topology.serves("other")
    assert topology.lm_name_for("special") == "b"
    assert topology.lm_name_for("qa") == "a"


async def test_endpoints_build_their_clients() -> None:
    topology = Topology.model_validate(
        {
            "lms": {
                "a": {"model": "m1", "base_url": "http://127.0.0.1:1/v1"},
                "b": {
                    "provider": "anthropic",
                    "model": "m2",
                    "rate_limit": {"tokens_per_minute": 1000},
                },
            },
            "default_lm": "a",
        }
    )
    first, second = topology.lms["a"].build(), topology.lms["b"].build()
    try:
        assert isinstance(first, OpenAIChat)
        assert first.base_url == "http://127.0.0.1:1/v1"
        assert isinstance(second, AnthropicChat)
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("programs: [qa\n", "not valid"),
        ("inflight_limit: 0\n", "inflight_limit: Input should be greater than or equal to 1"),
        ("default_lm: missing\n", "unknown LM endpoint"),
        ("lms: {a: {model: x}}\nsurprise: 1\n", "surprise: Extra inputs are not permitted"),
        ("lms: {a: {model: x, api_key: sk-123}}\n", "api_key: Extra inputs are not permitted"),
    ],
)
def test_invalid_topologies_name_file_and_field(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=problem) as info:
        Topology.from_file(path)
    assert str(path) in str(info.value)


def test_missing_topology_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read topology"):
        Topology.from_file(tmp_path / "nope.yaml")
