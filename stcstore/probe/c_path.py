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

from typing import Any, Optional, Sequence

import numpy as np

from .blocks import fit_path, val_scores

__all__ = ["ValStop", "fit_scored"]


class ValStop:
    """A PathStop that scores each mask's solution on the val rows as its C is fitted."""

    def __init__(self, X_val: Any, y_val: np.ndarray, n_se: float, n_masks: int, n_C: int) -> None:
        self.X_val = X_val
        self.y_val = np.asarray(y_val)
        self.n_se = float(n_se)
        # each mask's best val accuracy so far along its path, and every (mask, C) score it saw (NaN: none)
        self.best = np.full(n_masks, -np.inf)
        self.val = np.full((n_masks, n_C), np.nan)

    def __call__(self, ci: int, idx: np.ndarray, coef: np.ndarray, icpt: np.ndarray) -> np.ndarray:
        """True for the masks `idx` whose val accuracy at this C fell clearly below their best."""
        val = val_scores(self.X_val, coef, icpt, self.y_val)
        self.val[idx, ci] = val
        best = np.maximum(self.best[idx], val)
        self.best[idx] = best
        se = np.sqrt(best * (1 - best) / max(len(self.y_val), 1))
        return val < best - self.n_se * se


def fit_scored(solver: Any, X: Any, X_val: Any, y: np.ndarray, y_val: np.ndarray, n_classes: int,
               Cs: Sequence[float], masks: Optional[np.ndarray], init: Optional[tuple] = None, c_stop: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """blocks.fit_path with each C path ended by ValStop (c_stop > 0), and (n_masks, n_C) val accuracies:
    the very numbers the rule saw, so the report and the rule agree (0 where not fitted)."""
    n_masks = 1 if masks is None else len(masks)
    stop = ValStop(X_val, y_val, c_stop, n_masks, len(Cs)) if c_stop > 0 else None
    coef, icpt, fitted = fit_path(solver, X, y, n_classes, Cs, masks, init, stop)
    if stop is None or np.isnan(stop.val[fitted]).any():
        # no rule, or a solver that fitted without asking it (its own, or torch's batch path)
        val = val_scores(X_val, coef, icpt, y_val)
    else:
        val = np.nan_to_num(stop.val, nan=0.0)
    return coef, icpt, fitted, val
