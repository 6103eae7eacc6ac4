"""Datasets as JSON Lines files: one flat object of input and label fields per line.

Used by ``dspex eval`` and ``dspex optimize``. A file is checked in one
streaming pass before anything is sent (bad lines are reported with their
numbers), then read again lazily, so its size does not bound memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dspex.errors import ConfigurationError
from dspex.programs.example import Example

if TYPE_CHECKING:
    from dspex.streams.records import ProgramRecord

__all__ = ["MAX_LISTED", "DatasetFields", "check_dataset", "read_examples"]

#: Bad lines named in the error about a dataset (the rest are counted).
MAX_LISTED: Final = 10
_JSON_TYPES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class DatasetFields:
    """Which keys of a dataset line are inputs, and which are labels.

    Attributes:
        inputs: Input field names; every line must have all of them.
        labels: Output field names a line may carry as labels (at least one);
            other keys are dropped. None: every other key is a label.
    """

    inputs: tuple[str, ...]
    labels: tuple[str, ...] | None

    @classmethod
    def of(cls, record: ProgramRecord, inputs: tuple[str, ...] = ()) -> DatasetFields:
        """The fields of a registered program, from its signature (or ``inputs``).

        Raises:
            ConfigurationError: The spec has no signature and no ``inputs`` are given.
        """
        signature = record.spec.signature
        fields = signature.get("fields", []) if isinstance(signature, dict) else []
        named = {
            kind: [f["name"] for f in fields if f.get("kind") == kind]
            for kind in ("input", "output")
        }
        chosen = inputs or tuple(named["input"])
        if not chosen:
            raise ConfigurationError(
                f"program {record.program_id!r} version {record.version} ({record.spec.kind}) "
                "has no signature to tell inputs from labels: name them with --inputs"
            )
        labels = tuple(name for name in named["output"] if name not in chosen)
        return cls(inputs=tuple(chosen), labels=labels or None)

    def example(self, data: dict[str, Any]) -> Example:
        if self.labels is not None:
            keep = {*self.inputs, *self.labels}
            data = {key: value for key, value in data.items() if key in keep}
        return Example(data).with_inputs(*self.inputs)


def _parse_line(raw: bytes, fields: DatasetFields) -> Example | str:
    """The example of one non-blank line, or what is wrong with it."""
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return f"not JSON ({detail})"
    if not isinstance(value, dict):
        return f"not a JSON object but {_JSON_TYPES.get(type(value), type(value).__name__)}"
    missing = [name for name in fields.inputs if name not in value]
    if missing:
        return f"missing input field {_names(missing)}"
    if fields.labels is not None and not any(name in value for name in fields.labels):
        return f"no label: expected a field {_names(fields.labels, joiner=' or ')}"
    return fields.example(value)


def _names(names: Any, joiner: str = ", ") -> str:
    return joiner.join(f"`{name}`" for name in names)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line, read lazily."""
    try:
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if raw.strip():
                    yield number, raw
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc


def check_dataset(path: Path, fields: DatasetFields) -> int:
    """Check every line of ``path`` in one streaming pass; the number of examples.

    Raises:
        ConfigurationError: The file cannot be read, holds no examples, or has
            bad lines (the first :data:`MAX_LISTED` are named, with line numbers).
    """
    count = bad = 0
    listed: list[str] = []
    for number, raw in _lines(path):
        parsed = _parse_line(raw, fields)
        if isinstance(parsed, str):
            bad += 1
            if len(listed) < MAX_LISTED:
                listed.append(f"line {number}: {parsed}")
        else:
            count += 1
    if bad:
        more = f"; and {bad - len(listed)} more" if bad > len(listed) else ""
        raise ConfigurationError(
            f"{path}: {bad} bad line{'s' if bad > 1 else ''}, nothing was sent: "
            + "; ".join(listed)
            + more
        )
    if count == 0:
        raise ConfigurationError(f"{path} holds no examples (no non-blank lines)")
    return count


def read_examples(
    path: Path, fields: DatasetFields, lines_of: dict[int, int] | None = None
) -> Iterator[Example]:
    """The examples of a checked dataset, read lazily.

    Args:
        lines_of: When given, filled with index → line number of each example
            yielded (the caller removes entries as scores arrive).

    Raises:
        ConfigurationError: A line no longer parses (the file changed since it was checked).
    """
    for index, (number, raw) in enumerate(_lines(path)):
        parsed = _parse_line(raw, fields)
        if isinstance(parsed, str):
            raise ConfigurationError(f"{path} changed while being read: line {number}: {parsed}")
        if lines_of is not None:
            lines_of[index] = number
        yield parsed
