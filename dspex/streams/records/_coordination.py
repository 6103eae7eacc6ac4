"""The coordination channel: registered program versions on ``dspex.programs``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dspex.programs.module import Module
from dspex.programs.state import ProgramRegistry, ProgramSpec
from dspex.streams.records._base import EpochMillis, Identifier, WireRecord, now_ms

__all__ = ["ProgramRecord"]


class ProgramRecord(WireRecord):
    """One version of a program: its spec, from which any worker rebuilds it.

    Produced when a program version is registered or promoted (by the client
    SDK, the CLI or an optimizer) on the compacted ``dspex.programs`` topic,
    keyed by program id, so the latest record of each program is its active
    version. Workers build the program from ``spec``: data only, no pickled
    code ever travels.

    Example:
        >>> record = ProgramRecord.from_program("qa", 1, Predict("question -> answer"))
        >>> record.spec.kind
        'predict'
    """

    schema_: Literal["dspex.program/v1"] = Field(
        "dspex.program/v1", alias="schema", description="Record kind and version."
    )
    program_id: Identifier = Field(description="The program's stable name, e.g. `qa`.")
    version: int = Field(ge=1, description="The version number, from 1, increasing.")
    spec: ProgramSpec = Field(
        description=(
            "Everything needed to rebuild the program: module kind, signature, config "
            "(e.g. ReAct tool names) and learned state (instructions, demos, LM parameters)."
        )
    )
    description: str = Field(
        "", max_length=2000, description="What changed in this version, for humans."
    )
    created_at_ms: EpochMillis = Field(
        default_factory=now_ms, description="When the version was created (epoch ms)."
    )

    @classmethod
    def from_program(
        cls,
        program_id: str,
        version: int,
        program: Module,
        *,
        registry: ProgramRegistry | None = None,
        description: str = "",
        created_at_ms: int | None = None,
    ) -> ProgramRecord:
        """Describe ``program`` as version ``version`` of ``program_id``.

        Args:
            program_id: The program's stable name.
            version: The version number (from 1).
            program: The program; built-in modules or classes in ``registry``.
            registry: Names of custom module classes.
            description: What changed in this version.
            created_at_ms: The creation time (default: now).

        Returns:
            The record, ready to encode.

        Raises:
            StateError: The program's class is neither built in nor registered.
            pydantic.ValidationError: The id, version or description is out of bounds.
        """
        return cls(
            program_id=program_id,
            version=version,
            spec=ProgramSpec.from_program(program, registry=registry),
            description=description,
            created_at_ms=now_ms() if created_at_ms is None else created_at_ms,
        )

    def kafka_key(self) -> bytes:
        """The program id: compaction keeps the latest version of each program."""
        return self.program_id.encode("utf-8")
