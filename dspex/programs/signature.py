"""Signatures: the typed input and output fields of an LM task, plus its instructions.

Two equivalent forms build a :class:`Signature` subclass::

    class QA(Signature):
        \"\"\"Answer the question in a few words.\"\"\"

        question: str = InputField(desc="a trivia question")
        answer: str = OutputField()

    QA2 = make_signature("question -> answer", instructions="Answer the question in a few words.")

Signature classes are immutable values: ``with_instructions``, ``append``,
``prepend``, ``insert``, ``delete`` and ``with_updated_field`` return new
classes, and ``to_json`` / ``from_json`` carry them across processes. The fields
themselves (:class:`FieldSpec`, ``InputField``, ``OutputField``) are defined in
``dspex.programs._field`` and re-exported here.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Mapping
from dataclasses import replace
from types import FrameType, MappingProxyType
from typing import Any, NoReturn

from dspex.errors import SignatureError
from dspex.programs import _typespec
from dspex.programs._field import FieldKind, FieldMarker, FieldSpec, InputField, OutputField
from dspex.programs._typespec import CoercionError

__all__ = [
    "CoercionError",
    "FieldKind",
    "FieldSpec",
    "InputField",
    "OutputField",
    "Signature",
    "SignatureMeta",
    "ensure_signature",
    "make_signature",
]


def _default_instructions(specs: list[FieldSpec]) -> str:
    def names(kind: str) -> str:
        return ", ".join(f"`{spec.name}`" for spec in specs if spec.kind == kind)

    return f"Given the fields {names('input')}, produce the fields {names('output')}."


# Class-namespace keys through which SignatureMeta builds classes from FieldSpecs.
_SPECS_KEY = "__dspex_specs__"
_INSTRUCTIONS_KEY = "__dspex_instructions__"


class SignatureMeta(type):
    """Metaclass of :class:`Signature`: collects fields, validates, forbids mutation."""

    instructions: str
    input_fields: Mapping[str, FieldSpec]
    output_fields: Mapping[str, FieldSpec]
    fields: Mapping[str, FieldSpec]
    signature_name: str

    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> SignatureMeta:
        namespace = dict(namespace)
        specs: list[FieldSpec] | None = namespace.pop(_SPECS_KEY, None)
        instructions: str | None = namespace.pop(_INSTRUCTIONS_KEY, None)
        parents = [base for base in bases if isinstance(base, SignatureMeta)]
        if not parents:  # the Signature base class itself
            specs, instructions = [], ""
        elif specs is None:
            # The caller's frame is the class statement's: it holds names local to a
            # function (an Enum defined there) that string annotations may refer to.
            specs = _class_form_specs(name, parents, namespace, sys._getframe(1))
            doc = namespace.get("__doc__")
            if doc:
                instructions = inspect.cleandoc(doc)
            elif parents[0].fields and parents[0].instructions != _default_instructions(
                list(parents[0].fields.values())
            ):
                instructions = parents[0].instructions
        if parents:
            _validate(name, specs, namespace)
        specs = [s for s in specs if s.kind == "input"] + [s for s in specs if s.kind == "output"]
        instructions = instructions or (_default_instructions(specs) if specs else "")
        namespace.setdefault("__doc__", instructions)
        namespace.update(
            instructions=instructions,
            signature_name=name,
            input_fields=MappingProxyType({s.name: s for s in specs if s.kind == "input"}),
            output_fields=MappingProxyType({s.name: s for s in specs if s.kind == "output"}),
            fields=MappingProxyType({s.name: s for s in specs}),
        )
        return super().__new__(mcs, name, bases, namespace, **kwargs)

    def __setattr__(cls, name: str, value: Any) -> NoReturn:
        raise SignatureError(
            f"signature {cls.__name__} is immutable; cannot set {name!r} "
            "(use with_instructions, append, delete or with_updated_field)"
        )

    def __delattr__(cls, name: str) -> NoReturn:
        raise SignatureError(f"signature {cls.__name__} is immutable; cannot delete {name!r}")

    def __call__(
        cls,
        signature: str | Mapping[str, Any] | None = None,
        instructions: str | None = None,
        *,
        name: str | None = None,
        types: Mapping[str, Any] | None = None,
        custom_types: Mapping[str, Any] | None = None,
    ) -> type[Signature]:
        """``Signature("question -> answer", "instructions")``: DSPy's spelling of
        :func:`make_signature` (``custom_types`` is DSPy's name for ``types``).

        Only the base class builds signatures this way; a signature class is not
        instantiated.
        """
        if cls is not Signature or signature is None:
            raise SignatureError(
                f"signature {cls.__name__} is a class describing fields; it is not instantiated"
                + ("" if signature is None else "; build one with Signature('a -> b')")
            )
        if types is not None and custom_types is not None:
            raise SignatureError("pass types= or custom_types= (the same thing), not both")
        return make_signature(
            signature, instructions, name=name, types=types if types is not None else custom_types
        )

    @property
    def signature(cls) -> str:
        """The string form, e.g. ``"question, context: list[str] -> answer"``."""

        def side(specs: Mapping[str, FieldSpec]) -> str:
            return ", ".join(
                spec.name if spec.annotation is str else f"{spec.name}: {spec.type_string}"
                for spec in specs.values()
            )

        return f"{side(cls.input_fields)} -> {side(cls.output_fields)}" if cls.fields else ""

    def __repr__(cls) -> str:
        return f"{cls.__name__}({cls.signature})"


def _class_form_specs(
    name: str, parents: list[SignatureMeta], namespace: dict[str, Any], frame: FrameType
) -> list[FieldSpec]:
    inherited = {spec.name: spec for parent in parents for spec in parent.fields.values()}
    annotations: dict[str, Any] = namespace.get("__annotations__", {})
    markers = {key: value for key, value in namespace.items() if isinstance(value, FieldMarker)}
    for attribute in annotations:
        if attribute not in markers:
            raise SignatureError(
                f"field `{attribute}` of signature {name} needs a value of "
                "InputField(...) or OutputField(...)"
            )
    own = {}
    for attribute, marker in markers.items():
        del namespace[attribute]
        annotation = _resolve(name, attribute, annotations.get(attribute, str), namespace, frame)
        own[attribute] = FieldSpec(
            attribute, marker.kind, annotation, marker.desc, marker.prefix or ""
        )
    return list((inherited | own).values())


def _resolve(
    owner: str, attribute: str, annotation: Any, namespace: dict[str, Any], frame: FrameType
) -> Any:
    """Evaluate a string annotation (``from __future__ import annotations``)."""
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(namespace.get("__module__", ""))
    localns = {**frame.f_locals, **namespace}
    probe = type("_Probe", (), {"__annotations__": {attribute: annotation}})
    try:
        hints = typing.get_type_hints(probe, vars(module) if module else frame.f_globals, localns)
    except Exception as exc:  # annotation text can raise anything while evaluated
        raise SignatureError(
            f"cannot resolve the type {annotation!r} of field `{attribute}` in signature {owner}: "
            f"{exc}"
        ) from exc
    return hints[attribute]


def _validate(name: str, specs: list[FieldSpec], namespace: Mapping[str, Any]) -> None:
    for attribute in namespace:
        if attribute in RESERVED_NAMES:
            raise SignatureError(f"signature {name} must not define {attribute!r}: it is reserved")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in RESERVED_NAMES:
            raise SignatureError(f"field name `{spec.name}` in signature {name} is reserved")
        if spec.name in seen:
            raise SignatureError(f"field `{spec.name}` is declared twice in signature {name}")
        seen.add(spec.name)
    for kind in ("input", "output"):
        if not any(spec.kind == kind for spec in specs):
            raise SignatureError(f"signature {name} has no {kind} fields")


class Signature(metaclass=SignatureMeta):
    """Base class of signatures: subclass it with typed InputField/OutputField attributes.

    The docstring becomes the instructions. Class attributes: ``instructions``,
    ``input_fields``, ``output_fields`` and ``fields`` (read-only ordered mappings
    of name to :class:`FieldSpec`, inputs first) and ``signature_name``.

    Example:
        >>> class QA(Signature):
        ...     \"\"\"Answer the question in a few words.\"\"\"
        ...
        ...     question: str = InputField()
        ...     answer: str = OutputField()
        >>> list(QA.append("confidence", OutputField(), float).fields)
        ['question', 'answer', 'confidence']
    """

    @classmethod
    def with_instructions(cls, instructions: str) -> type[Signature]:
        """A copy of this signature with other instructions."""
        if not isinstance(instructions, str) or not instructions.strip():
            raise SignatureError(f"instructions of {cls.__name__} must be a non-empty string")
        return _derive(cls, list(cls.fields.values()), instructions)

    @classmethod
    def append(cls, name: str, field: Any, type_: Any = str) -> type[Signature]:
        """A copy with a field added after the others of its kind.

        Args:
            name: The new field's name.
            field: ``InputField(...)`` or ``OutputField(...)``.
            type_: The new field's type.
        """
        return cls.insert(-1, name, field, type_)

    @classmethod
    def prepend(cls, name: str, field: Any, type_: Any = str) -> type[Signature]:
        """A copy with a field added before the others of its kind."""
        return cls.insert(0, name, field, type_)

    @classmethod
    def insert(cls, index: int, name: str, field: Any, type_: Any = str) -> type[Signature]:
        """A copy with a field at ``index`` among the fields of its kind (-1 = last).

        Raises:
            SignatureError: The field is invalid, its name is taken, or the index is
                out of range.
        """
        if not isinstance(field, FieldMarker):
            raise SignatureError(f"field `{name}` must be given as InputField() or OutputField()")
        spec = FieldSpec(name, field.kind, type_, field.desc, field.prefix or "")
        group = [s for s in cls.fields.values() if s.kind == spec.kind]
        if not -len(group) - 1 <= index <= len(group):
            raise SignatureError(
                f"index {index} is out of range for the {len(group)} {spec.kind} fields "
                f"of {cls.__name__}"
            )
        group.insert(index if index >= 0 else index + len(group) + 1, spec)
        return _derive(cls, [s for s in cls.fields.values() if s.kind != spec.kind] + group)

    @classmethod
    def delete(cls, name: str) -> type[Signature]:
        """A copy without the field ``name``."""
        _field_of(cls, name)
        return _derive(cls, [s for s in cls.fields.values() if s.name != name])

    @classmethod
    def with_updated_field(
        cls, name: str, *, desc: str | None = None, prefix: str | None = None, type_: Any = None
    ) -> type[Signature]:
        """A copy with the description, prefix or type of field ``name`` changed.

        Arguments left as None keep their current value.
        """
        spec = _field_of(cls, name)
        updated = replace(
            spec,
            description=spec.description if desc is None else desc,
            prefix=spec.prefix if prefix is None else prefix,
            annotation=spec.annotation if type_ is None else type_,
        )
        return _derive(cls, [updated if s.name == name else s for s in cls.fields.values()])

    @classmethod
    def equals(cls, other: Any) -> bool:
        """Whether ``other`` has the same instructions and fields (names, kinds, types,
        descriptions, prefixes). Class names and the origin of enums and models do not
        matter."""
        return isinstance(other, SignatureMeta) and _structure(cls) == _structure(other)

    @classmethod
    def to_json(cls) -> dict[str, Any]:
        """The signature as JSON: ``{"name", "instructions", "fields": [...]}``.

        Each field is ``{"name", "kind", "type", "description", "prefix"}`` where
        ``type`` is a type expression (see ``dspex.programs._typespec``).
        """
        return {
            "name": cls.signature_name,
            "instructions": cls.instructions,
            "fields": [spec.to_json() for spec in cls.fields.values()],
        }

    @classmethod
    def from_json(cls, data: Any, *, types: Mapping[str, Any] | None = None) -> type[Signature]:
        """Rebuild a signature from :meth:`to_json` output.

        Enums and models are reused when their ``ref`` names a class in an already
        imported module (or one in ``types``) with the same shape; otherwise they are
        recreated from the stored members or JSON schema.

        Raises:
            SignatureError: The data is malformed or a type cannot be rebuilt.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("fields"), list):
            raise SignatureError("signature JSON must be an object with a 'fields' list")
        name, instructions = data.get("name", "StringSignature"), data.get("instructions")
        if not isinstance(name, str) or not name.isidentifier():
            raise SignatureError(f"signature JSON has an invalid name {name!r}")
        if instructions is not None and not isinstance(instructions, str):
            raise SignatureError(f"signature {name} JSON: instructions must be a string")
        specs = [FieldSpec.from_json(item, types=types) for item in data["fields"]]
        return _build(name, specs, instructions or None, module=__name__)

    @classmethod
    def parse(
        cls,
        signature: str,
        instructions: str | None = None,
        name: str | None = None,
        types: Mapping[str, Any] | None = None,
    ) -> type[Signature]:
        """Same as :func:`make_signature`."""
        return make_signature(signature, instructions, name, types)


