"""One way to say what pydantic rejected, for dspex's one-line error messages."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["describe_validation_error"]


def describe_validation_error(exc: ValidationError, *, whole: str = "value") -> str:
    """``"field.sub: message; other: message"``; ``whole`` names a problem with no field.

    Input values are left out: they may be large, or secret.
    """
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or whole}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )
