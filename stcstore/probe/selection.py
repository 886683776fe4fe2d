"""Choosing among scored configurations on the validation split.

`best`: the highest val (ties: fewer features, then the search order). `one_se`: among the
configurations whose val is within one binomial standard error of the best (sqrt(p(1-p)/n_val)),
the simplest (fewest transformer blocks to run, then fewest features), which is harder to fool
with a lucky val score and makes early exit cheaper.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, TypeVar

__all__ = ["RULES", "choose", "standard_error", "pareto_add", "is_dominated"]

RULES = ("one_se", "best")
T = TypeVar("T")


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n rows."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1))


def choose(items: Sequence[T], val: Callable[[T], float], simplicity: Callable[[T], tuple],
           rank: Callable[[T], tuple], rule: str, n_val: int) -> tuple[T, Optional[T], dict[str, Any]]:
    """(chosen, runner-up, what the rule saw). `rank` orders by val first (smaller is better)."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}")
    best = min(items, key=rank)
    info: dict[str, Any] = {"rule": rule, "best_val": val(best)}
    if rule == "best":
        ordered = sorted(items, key=rank)
    else:
        se = standard_error(val(best), n_val)
        # a hair of slack so a score equal to the threshold in exact arithmetic is not lost to rounding
        threshold = val(best) - se - 1e-12
        ordered = sorted((i for i in items if val(i) >= threshold), key=lambda i: (simplicity(i), rank(i)))
        info.update(se=se, threshold=val(best) - se, n_within=len(ordered))
    return ordered[0], (ordered[1] if len(ordered) > 1 else None), info


def _dominates(a: T, b: T, val: Callable[[T], float], simplicity: Callable[[T], tuple],
               rank: Callable[[T], tuple]) -> bool:
    return val(a) >= val(b) and all(x <= y for x, y in zip(simplicity(a), simplicity(b))) and rank(a) < rank(b)


def is_dominated(front: Sequence[T], item: T, val: Callable[[T], float], simplicity: Callable[[T], tuple],
                 rank: Callable[[T], tuple]) -> bool:
    """True when some front member beats the item on val, simplicity and rank at once."""
    return any(_dominates(f, item, val, simplicity, rank) for f in front)


def pareto_add(front: list[T], item: T, val: Callable[[T], float], simplicity: Callable[[T], tuple],
               rank: Callable[[T], tuple]) -> list[T]:
    """Add an item to a front of items no other beats on val, simplicity and rank at once.

    Either rule only ever chooses from such a front, so a search keeps the front, not every item.
    """
    if is_dominated(front, item, val, simplicity, rank):
        return front
    return [f for f in front if not _dominates(item, f, val, simplicity, rank)] + [item]