#: Names a field (or a class-form attribute) may not use: they are the signature's own.
RESERVED_NAMES = frozenset(
    {attr for attr in dir(Signature) if not attr.startswith("_")}
    | {attr for attr in vars(SignatureMeta) if not attr.startswith("_")}
    | set(SignatureMeta.__annotations__)
    | {"mro"}
)


def _field_of(cls: SignatureMeta, name: str) -> FieldSpec:
    if name not in cls.fields:
        raise SignatureError(f"signature {cls.__name__} has no field `{name}`")
    return cls.fields[name]


def _structure(cls: SignatureMeta) -> tuple[Any, ...]:
    return cls.instructions, [
        (s.name, s.kind, _typespec.structural(s.type_expr), s.description, s.prefix)
        for s in cls.fields.values()
    ]


def _build(
    name: str, specs: list[FieldSpec], instructions: str | None, *, module: str, qualname: str = ""
) -> type[Signature]:
    namespace = {
        "__module__": module,
        "__qualname__": qualname or name,
        _SPECS_KEY: specs,
        _INSTRUCTIONS_KEY: instructions,
    }
    return typing.cast("type[Signature]", SignatureMeta(name, (Signature,), namespace))


def _derive(
    cls: SignatureMeta, specs: list[FieldSpec], instructions: str | None = None
) -> type[Signature]:
    if instructions is None and cls.instructions != _default_instructions(
        list(cls.fields.values())
    ):
        instructions = cls.instructions  # keep written instructions; regenerate default ones
    return _build(
        cls.__name__, specs, instructions, module=cls.__module__, qualname=cls.__qualname__
    )


