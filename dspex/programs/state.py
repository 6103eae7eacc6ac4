"""Programs as data: ProgramSpec rebuilds a runnable program from JSON alone.

A spec names the module kind (``predict``, ``chain_of_thought``, ``react`` or
a class registered in a :class:`ProgramRegistry`), its signature and its
learned state (instructions, demos, LM parameters). Workers receive specs over
Kafka; no pickled code ever travels. :func:`load_dspy_state` reads a program
saved by DSPy (``program.save("x.json")``) into an equivalent dspex program.

Example:
    >>> spec = ProgramSpec.from_program(ChainOfThought("question -> answer"))
    >>> program = ProgramSpec.model_validate_json(spec.model_dump_json()).build()
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspex.errors import SignatureError, StateError
from dspex.programs.example import Example
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict
from dspex.programs.react import ReAct, Tool
from dspex.programs.signature import Signature

__all__ = ["ProgramRegistry", "ProgramSpec", "load_dspy_state"]

BUILTIN_KINDS = ("predict", "chain_of_thought", "react")


class ProgramRegistry:
    """Python classes and tools that specs may refer to by name.

    Specs carry data only, so a custom module class or a ReAct tool must be
    registered under a name on the side that builds the program.

    Example:
        >>> registry = ProgramRegistry()
        >>> registry.register("rag", RAG)        # doctest: +SKIP
        >>> registry.register_tool(search)       # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._programs: dict[str, Callable[[], Module]] = {}
        self._program_names: dict[type, str] = {}
        self._tools: dict[str, Tool] = {}

    def register(self, name: str, factory: type[Module] | Callable[[], Module]) -> None:
        """Make ``name`` build a program with ``factory()`` (a Module class or function)."""
        if name in BUILTIN_KINDS:
            raise StateError(f"{name!r} is a built-in program kind")
        self._programs[name] = factory
        if isinstance(factory, type):
            self._program_names[factory] = name

    def register_tool(self, func: Callable[..., Any] | Tool, *, name: str | None = None) -> Tool:
        tool = func if isinstance(func, Tool) else Tool(func, name=name)
        self._tools[tool.name] = tool
        return tool

    def tool(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise StateError(
                f"tool {name!r} is not registered (known: {sorted(self._tools)})"
            ) from None

    def factory(self, kind: str) -> Callable[[], Module]:
        try:
            return self._programs[kind]
        except KeyError:
            raise StateError(
                f"program kind {kind!r} is not registered (known: "
                f"{sorted([*BUILTIN_KINDS, *self._programs])})"
            ) from None

    def name_of(self, program: Module) -> str | None:
        return self._program_names.get(type(program))


class ProgramSpec(BaseModel):
    """Everything needed to rebuild a program: kind, signature, config and state."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    schema_: Literal["dspex.program_spec/v1"] = Field("dspex.program_spec/v1", alias="schema")
    kind: str
    #: The task signature (built-in kinds), as ``Signature.to_json()``.
    signature: dict[str, Any] | None = None
    #: Constructor settings: ReAct's tool names and max_iters, LM parameters.
    config: dict[str, Any] = Field(default_factory=dict)
    #: ``Module.dump_state()`` of the program.
    state: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_program(
        cls, program: Module, *, registry: ProgramRegistry | None = None
    ) -> ProgramSpec:
        """Describe ``program`` as a spec.

        Raises:
            StateError: The program's class is neither built in nor registered.
        """
        state = program.dump_state()
        if type(program) is Predict:
            return cls(kind="predict", signature=program.signature.to_json(), state=state)
        if type(program) is ChainOfThought:
            return cls(kind="chain_of_thought", signature=program.signature.to_json(), state=state)
        if type(program) is ReAct:
            config = {
                "tools": list(program.tools),
                "max_iters": program.max_iters,
                "tool_errors": program.tool_errors,
            }
            return cls(
                kind="react", signature=program.signature.to_json(), config=config, state=state
            )
        name = registry.name_of(program) if registry is not None else None
        if name is None:
            raise StateError(
                f"{type(program).__name__} is not a built-in module: register it with "
                "ProgramRegistry.register(name, cls) to describe it as a spec"
            )
        return cls(kind=name, state=state)

    def build(self, *, registry: ProgramRegistry | None = None) -> Module:
        """A runnable program from this spec (LM clients come from the context).

        Raises:
            StateError: Unknown kind or tool, or state that does not fit.
        """
        program = self._construct(registry)
        program.load_state(self.state)
        return program

    def _construct(self, registry: ProgramRegistry | None) -> Module:
        if self.kind in BUILTIN_KINDS:
            signature = self._signature()
            if self.kind == "predict":
                return Predict(signature)
            if self.kind == "chain_of_thought":
                return ChainOfThought(signature)
            registry = registry or ProgramRegistry()
            tools = [registry.tool(str(name)) for name in self.config.get("tools", [])]
            return ReAct(
                signature,
                tools=tools,
                max_iters=int(self.config.get("max_iters", 5)),
                tool_errors=self.config.get("tool_errors", "raise"),
            )
        if registry is None:
            raise StateError(f"program kind {self.kind!r} needs a ProgramRegistry to build")
        return registry.factory(self.kind)()

    def _signature(self) -> type[Signature]:
        if self.signature is None:
            raise StateError(f"a {self.kind} spec needs a signature")
        try:
            return Signature.from_json(self.signature)
        except SignatureError as exc:
            raise StateError(f"spec signature is invalid: {exc}") from exc


def load_dspy_state(program: Module, source: Mapping[str, Any] | str | Path) -> Module:
    """Apply a program saved by DSPy (JSON) to an equivalent dspex program, in place.

    DSPy saves one entry per predictor path (``"predict"`` inside
    ChainOfThought, ``"generate.predict"`` for nested ones) with ``demos`` and
    ``signature`` (``instructions`` and ``fields``, a list of
    ``prefix``/``description`` in field order), plus ``metadata``. A lone
    ``dspy.Predict`` is saved differently: its entry's keys (``demos``,
    ``signature``, ``lm``, ...) are the file's top level; it loads into a
    program with one predictor. Instructions, demos and field
    prefixes/descriptions are taken over; the LM settings in the file are not
    (LM clients come from dspex's context). Field types are not in DSPy's
    file: they come from the dspex program's signatures.

    Raises:
        StateError: The file is unreadable, or its predictors or fields do not
            match the program's.
    """
    data = _read_json(source)
    entries = {key: value for key, value in data.items() if key != "metadata"}
    predictors = dict(program.named_predictors())
    if _is_lone_predictor_state(entries):
        if len(predictors) != 1:
            raise StateError(
                f"the DSPy state is a lone Predict's (top-level keys {sorted(entries)}); "
                f"{type(program).__name__} has {len(predictors)} predictors "
                f"({sorted(predictors)}): load it into a program with one"
            )
        entries = {next(iter(predictors)): entries}
    unknown = sorted(set(entries) - set(predictors))
    if unknown:
        raise StateError(
            f"DSPy state has predictors {unknown} that {type(program).__name__} does not "
            f"have (it has {sorted(predictors)})"
        )
    for name, entry in entries.items():
        _apply_dspy_predictor(predictors[name], name, entry)
    return program


#: The keys of one predictor's entry in DSPy's saved state.
_DSPY_PREDICTOR_KEYS = frozenset(
    {"traces", "train", "demos", "signature", "lm", "extended_signature"}
)


def _is_lone_predictor_state(entries: Mapping[str, Any]) -> bool:
    """Whether DSPy's file holds one predictor's entry at its top level (a saved Predict)."""
    signature = entries.get("signature")
    return (
        set(entries) <= _DSPY_PREDICTOR_KEYS
        and isinstance(signature, Mapping)
        and isinstance(signature.get("fields"), list)
    )


def _read_json(source: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    try:
        data = json.loads(Path(source).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read DSPy state from {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise StateError(f"DSPy state in {source} is not a JSON object")
    return data


def _apply_dspy_predictor(predictor: Predict, name: str, entry: Any) -> None:
    if not isinstance(entry, Mapping):
        raise StateError(f"DSPy predictor `{name}`: expected an object")
    signature = predictor.signature
    saved = entry.get("signature") or {}
    fields = saved.get("fields")
    if fields is not None:
        if len(fields) != len(signature.fields):
            raise StateError(
                f"DSPy predictor `{name}` has {len(fields)} fields, the dspex predictor has "
                f"{len(signature.fields)} ({list(signature.fields)})"
            )
        for field_name, saved_field in zip(signature.fields, fields, strict=True):
            updates: dict[str, Any] = {}
            prefix = saved_field.get("prefix")
            description = saved_field.get("description")
            if prefix:
                updates["prefix"] = str(prefix)
            if description and not str(description).startswith("${"):
                updates["desc"] = str(description)
            if updates:
                signature = signature.with_updated_field(field_name, **updates)
    if saved.get("instructions"):
        signature = signature.with_instructions(str(saved["instructions"]))
    try:
        demos = [
            Example({k: v for k, v in demo.items() if k != "augmented"})
            for demo in entry.get("demos", [])
        ]
    except (AttributeError, TypeError, ValidationError) as exc:
        raise StateError(f"DSPy predictor `{name}`: malformed demos ({exc})") from exc
    predictor.signature = signature
    predictor.demos = demos
