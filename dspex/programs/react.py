"""ReAct: reason, call a tool, observe, repeat; then answer.

Tools are plain Python callables, sync or async. Their parameters (names,
type hints, defaults) and docstrings tell the LM how to call them, and the
arguments the LM chooses are validated against those parameters before the
call.

Example:
    >>> def search(query: str, k: int = 3) -> list[str]:   # doctest: +SKIP
    ...     '''Search the wiki.'''
    >>> agent = ReAct("question -> answer", tools=[search], max_iters=5)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from dspex._validation import describe_validation_error
from dspex.errors import ConfigurationError, ToolError
from dspex.programs.example import Prediction
from dspex.programs.module import Module
from dspex.programs.predict import ChainOfThought, Predict
from dspex.programs.signature import InputField, OutputField, Signature, ensure_signature

__all__ = ["ReAct", "Tool"]

FINISH = "finish"


class Tool:
    """A callable the LM may use, with its argument schema.

    Args:
        func: A sync or async function with type-hinted parameters.
        name: Tool name shown to the LM; default the function's name.
        description: Default: the function's docstring.
    """

    def __init__(
        self, func: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> None:
        if not callable(func):
            raise ConfigurationError(f"tool {func!r} is not callable")
        self.func = func
        self.name: str = name or str(getattr(func, "__name__", type(func).__name__))
        if not self.name.isidentifier() or self.name == FINISH:
            raise ConfigurationError(f"invalid tool name {self.name!r}")
        self.description = (description or inspect.getdoc(func) or "").strip()
        self.arguments_model = _arguments_model(func, self.name)

    def schema(self) -> dict[str, Any]:
        """JSON Schema of the tool's arguments."""
        return self.arguments_model.model_json_schema()

    def describe(self) -> str:
        properties = self.schema().get("properties", {})
        args = ", ".join(f"{n}: {p.get('type', 'any')}" for n, p in properties.items())
        return f"{self.name}({args}): {self.description or 'no description'}"

    async def acall(self, arguments: Mapping[str, Any]) -> Any:
        """Validate ``arguments`` and call the tool.

        Raises:
            ToolError: The arguments do not fit the tool, or the tool raised.
        """
        try:
            validated = self.arguments_model.model_validate(dict(arguments))
        except ValidationError as exc:
            problems = describe_validation_error(exc, whole="arguments")
            raise ToolError(
                f"tool `{self.name}`: bad arguments: {problems}", tool=self.name
            ) from exc
        kwargs = {name: getattr(validated, name) for name in type(validated).model_fields}
        try:
            result = self.func(**kwargs)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ToolError(
                f"tool `{self.name}` raised {type(exc).__name__}: {exc}", tool=self.name
            ) from exc
        return result


def _arguments_model(func: Callable[..., Any], name: str) -> type[BaseModel]:
    try:
        parameters = inspect.signature(func).parameters
        hints = get_type_hints(func)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigurationError(f"tool `{name}`: cannot read its parameters ({exc})") from exc
    fields: dict[str, Any] = {}
    for param in parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    model: type[BaseModel] = create_model(
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _observation(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


class ReAct(Module):
    """A tool-using agent loop over a signature.

    Args:
        signature: The task, e.g. ``"question -> answer"``.
        tools: Callables (or :class:`Tool`) the LM may call.
        max_iters: Most tool calls before answering from what was gathered.
        tool_errors: ``"raise"`` (default) stops with a ToolError naming the
            tool; ``"observe"`` shows the error to the LM as the observation so
            it can correct itself (the error stays in the trajectory).
    """

    def __init__(
        self,
        signature: str | type[Signature],
        *,
        tools: Sequence[Callable[..., Any] | Tool],
        max_iters: int = 5,
        tool_errors: Literal["raise", "observe"] = "raise",
        **predict_kwargs: Any,
    ) -> None:
        if max_iters < 1:
            raise ConfigurationError("max_iters must be at least 1")
        self.signature = ensure_signature(signature)
        self.tools = {t.name: t for t in (t if isinstance(t, Tool) else Tool(t) for t in tools)}
        if not self.tools:
            raise ConfigurationError("ReAct needs at least one tool")
        self.max_iters = max_iters
        self.tool_errors = tool_errors
        self.react = Predict(self._step_signature(), **predict_kwargs)
        self.extract = ChainOfThought(
            self.signature.append("trajectory", InputField(desc="Steps taken so far"), str),
            **predict_kwargs,
        )

    def _step_signature(self) -> type[Signature]:
        tool_list = "\n".join(
            f"({i}) {tool.describe()}" for i, tool in enumerate(self.tools.values(), start=1)
        )
        names = [*self.tools, FINISH]
        instructions = (
            f"{self.signature.instructions}\n\n"
            "You work in steps. At each step, given the fields and the trajectory so far, "
            "write your next thought, choose the next tool and give its arguments as a JSON "
            f"object. Tools:\n{tool_list}\n({len(names)}) {FINISH}(): the information "
            "gathered is enough to produce the outputs."
        )
        base = self.signature
        inputs = {name: (spec.annotation, spec) for name, spec in base.input_fields.items()}
        step = _make_step_signature(inputs, names, instructions)
        return step

    async def aforward(self, **inputs: Any) -> Prediction:
        trajectory: list[str] = []
        for index in range(self.max_iters):
            step = await self.react.acall(**inputs, trajectory="\n".join(trajectory) or "(none)")
            tool_name = str(step.next_tool_name)
            trajectory.append(f"thought_{index}: {step.next_thought}")
            trajectory.append(f"tool_{index}: {tool_name}({json.dumps(step.next_tool_args)})")
            if tool_name == FINISH:
                break
            try:
                observation = _observation(await self.tools[tool_name].acall(step.next_tool_args))
            except ToolError as exc:
                if self.tool_errors == "raise":
                    raise
                observation = f"error: {exc}"
            trajectory.append(f"observation_{index}: {observation}")
        final = await self.extract.acall(**inputs, trajectory="\n".join(trajectory))
        return Prediction({**dict(final.items()), "trajectory": trajectory})


def _make_step_signature(
    inputs: Mapping[str, tuple[Any, Any]], tool_names: list[str], instructions: str
) -> type[Signature]:
    from dspex.programs.signature import make_signature

    literal = Literal[tuple(tool_names)]  # type: ignore[valid-type]
    fields: dict[str, tuple[Any, Any]] = {
        name: (annotation, InputField(desc=spec.description, prefix=spec.prefix))
        for name, (annotation, spec) in inputs.items()
    }
    fields["trajectory"] = (str, InputField(desc="Thoughts, tool calls and observations so far"))
    fields["next_thought"] = (str, OutputField(desc="Reasoning about what to do next"))
    fields["next_tool_name"] = (literal, OutputField(desc="One of the tool names"))
    fields["next_tool_args"] = (
        dict[str, Any],
        OutputField(desc="Arguments for the tool as a JSON object"),
    )
    return make_signature(fields, instructions=instructions, name="ReActStep")