def make_signature(
    signature: str | Mapping[str, Any],
    instructions: str | None = None,
    name: str | None = None,
    types: Mapping[str, Any] | None = None,
) -> type[Signature]:
    """Build a signature from its string form (or from a mapping of fields).

    Args:
        signature: ``"input, input: type -> output, output: type"``. Types are
            written as in Python: str, int, float, bool, Any, list[T], dict[K, V],
            tuple[...], Optional[T], ``T | None``, Literal['a', 1, True] and names
            from ``types``. Untyped fields are str. Alternatively a mapping of
            field name to ``(type, InputField(...) | OutputField(...))`` or to a
            bare marker (type str), in order.
        instructions: The task description; a default naming the fields if None.
        name: The class name (default ``"StringSignature"``).
        types: Enums and pydantic models the string refers to, by name.

    Raises:
        SignatureError: The string or mapping is malformed; the message quotes it.

    Example:
        >>> QA = make_signature("question, context: list[str] -> answer, confidence: float")
        >>> QA.output_fields["confidence"].annotation
        <class 'float'>
    """
    name = "StringSignature" if name is None else name
    if not isinstance(name, str) or not name.isidentifier():
        raise SignatureError(f"signature name {name!r} is not a Python identifier")
    if instructions is not None and not isinstance(instructions, str):
        raise SignatureError(f"instructions must be a string, not {type(instructions).__name__}")
    try:
        if isinstance(signature, Mapping):
            specs = [_spec_from_entry(key, entry) for key, entry in signature.items()]
        else:
            inputs, outputs = _typespec.parse_signature_text(signature, types=types)
            specs = [FieldSpec(n, "input", t) for n, t in inputs]
            specs += [FieldSpec(n, "output", t) for n, t in outputs]
        return _build(name, specs, instructions, module=__name__)
    except SignatureError as exc:
        if isinstance(signature, str) and repr(signature) in str(exc):
            raise
        raise SignatureError(f"{exc} (in signature {signature!r})") from None


def _spec_from_entry(name: Any, entry: Any) -> FieldSpec:
    annotation, marker = entry if isinstance(entry, tuple) and len(entry) == 2 else (str, entry)
    if not isinstance(marker, FieldMarker):
        raise SignatureError(
            f"field `{name}` must map to (type, InputField()/OutputField()), got {entry!r}"
        )
    return FieldSpec(name, marker.kind, annotation, marker.desc, marker.prefix or "")


def ensure_signature(signature: str | type[Signature]) -> type[Signature]:
    """Return a signature class, parsing it first when given in string form.

    Raises:
        SignatureError: ``signature`` is neither a string nor a Signature subclass
            with fields.

    Example:
        >>> ensure_signature("question -> answer").signature
        'question -> answer'
    """
    if isinstance(signature, str):
        return make_signature(signature)
    if (
        isinstance(signature, SignatureMeta)
        and issubclass(signature, Signature)
        and signature.fields
    ):
        return signature
    raise SignatureError(f"expected a signature string or Signature subclass, got {signature!r}")
