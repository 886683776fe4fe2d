"""The solver interface, its result type and the NumPy reference maths every backend shares.

Every backend minimises scikit-learn's L1 logistic objective

    ||W||_1 + C * sum_i loss_i,        intercept not penalised,

with one logit for two classes (logistic loss, the logit of class 1) and K logits for K > 2
classes (multinomial softmax cross-entropy, W of shape (K, d)).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ...errors import ConfigError, DataError, LabelError

__all__ = [
    "PathFit",
    "PathStop",
    "Solver",
    "n_outputs",
    "l1_logistic_objective",
    "decision_function",
    "predict_labels",
    "check_inputs",
    "check_init",
    "intercept_only",
    "stop_after",
]


@dataclass
class PathFit:
    """Solutions of every (mask, C) problem of one `fit_path` call, in the order the Cs were given."""

    coef: np.ndarray       # (n_masks, n_C, n_out, d) float32
    intercept: np.ndarray  # (n_masks, n_C, n_out) float32
    objective: np.ndarray  # (n_masks, n_C) float64, sklearn-convention objective at the solution
    n_iter: np.ndarray     # (n_masks, n_C) int
    Cs: tuple[float, ...]
    # relative duality gap (primal - dual) / primal where the backend certifies it, else NaN
    rel_gap: Optional[np.ndarray] = field(default=None)
    # True where a problem stopped on a settled objective rather than on the gap (torch Newton)
    settled: Optional[np.ndarray] = field(default=None)
    # (n_masks, n_C) False where a `stop` rule ended the mask's path before this C (not fitted,
    # coef and intercept zero); None: every problem was fitted
    fitted: Optional[np.ndarray] = field(default=None)


# A C-path stopping rule (the search's): after some masks were fitted at one C, called with that
# C's position in Cs, the masks' indices and their coef (p, n_out, d) and intercept (p, n_out);
# returns a bool (p,), True for a mask whose larger Cs are not to be fitted. Backends that honour
# it walk the Cs in ascending order.
PathStop = Callable[[int, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class Solver(ABC):
    """An L1 logistic-regression backend that fits a whole C path (and nested feature masks)."""

    name: str = "solver"
    device: str = "cpu"
    # whether fit_path uses `init` (callers skip building starting points otherwise)
    uses_init: bool = False
    # whether fit_path takes a lazy StandardizedColumns design without building it whole
    streams_designs: bool = False

    @abstractmethod
    def fit_path(self, X: Any, y: np.ndarray, n_classes: int, Cs: Sequence[float],
                 masks: Optional[np.ndarray] = None, init: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 stop: Optional[PathStop] = None) -> PathFit:
        """Fit every (mask, C) problem on standardised X (n, d) and labels y in 0..n_classes-1.

        `init` = (coef (n_masks, n_C, n_out, d), intercept (n_masks, n_C, n_out)) is an optional
        starting point (e.g. the solutions of a nearby problem); it changes the work done, never
        the optimum, and a backend without warm starts ignores it. `stop` (PathStop) may end a
        mask's path early: its larger Cs are then left unfitted (PathFit.fitted).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r})"


def n_outputs(n_classes: int) -> int:
    """Number of logits: 1 for a binary problem, K for K > 2 classes."""
    return 1 if n_classes == 2 else int(n_classes)


