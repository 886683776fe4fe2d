"""Ending a depth's C path once its val accuracy has clearly turned down (`probe --c-stop`).

Along an L1 path, val accuracy rises with C while the support grows, peaks, and then falls as
the fit follows the training rows; the largest Cs hold the largest supports, and the solvers
spend most of their time there. So the search walks each path upward and stops it at the first
C whose val accuracy lies more than `n_se` standard errors (binomial, of the path's best so far,
over the val rows) below that best: the larger Cs of that path are not fitted and not reported.
A configuration that falls that far below its own path's best is not what a selection rule on
val picks, unless val rises again at a larger C: benchmarks/probe_speed.py measures the search
both ways (`--c-stop 0` fits every C), and on all 12,808 Rotten Tomatoes rows the winners agreed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .blocks import val_scores

__all__ = ["ValStop"]


class ValStop:
    """A PathStop that scores each mask's solution on the val rows as its C is fitted."""

    def __init__(self, X_val: Any, y_val: np.ndarray, n_se: float, n_masks: int) -> None:
        self.X_val = X_val
        self.y_val = np.asarray(y_val)
        self.n_se = float(n_se)
        # each mask's best val accuracy so far along its path
        self.best = np.full(n_masks, -np.inf)

    def __call__(self, ci: int, idx: np.ndarray, coef: np.ndarray, icpt: np.ndarray) -> np.ndarray:
        """True for the masks `idx` whose val accuracy at this C fell clearly below their best."""
        val = val_scores(self.X_val, coef, icpt, self.y_val)
        best = np.maximum(self.best[idx], val)
        self.best[idx] = best
        se = np.sqrt(best * (1 - best) / max(len(self.y_val), 1))
        return val < best - self.n_se * se
