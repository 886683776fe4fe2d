"""scikit-learn backend: the CPU reference, one LogisticRegression fit per (mask, C).

Binary problems use liblinear (coordinate-descent Newton, fast and accurate for L1). liblinear
penalises its intercept (the weight of a synthetic constant feature s): the penalty |b| / s
shifts the optimality condition of the intercept from sum_i r_i = 0 to |sum_i r_i| = 1 / (s C).
s = 100 alone moved the intercept by 0.007 at C = 0.01 (a shift of 1 residual) and flipped
borderline predictions; s far larger than needed slows liblinear's convergence (s = 1e4 at C = 1
left 7e-5 relative objective error on MiniLM features with the default tol). s = 100 / sqrt(C)
(C <= 1) keeps the shift at 0.01 / sqrt(C) residuals, a 1e-4 intercept change on 3,600 rows.
K > 2 classes use saga, which minimises the multinomial loss with an unpenalised intercept
(liblinear is one-vs-rest only). Both get a fixed random_state: liblinear permutes coordinates.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from ...errors import DataError, MissingDependencyError
from .base import (PathFit, PathStop, Solver, check_init, check_inputs, intercept_only, l1_logistic_objective,
                   n_outputs, stop_after)

__all__ = ["SklearnSolver"]

log = logging.getLogger(__name__)


class SklearnSolver(Solver):
    """CPU reference backend: scikit-learn liblinear (binary) or saga (multinomial), looped."""

    name = "sklearn"
    device = "cpu"

    def __init__(self, tol: float = 1e-4, saga_tol: float = 1e-5, max_iter: int = 1000,
                 saga_max_iter: int = 5000, intercept_scaling: float = 100.0, random_state: int = 0) -> None:
        try:
            import sklearn  # noqa: F401  (fail here, with a clear message, not mid-search)
        except ImportError:
            raise MissingDependencyError("--backend sklearn needs scikit-learn: pip install scikit-learn") from None
        self.tol = tol
        self.saga_tol = saga_tol
        self.max_iter = max_iter
        self.saga_max_iter = saga_max_iter
        self.intercept_scaling = intercept_scaling
        self.random_state = random_state

    def _model(self, C: float, binary: bool) -> Any:
        from sklearn.linear_model import LogisticRegression

        # l1_ratio=1 is the L1 penalty; `penalty=` is deprecated since scikit-learn 1.8
        if binary:
            return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", tol=self.tol, max_iter=self.max_iter,
                                      intercept_scaling=self.intercept_scaling / np.sqrt(min(C, 1.0)),
                                      random_state=self.random_state)
        return LogisticRegression(C=C, l1_ratio=1.0, solver="saga", tol=self.saga_tol,
                                  max_iter=self.saga_max_iter, random_state=self.random_state)

    def fit_path(self, X: Any, y: np.ndarray, n_classes: int, Cs: Sequence[float],
                 masks: Optional[np.ndarray] = None, init: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 stop: Optional[PathStop] = None) -> PathFit:
        """Fit every (mask, C) problem with one scikit-learn fit each, on the mask's columns."""
        y, Cs_t, masks = check_inputs(X, y, n_classes, Cs, masks)
        # scikit-learn fits every problem from scratch: a starting point is checked, then unused
        check_init(init, masks.shape[0], len(Cs_t), n_outputs(n_classes), masks.shape[1])
        X = _to_numpy(X)
        if not np.all(np.isfinite(X)):
            raise DataError("X has NaN or infinite values: check the stored activations")
        n, d = X.shape
        k_out = n_outputs(n_classes)
        M, nC = masks.shape[0], len(Cs_t)
        coef = np.zeros((M, nC, k_out, d), dtype=np.float32)
        icpt = np.zeros((M, nC, k_out), dtype=np.float32)
        obj = np.zeros((M, nC), dtype=np.float64)
        n_iter = np.zeros((M, nC), dtype=np.int64)
        fitted = np.zeros((M, nC), dtype=bool)
        for mi in range(M):
            cols = np.flatnonzero(masks[mi])
            # liblinear and saga work in float64 C order: convert once per mask, not once per C
            Xm = np.ascontiguousarray(X[:, cols] if len(cols) < d else X, dtype=np.float64)
            for ci in np.argsort(Cs_t, kind="stable"):     # ascending: a stop rule ends the path early
                C = Cs_t[ci]
                if len(cols) == 0:  # no feature allowed: the intercept-only model
                    b = intercept_only(y, n_classes)
                    icpt[mi, ci] = b
                    obj[mi, ci] = l1_logistic_objective(np.zeros((n, 1)), y, n_classes,
                                                        np.zeros((k_out, 1)), b, C)
                else:
                    model = self._model(C, k_out == 1)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        model.fit(Xm, y)
                    for w in caught:  # ConvergenceWarning and the like go to the log, not stderr
                        log.warning("scikit-learn (mask %d, C=%g): %s", mi, C, w.message)
                    coef[mi, ci][:, cols] = model.coef_
                    icpt[mi, ci] = model.intercept_
                    n_iter[mi, ci] = int(np.max(model.n_iter_))
                    obj[mi, ci] = l1_logistic_objective(Xm, y, n_classes, model.coef_, model.intercept_, C)
                fitted[mi, ci] = True
                if stop_after(stop, int(ci), mi, coef[mi, ci], icpt[mi, ci]):
                    break
            del Xm
        return PathFit(coef=coef, intercept=icpt, objective=obj, n_iter=n_iter, Cs=Cs_t,
                       rel_gap=np.full((M, nC), np.nan), fitted=fitted)


def _to_numpy(X: Any) -> np.ndarray:
    """A NumPy float array from NumPy, torch (any device) or CuPy input."""
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    elif hasattr(X, "get") and not isinstance(X, np.ndarray):
        X = X.get()
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    return X