def check_inputs(X: Any, y: Any, n_classes: int, Cs: Sequence[float], masks: Optional[Any]
                 ) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Validate fit_path arguments; return y as int64, Cs as floats and masks as (n_masks, d) bool."""
    shape = tuple(getattr(X, "shape", ()))
    if len(shape) != 2:
        raise DataError(f"X must be a 2-D (n_samples, n_features) array, got shape {shape}")
    n, d = shape
    if n < 2 or d < 1:
        raise DataError(f"X has shape {shape}: need at least 2 rows and 1 feature")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise LabelError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    y_arr = np.asarray(y)
    if y_arr.ndim != 1 or y_arr.shape[0] != n:
        raise LabelError(f"y must be 1-D with one label per row of X ({n}), got shape {y_arr.shape}")
    if y_arr.dtype.kind not in "iub":
        if y_arr.dtype.kind == "f" and np.all(np.isfinite(y_arr)) and np.all(y_arr == np.round(y_arr)):
            y_arr = y_arr.astype(np.int64)
        else:
            raise LabelError(f"y must hold integer labels 0..{n_classes - 1}, got dtype {y_arr.dtype}")
    y_arr = y_arr.astype(np.int64)
    if y_arr.min() < 0 or y_arr.max() >= n_classes:
        raise LabelError(f"y has labels outside 0..{n_classes - 1} (min {y_arr.min()}, max {y_arr.max()})")
    counts = np.bincount(y_arr, minlength=n_classes)
    if np.any(counts == 0):
        # with an absent class the optimal intercept is infinite: no solution exists
        raise LabelError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training rows: "
                         "every class needs at least one")
    try:
        Cs_t = tuple(float(c) for c in Cs)
    except (TypeError, ValueError):
        raise ConfigError(f"Cs must be a sequence of positive numbers, got {Cs!r}") from None
    if not Cs_t or any(not np.isfinite(c) or c <= 0 for c in Cs_t):
        raise ConfigError(f"Cs must be positive finite numbers, got {Cs_t}")
    if masks is None:
        m = np.ones((1, d), dtype=bool)
    else:
        m = np.asarray(masks)
        if m.ndim == 1:
            m = m[None]
        if m.ndim != 2 or m.shape[1] != d:
            raise DataError(f"masks must have shape (n_masks, {d}), got {np.shape(masks)}")
        if m.dtype != bool:
            if m.dtype.kind not in "iub" or not np.isin(m, (0, 1)).all():
                raise DataError(f"masks must be boolean, got dtype {m.dtype}")
            m = m.astype(bool)
        if m.shape[0] == 0:
            raise DataError("masks is empty: give at least one mask, or None for all features")
    return y_arr, Cs_t, np.ascontiguousarray(m)


def check_init(init: Optional[Any], n_masks: int, n_C: int, n_out: int, d: int
               ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Validate a fit_path starting point; return it as float32 arrays (or None)."""
    if init is None:
        return None
    try:
        coef, icpt = (np.asarray(a, dtype=np.float32) for a in init)
    except (TypeError, ValueError):
        raise DataError("init must be a (coef, intercept) pair of arrays") from None
    if coef.shape != (n_masks, n_C, n_out, d) or icpt.shape != (n_masks, n_C, n_out):
        raise DataError(f"init has shapes {coef.shape} and {icpt.shape}: expected {(n_masks, n_C, n_out, d)} "
                        f"and {(n_masks, n_C, n_out)}")
    if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(icpt))):
        raise DataError("init has NaN or infinite values")
    return coef, icpt


def stop_after(stop: Optional[PathStop], ci: int, mi: int, coef: np.ndarray, icpt: np.ndarray) -> bool:
    """Whether `stop` ends mask mi's path after the C at index ci (its solution: coef (n_out, d), icpt (n_out,))."""
    return stop is not None and bool(np.asarray(stop(ci, np.array([mi]), coef[None], icpt[None]))[0])


def intercept_only(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Optimal intercept with no features: the log-odds (binary) or centred log-priors."""
    p = np.bincount(y, minlength=n_classes) / len(y)
    if n_classes == 2:
        return np.array([np.log(p[1] / p[0])])
    lp = np.log(p)
    return lp - lp.mean()


def _as_2d_coef(coef: np.ndarray, intercept: Any) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(coef, dtype=np.float64)
    if w.ndim == 1:
        w = w[None]
    b = np.atleast_1d(np.asarray(intercept, dtype=np.float64)).reshape(-1)
    if w.ndim != 2 or b.shape[0] != w.shape[0]:
        raise DataError(f"coef {np.shape(coef)} and intercept {np.shape(intercept)} do not fit: "
                        "expected (n_out, d) and (n_out,)")
    return w, b


def decision_function(X: np.ndarray, coef: np.ndarray, intercept: Any) -> np.ndarray:
    """Logits (n, n_out) of a fitted probe: X @ coef.T + intercept."""
    w, b = _as_2d_coef(coef, intercept)
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != w.shape[1]:
        raise DataError(f"X has shape {X.shape}, coef expects {w.shape[1]} features")
    dt = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    return X.astype(dt, copy=False) @ w.T.astype(dt) + b.astype(dt)


def predict_labels(X: np.ndarray, coef: np.ndarray, intercept: Any) -> np.ndarray:
    """Predicted labels: logit > 0 for one output, argmax for K outputs."""
    scores = decision_function(X, coef, intercept)
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(np.int64)
    return np.argmax(scores, axis=1).astype(np.int64)


def l1_logistic_objective(X: np.ndarray, y: np.ndarray, n_classes: int, coef: np.ndarray,
                          intercept: Any, C: float) -> float:
    """sklearn's objective ||W||_1 + C * sum_i loss_i in float64 (intercept unpenalised)."""
    w, b = _as_2d_coef(coef, intercept)
    if w.shape[0] != n_outputs(n_classes):
        raise DataError(f"coef has {w.shape[0]} rows, expected {n_outputs(n_classes)} for {n_classes} classes")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    z = X @ w.T + b
    if w.shape[0] == 1:
        z1 = z[:, 0]
        loss = np.logaddexp(0.0, z1) - y * z1   # log(1 + e^z) - y z, stable for large |z|
    else:
        zmax = z.max(axis=1, keepdims=True)
        lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        loss = lse - z[np.arange(len(y)), y]
    return float(np.abs(w).sum() + C * loss.sum())
