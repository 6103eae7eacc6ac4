"""Error results as dspex errors: which exception a worker's error result stands for.

:func:`error_from_result` is public through :mod:`dspex.streams.client`, where
:meth:`~dspex.streams.client.DSPExClient.predict` and ``dspex submit`` use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dspex.errors import (
    AdapterParseError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    DSPExError,
    InputError,
    LMAuthError,
    LMBadRequestError,
    LMConnectionError,
    LMError,
    LMRateLimitError,
    LMResponseError,
    LMServerError,
    LMTimeoutError,
    ProgramNotFoundError,
    ToolError,
)
from dspex.streams.records import ErrorInfo, InferenceResult

__all__ = ["error_from_result"]

#: LM error classes by name, per wire error type: a worker's ``ErrorInfo.exception``
#: picks the precise class, the type alone gives the family's default.
_LM_FAMILIES: Final[Mapping[str, tuple[type[LMError], tuple[type[LMError], ...]]]] = {
    "lm_error": (
        LMError,
        (LMAuthError, LMBadRequestError, LMServerError, LMResponseError, LMError),
    ),
    "lm_rate_limited": (LMRateLimitError, (LMRateLimitError,)),
    "lm_unavailable": (LMConnectionError, (CircuitOpenError, LMTimeoutError, LMConnectionError)),
}


def error_from_result(
    result: InferenceResult, *, requested_version: int | None = None
) -> DSPExError:
    """The dspex error that an error result stands for, to raise in the caller.

    The class follows the wire error type (``unknown_program``:
    ProgramNotFoundError, ``invalid_inputs``: InputError, ``parse_error``:
    AdapterParseError, ``tool_error``: ToolError, ``lm_*``: the LMError
    subclass the worker named, ``deadline_exceeded``: DeadlineExceededError,
    ``internal``: DSPExError). Details the wire does not carry are marked
    ``"remote"`` (an LM error's provider, a parse error's adapter, a tool's name
    unless the error names a field). The message names the request id and the
    program.

    Args:
        result: An error result.
        requested_version: The version the request pinned, if any.

    Returns:
        The error, not raised.

    Raises:
        ConfigurationError: ``result`` is not an error result.

    Example:
        >>> info = ErrorInfo(type="invalid_inputs", message="missing `q`", retryable=False)
        >>> result = InferenceResult(request_id="r1", program_id="qa", program_version=1,
        ...     status="error", error=info, latency_ms=1.0, worker_id="w1")
        >>> type(error_from_result(result)).__name__
        'InputError'
    """
    info: ErrorInfo | None = result.error
    if info is None:
        raise ConfigurationError(f"result {result.request_id} is not an error result")
    message = (
        f"request {result.request_id} to program {result.program_id!r} failed "
        f"({info.type}): {info.message}"
    )
    kind = info.type
    if kind in ("unknown_program", "unknown_version"):
        return ProgramNotFoundError(
            message,
            program_id=result.program_id,
            version=requested_version if kind == "unknown_version" else None,
        )
    if kind == "invalid_inputs":
        return InputError(message, fields=[info.field] if info.field else [])
    if kind == "parse_error":
        return AdapterParseError(message, adapter="remote", completion="", field=info.field)
    if kind == "tool_error":
        return ToolError(message, tool=info.field or "remote")
    if kind == "deadline_exceeded":
        return DeadlineExceededError(message, timeout_s=result.latency_ms / 1000)
    family = _LM_FAMILIES.get(kind)
    if family is not None:
        default, members = family
        cls = next((c for c in members if c.__name__ == info.exception), default)
        return cls(message, provider="remote", request_id=result.request_id)
    return DSPExError(message)
