"""Scoped configuration for programs: which LM, adapter and cache to use.

There is no global settings object. :func:`context` sets values for the code
inside a ``with`` block (and every task created inside it) through a
:class:`contextvars.ContextVar`, so thousands of concurrent requests, each
with its own LM or adapter, never see each other's settings.

Example:
    >>> lm = OpenAIChat(model="smollm2-135m-instruct", base_url=url)  # doctest: +SKIP
    >>> with dspex.context(lm=lm):                                     # doctest: +SKIP
    ...     answer = qa(question="Why is the sky blue?")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigurationError

if TYPE_CHECKING:
    from dspex.programs.adapters.base import Adapter
    from dspex.programs.lm.base import LM

__all__ = ["Settings", "context", "current_settings"]


@dataclass(frozen=True)
class Settings:
    """The configuration a program call sees.

    Attributes:
        lm: The language model used by predictors that have none of their own.
        adapter: How signatures become prompts and completions become fields;
            None means ChatAdapter with fallback to JSONAdapter.
        lm_kwargs: Default LM parameters (temperature, max_tokens, ...) applied
            under each predictor's own.
        cache: False makes LM calls bypass their clients' response caches.
        rollout_id: Passed to the LM so sampled calls can be cached per rollout.
        request_id: The request being served, for error messages and telemetry.
    """

    lm: LM | None = None
    adapter: Adapter | None = None
    lm_kwargs: dict[str, Any] = field(default_factory=dict)
    cache: bool = True
    rollout_id: str | None = None
    request_id: str | None = None


_SETTINGS: ContextVar[Settings] = ContextVar("dspex_settings", default=Settings())  # noqa: B039 - frozen default


def current_settings() -> Settings:
    """The settings in effect for the calling task."""
    return _SETTINGS.get()


@contextmanager
def context(**overrides: Any) -> Iterator[Settings]:
    """Override settings inside a ``with`` block (and tasks started in it).

    Args:
        **overrides: Any :class:`Settings` field: ``lm``, ``adapter``,
            ``lm_kwargs`` (merged with the outer value), ``cache``, ``rollout_id``,
            ``request_id``.

    Yields:
        The settings in effect inside the block.

    Raises:
        ConfigurationError: An unknown setting name was given.
    """
    known = Settings.__dataclass_fields__
    if not known.keys() >= overrides.keys():
        unknown = sorted(overrides.keys() - known.keys())
        raise ConfigurationError(
            f"unknown dspex setting(s): {', '.join(unknown)}; known: {sorted(known)}"
        )
    outer = _SETTINGS.get()
    if "lm_kwargs" in overrides:
        overrides["lm_kwargs"] = {**outer.lm_kwargs, **(overrides["lm_kwargs"] or {})}
    settings = replace(outer, **overrides)
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)
