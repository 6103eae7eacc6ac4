"""What a call cost, from a price table the deployment configures.

No prices ship with dspex: they change more often than releases do, and a
stale built-in number is worse than an honest zero. A model missing from the
table costs 0 (and its tokens are still counted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dspex.errors import ConfigurationError

__all__ = ["ModelPrice", "PriceTable"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelPrice:
    """USD per one million tokens for one model.

    Example:
        >>> ModelPrice(prompt_usd_per_million=0.15, completion_usd_per_million=0.6)
        ModelPrice(prompt_usd_per_million=0.15, completion_usd_per_million=0.6)
    """

    prompt_usd_per_million: float
    completion_usd_per_million: float

    def __post_init__(self) -> None:
        for name in ("prompt_usd_per_million", "completion_usd_per_million"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceTable:
    """Prices by exact model name.

    Args:
        prices: Model name → :class:`ModelPrice`.

    Example:
        >>> table = PriceTable(prices={"gpt-4o-mini": ModelPrice(
        ...     prompt_usd_per_million=0.15, completion_usd_per_million=0.6)})
        >>> round(table.cost("gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=0), 2)
        0.15
        >>> table.cost("unknown", prompt_tokens=10, completion_tokens=10)
        0.0
    """

    prices: Mapping[str, ModelPrice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Freeze the mapping too, so a table shared by clients cannot drift.
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def cost(self, model: str, *, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the given tokens of ``model``; 0 when the model has no price."""
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (
            prompt_tokens * price.prompt_usd_per_million
            + completion_tokens * price.completion_usd_per_million
        ) / 1_000_000
