"""Ranking scored units (attention heads, MLP channels) and taking the top ones: pure functions.

Ties are broken by the unit's key ascending ((layer, head) or (layer, channel)), so the same
scores always give the same selection.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

__all__ = ["rank_units", "select_top"]


def rank_units(scores: dict[Hashable, float], what: str = "unit") -> list[tuple[Hashable, float]]:
    """Sorted by score descending; ties by key ascending. `what` names the unit in errors."""
    for key, value in scores.items():
        if not math.isfinite(value):
            raise ValueError(f"{what} {key} has a non-finite score {value}")
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def select_top(
    ranked: list[tuple[Hashable, float]], count: int, field: str = "count", what: str = "units"
) -> list[Hashable]:
    """The keys of the first `count` ranked units; `field` and `what` name them in errors."""
    if count < 1:
        raise ValueError(f"{field} must be >= 1, got {count}")
    if count > len(ranked):
        raise ValueError(f"{field} {count} exceeds the {len(ranked)} {what} scored")
    return [key for key, _ in ranked[:count]]
