"""cuml.linear_model.LogisticRegression for the stand-in: scikit-learn's L1 fits behind cuML's names.

cuML (penalty_normalized) minimises (1 / (C n)) (||W||_1 + C sum_i loss_i), whose minimiser is
scikit-learn's at the same C: liblinear for two classes (its penalised intercept made negligible
by a large intercept_scaling, as stcstore's sklearn backend does), saga for more.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression as _SkLogisticRegression


class LogisticRegression:
    """cuML's L1 logistic regression, as far as stcstore uses it."""

    def __init__(self, *, penalty: str = "l2", C: float = 1.0, tol: float = 1e-4, max_iter: int = 1000,
                 fit_intercept: bool = True, output_type: str = "numpy", penalty_normalized: bool = True,
                 verbose: bool = False) -> None:
        if penalty != "l1":
            raise NotImplementedError("the cuML stand-in implements penalty='l1' only")
        self.penalty, self.C, self.tol, self.max_iter = penalty, C, tol, max_iter
        self.fit_intercept, self.output_type, self.penalty_normalized = fit_intercept, output_type, penalty_normalized

    def fit(self, X, y) -> "LogisticRegression":
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(np.int64)
        if len(np.unique(y)) == 2:
            model = _SkLogisticRegression(C=self.C, l1_ratio=1.0, solver="liblinear", tol=min(self.tol, 1e-6),
                                          max_iter=self.max_iter, random_state=0,
                                          intercept_scaling=100.0 / np.sqrt(min(self.C, 1.0)))
        else:
            model = _SkLogisticRegression(C=self.C, l1_ratio=1.0, solver="saga", tol=min(self.tol, 1e-6),
                                          max_iter=self.max_iter, random_state=0)
        model.fit(X, y)
        # cuML returns float32 arrays: (n_out, d) weights and (n_out,) intercepts
        self.coef_ = model.coef_.astype(np.float32)
        self.intercept_ = model.intercept_.astype(np.float32)
        self.n_iter_ = np.asarray(model.n_iter_)
        return self
