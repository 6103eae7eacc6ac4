"""Render ``docs/wire-format.md``: the wire records as Markdown and JSON Schema.

The document is generated from the models in :mod:`dspex.streams.records`
(their docstrings, field descriptions and ``model_json_schema``) and from
fixed examples built with them (in ``_wire_examples``, beside this module), so
it cannot drift from the code: a test
compares the committed file with :func:`render_wire_format`, and
``dspex schema --out docs/wire-format.md`` rewrites it.

Example:
    >>> markdown = render_wire_format()
    >>> markdown.startswith("# Wire format")
    True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dspex.streams.records import (
    DEAD_LETTER_MAX_VALUE_BYTES,
    DEAD_LETTER_REASON_DESCRIPTIONS,
    DEFAULT_MAX_RECORD_BYTES,
    ERROR_TYPE_DESCRIPTIONS,
    MAX_ID_CHARS,
    MAX_METADATA_ENTRIES,
    InferenceRequest,
    decode,
    encode,
)
from dspex.streams.records._base import describe_model
from dspex.streams.records._wire_examples import (
    QUESTION,
    REQUEST_ID,
    RecordDoc,
    wire_record_docs,
)

__all__ = ["RecordDoc", "render_wire_format", "wire_record_docs"]


def render_wire_format() -> str:
    """The complete Markdown of ``docs/wire-format.md``; byte-identical on every call.

    Returns:
        The document, ending with one newline.
    """
    docs = wire_record_docs()
    parts: list[str] = [_intro(docs)]
    for doc in docs:
        parts.append(_record_section(doc))
    return "\n\n".join(part.strip("\n") for part in parts) + "\n"


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, ensure_ascii=False) + "\n```"


def _topics(doc: RecordDoc) -> str:
    return ", ".join(doc.topics)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _kcat_example() -> str:
    request = {
        "schema": InferenceRequest.schema_id(),
        "request_id": REQUEST_ID,
        "program_id": "qa",
        "inputs": {"question": QUESTION},
    }
    line = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
    decode(line.encode("utf-8"), expect=InferenceRequest)  # the snippet must be a valid request
    return (
        "```sh\n"
        f"echo 'qa|{line}' \\\n"
        "  | kcat -P -b localhost:9092 -t dspex.inference.requests -K '|'\n"
        "kcat -C -b localhost:9092 -t dspex.inference.results -o end -f '%k %s\\n'\n"
        "```"
    )


def _intro(docs: Sequence[RecordDoc]) -> str:
    records = _table(
        ("schema", "record", "topics (default names)", "key"),
        [
            (
                f"`{doc.model.schema_id()}`",
                f"[{doc.model.__name__}](#{_anchor(doc)})",
                _topics(doc),
                doc.key,
            )
            for doc in docs
        ],
    )
    errors = _table(
        ("type", "meaning"),
        [(f"`{name}`", text) for name, text in ERROR_TYPE_DESCRIPTIONS.items()],
    )
    reasons = _table(
        ("reason", "meaning"),
        [(f"`{name}`", text) for name, text in DEAD_LETTER_REASON_DESCRIPTIONS.items()],
    )
    return f"""
# Wire format

<!-- Generated from dspex/streams/records/ by `dspex schema --out docs/wire-format.md`.
     Do not edit by hand: a test fails when this file and the code disagree. -->

Every record value on dspex's Kafka topics is **plain JSON, UTF-8**: one JSON
object per record, written compactly (the examples below are indented for
reading). Any Kafka client (kcat, Java, Go, ...) can produce requests and read
results without Python; this page is everything it needs.

## Conventions

- **`schema`**: every record has a `schema` field, `dspex.<kind>/v<N>`,
  naming its kind and version. Readers dispatch on it; a record without a
  known `schema` goes to the dead-letter topic.
- **Unknown fields are rejected**, not ignored: a typo'd field name makes the
  record invalid instead of silently losing the value.
- **Versioning**: a schema string names one exact set of fields. Any change
  a `v<N>` reader would reject (a new field, a new error type or reason, a
  removed, renamed or retyped field, a tighter bound) comes with a new
  version `v<N+1>`; readers accept both versions during a rollout, and
  writers switch once every reader does. Relaxing a bound or rewording a
  description keeps the version.
- **Optional fields** (those not in a schema's `required` list) may be
  left out: they take the `default` shown, or a value generated where the
  record is read (`request_id`, creation times). `null` means "none".
- **Times** are integer milliseconds since the Unix epoch (UTC), named
  `*_ms`; durations are `latency_ms` (a float). Ids (`request_id`,
  `program_id`, ...) are 1 to {MAX_ID_CHARS} characters.
- **Floats** are finite: JSON has no NaN or Infinity, so they are rejected
  where a number is expected, and written as `null` inside free-form inputs
  and outputs.
- **Limits**: a record value larger than {DEFAULT_MAX_RECORD_BYTES:,} bytes is rejected
  (`too_large`); `metadata` holds at most {MAX_METADATA_ENTRIES} entries; a dead letter keeps
  the first {DEAD_LETTER_MAX_VALUE_BYTES:,} bytes of the original value.
- **Keys** are the UTF-8 bytes of the value named below. Topic names are
  the defaults, under the prefix `dspex`, which a deployment may change.

## Records and their keys

{records}

## Error types

An error result carries `error.type`, one of these, and `error.retryable`:
whether sending the same request again (later) may succeed.

{errors}

## Dead-letter reasons

A record that cannot be read at all is not answered: it is copied, with its
original bytes, to the dead-letter topic with one of these reasons.

{reasons}

## Trying it with kcat

Produce a request keyed by its program id, and watch the results:

{_kcat_example()}
"""


def _anchor(doc: RecordDoc) -> str:
    return doc.model.__name__.lower()


def _record_section(doc: RecordDoc) -> str:
    model = doc.model
    lines = [
        f'<a id="{_anchor(doc)}"></a>',
        f"## {model.__name__}: `{model.schema_id()}`",
        "",
        describe_model(model),
        "",
        f"- **Topics**: {_topics(doc)}",
        f"- **Key**: {doc.key}",
    ]
    for caption, record in doc.examples:
        lines += ["", f"**Example.** {caption}:", "", _json_block(json.loads(encode(record)))]
    lines += [
        "",
        "<details><summary>JSON Schema</summary>",
        "",
        _json_block(model.model_json_schema(by_alias=True)),
        "",
        "</details>",
    ]
    return "\n".join(lines)
