"""docs/wire-format.md: committed, current, and its examples fit its schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dspex.streams.records import (
    DEAD_LETTER_REASON_DESCRIPTIONS,
    ERROR_TYPE_DESCRIPTIONS,
    RECORD_TYPES,
    decode,
    encode,
)
from dspex.streams.records.wire_doc import render_wire_format, wire_record_docs
from dspex.streams.topics import TOPICS

DOC = Path(__file__).resolve().parents[3] / "docs" / "wire-format.md"
JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def test_committed_doc_is_current() -> None:
    committed = DOC.read_text("utf-8") if DOC.exists() else ""
    assert committed == render_wire_format(), (
        "docs/wire-format.md is stale: run `dspex schema --out docs/wire-format.md`"
    )


def test_rendering_is_deterministic() -> None:
    assert render_wire_format() == render_wire_format()


def test_every_schema_error_type_and_reason_is_documented() -> None:
    markdown = render_wire_format()
    for schema in RECORD_TYPES:
        assert f"`{schema}`" in markdown
    for name in [*ERROR_TYPE_DESCRIPTIONS, *DEAD_LETTER_REASON_DESCRIPTIONS]:
        assert f"| `{name}` |" in markdown


def test_every_record_kind_has_a_section_with_examples() -> None:
    documented = [doc.model for doc in wire_record_docs()]
    assert sorted(m.__name__ for m in documented) == sorted(
        m.__name__ for m in RECORD_TYPES.values()
    )
    for doc in wire_record_docs():
        assert doc.examples
        for _, record in doc.examples:
            assert type(record) is doc.model
            assert decode(encode(record), expect=doc.model) == record


def sections() -> list[tuple[str, list[Any], Any]]:
    """``(schema, examples, json_schema)`` of each record section of the document."""
    found = []
    for section in render_wire_format().split('<a id="')[1:]:
        heading = re.search(r"^## \w+: `([^`]+)`$", section, re.MULTILINE)
        assert heading is not None
        blocks = [json.loads(block) for block in JSON_BLOCK.findall(section)]
        found.append((heading.group(1), blocks[:-1], blocks[-1]))
    return found


@pytest.mark.parametrize(
    ("schema", "examples", "json_schema"), sections(), ids=[s[0] for s in sections()]
)
def test_documented_examples_validate_against_their_schema(
    schema: str, examples: list[Any], json_schema: Any
) -> None:
    assert examples
    assert json_schema == RECORD_TYPES[schema].model_json_schema(by_alias=True)
    for example in examples:
        assert example["schema"] == schema
        assert check(example, json_schema, json_schema) == []
        record = decode(json.dumps(example).encode("utf-8"), expect=RECORD_TYPES[schema])
        assert json.loads(encode(record)) == example


def test_schema_checker_is_not_vacuous() -> None:
    (_, examples, json_schema) = sections()[1]  # InferenceResult: nested $refs
    example = examples[-1]
    assert check({**example, "extra": 1}, json_schema, json_schema) == ["$: unknown field extra"]
    del example["worker_id"]
    assert check(example, json_schema, json_schema) == ["$: missing worker_id"]
    example["error"]["type"] = "oops"
    assert "$.error: matches no option" in check(example, json_schema, json_schema)
    assert check(example["error"], json_schema["$defs"]["ErrorInfo"], json_schema) == [
        "$.type: 'oops' not in enum"
    ]


def test_documented_topics_and_keys_match_the_topic_table() -> None:
    keys = {f"dspex.{spec.suffix}": spec.key for spec in TOPICS}
    for doc in wire_record_docs():
        for topic in doc.topics:
            name = re.fullmatch(r"`(dspex\.[a-z._]+)`( \(compacted\))?", topic)
            if name is None:
                assert "reply_to" in topic
                continue
            assert name.group(1) in keys, f"{name.group(1)} is not a dspex topic"
            if doc.key.startswith("`"):
                assert doc.key.strip("`") == keys[name.group(1)]


# --- a JSON Schema checker for the keywords pydantic emits -------------------------------

ANNOTATIONS = {"title", "description", "default", "$defs"}
TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def check(value: Any, schema: Any, root: Any, path: str = "$") -> list[str]:
    """The ways ``value`` breaks ``schema`` (empty: it fits); unknown keywords fail."""
    problems: list[str] = []
    # The type first: the other keywords assume it (lengths of strings, keys of objects).
    for keyword, rule in sorted(schema.items(), key=lambda item: item[0] != "type"):
        if keyword in ANNOTATIONS:
            continue
        if keyword == "$ref":
            problems += check(value, root["$defs"][rule.rsplit("/", 1)[1]], root, path)
        elif keyword == "anyOf":
            if all(check(value, option, root, path) for option in rule):
                problems.append(f"{path}: matches no option")
        elif keyword == "type":
            if rule == "integer":
                fits = isinstance(value, int) and not isinstance(value, bool)
            elif rule == "number":
                fits = isinstance(value, int | float) and not isinstance(value, bool)
            else:
                fits = isinstance(value, TYPES[rule])
            if not fits:
                problems.append(f"{path}: not {rule}")
                return problems
        elif keyword == "const":
            if value != rule:
                problems.append(f"{path}: {value!r} is not {rule!r}")
        elif keyword == "enum":
            if value not in rule:
                problems.append(f"{path}: {value!r} not in enum")
        elif keyword == "properties":
            for name, sub in rule.items():
                if name in value:
                    problems += check(value[name], sub, root, f"{path}.{name}")
        elif keyword == "required":
            problems += [f"{path}: missing {name}" for name in rule if name not in value]
        elif keyword == "additionalProperties":
            extra = [name for name in value if name not in schema.get("properties", {})]
            if rule is False:
                problems += [f"{path}: unknown field {name}" for name in extra]
            elif isinstance(rule, dict):
                for name in extra:
                    problems += check(value[name], rule, root, f"{path}.{name}")
        elif keyword == "propertyNames":
            for name in value:
                problems += check(name, {"type": "string", **rule}, root, f"{path}<key>")
        elif keyword == "maxProperties":
            if len(value) > rule:
                problems.append(f"{path}: more than {rule} entries")
        elif keyword == "items":
            for position, item in enumerate(value):
                problems += check(item, rule, root, f"{path}[{position}]")
        elif keyword == "prefixItems":
            for position, (item, sub) in enumerate(zip(value, rule, strict=False)):
                problems += check(item, sub, root, f"{path}[{position}]")
        elif keyword == "minItems":
            if len(value) < rule:
                problems.append(f"{path}: fewer than {rule} items")
        elif keyword == "maxItems":
            if len(value) > rule:
                problems.append(f"{path}: more than {rule} items")
        elif keyword == "minimum":
            if value < rule:
                problems.append(f"{path}: below {rule}")
        elif keyword == "maximum":
            if value > rule:
                problems.append(f"{path}: above {rule}")
        elif keyword == "minLength":
            if len(value) < rule:
                problems.append(f"{path}: shorter than {rule}")
        elif keyword == "maxLength":
            if len(value) > rule:
                problems.append(f"{path}: longer than {rule}")
        elif keyword == "pattern":
            if re.search(rule, value) is None:
                problems.append(f"{path}: does not match {rule}")
        else:
            raise AssertionError(f"the checker does not know JSON Schema keyword {keyword!r}")
    return problems
