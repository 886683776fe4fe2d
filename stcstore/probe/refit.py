"""Refitting a chosen configuration on train + val: same features, same C, the standardisation
recomputed from train + val; the refit model is the one a user keeps, scored once on test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .blocks import fit_path
from .splits import SplitPlan
from .standardize import ROW_CHUNK, StreamingScaler, standardize_columns

__all__ = ["Refit", "refit", "refit_buffers"]


@dataclass
class Refit:
    """A model refitted on train + val, restricted to its nonzero columns."""

    cols: np.ndarray          # (F_nz,) positions among the columns given to `refit`
    coef: np.ndarray          # (n_out, F_nz)
    intercept: np.ndarray     # (n_out,)
    mean: np.ndarray          # (F_nz,) float64, train + val
    scale: np.ndarray         # (F_nz,)
    test_decision: np.ndarray  # (n_test, n_out)


def refit_buffers(plan: SplitPlan, n_cols: int, raw_dtype: Any) -> tuple[np.ndarray, tuple]:
    """The train + val matrix (float32) and the (train, val, test) arrays a reader fills for `refit`.

    Train and val rows are read straight into one float32 matrix that `refit` standardises in
    place, so no raw copy of them exists beside it.
    """
    n_tr = plan.n("train")
    X = np.empty((n_tr + plan.n("val"), n_cols), dtype=np.float32)
    return X, (X[:n_tr], X[n_tr:], np.empty((plan.n("test"), n_cols), dtype=raw_dtype))


def refit(solver: Any, X: np.ndarray, te: np.ndarray, plan: SplitPlan, C: float) -> Refit:
    """Fit X (train then val rows, raw values, standardised here in place) at one C; decide on raw test rows."""
    scaler = StreamingScaler().partial_fit(X)
    mean, scale = scaler.mean_, scaler.scale_
    # the same arithmetic as every other standardisation (transform_ == standardize_columns)
    scaler.transform_(X, ROW_CHUNK)
    y = np.concatenate([plan.y["train"], plan.y["val"]])
    coef, icpt = fit_path(solver, X, y, plan.n_classes, [C], None)
    coef, icpt = coef[0, 0], icpt[0, 0]
    nz = np.flatnonzero(np.any(coef != 0, axis=0))
    Z = standardize_columns(te, nz, mean[nz], scale[nz])
    return Refit(cols=nz, coef=coef[:, nz].copy(), intercept=icpt.copy(), mean=mean[nz], scale=scale[nz],
                 test_decision=Z @ coef[:, nz].T + icpt)
