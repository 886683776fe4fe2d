"""cuML backend (optional `gpu` extra): one cuML LogisticRegression fit per (mask, C), on the GPU.

cuML has no batched or path fits, so this loops like the sklearn backend; the torch backend is
usually faster on the same GPU because it batches. Penalty convention: cuML's quasi-Newton
solver (OWL-QN for L1) minimises the *mean* loss plus l1 = 1/C divided by n_samples
(`qn_fit`: `l1 /= X.m`, and `penalty_normalized=True` where the parameter exists). That is
(1 / (C n)) * (||W||_1 + C sum_i loss_i): sklearn's objective up to a constant factor, so C
passes through unchanged. Older cuML releases did not divide by n (then C * n_samples would be
needed): a KKT check after each fit warns when the solution does not match sklearn's C.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Optional, Sequence

import numpy as np

from ...errors import MissingDependencyError
from .base import PathFit, Solver, check_init, check_inputs, l1_logistic_objective, n_outputs

__all__ = ["CumlSolver", "CUML_MISSING"]

log = logging.getLogger(__name__)

CUML_MISSING = ("--backend cuml needs cuML and a CUDA GPU: pip install 'stcstore[gpu]' "
                "or use --backend torch")


def _import_cuml() -> Any:
    """cuml.linear_model.LogisticRegression, or MissingDependencyError when cuML or a GPU is absent."""
    try:
        from cuml.linear_model import LogisticRegression
    except Exception:  # ImportError, or CUDA runtime errors raised while cuML initialises
        raise MissingDependencyError(CUML_MISSING) from None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise MissingDependencyError(CUML_MISSING)
    except MissingDependencyError:
        raise
    except Exception:
        raise MissingDependencyError(CUML_MISSING) from None
    return LogisticRegression


class CumlSolver(Solver):
    """GPU backend through cuML's OWL-QN L1 logistic regression, looped over (mask, C)."""

    name = "cuml"
    device = "cuda"

    def __init__(self, tol: float = 1e-6, max_iter: int = 10000, check_kkt: bool = True) -> None:
        self._LogisticRegression = _import_cuml()
        self.tol = tol
        self.max_iter = max_iter
        self.check_kkt = check_kkt
        params = inspect.signature(self._LogisticRegression).parameters
        self._extra = {"penalty_normalized": True} if "penalty_normalized" in params else {}

    def fit_path(self, X: Any, y: np.ndarray, n_classes: int, Cs: Sequence[float],
                 masks: Optional[np.ndarray] = None, init: Optional[tuple[np.ndarray, np.ndarray]] = None
                 ) -> PathFit:
        """Fit every (mask, C) problem with one cuML fit each, on the mask's columns."""
        import cupy as cp

        y, Cs_t, masks = check_inputs(X, y, n_classes, Cs, masks)
        # cuML fits every problem from scratch: a starting point is checked, then unused
        check_init(init, masks.shape[0], len(Cs_t), n_outputs(n_classes), masks.shape[1])
        Xg = _to_cupy(X)
        yg = cp.asarray(y.astype(np.float32))
        n, d = Xg.shape
        k_out = n_outputs(n_classes)
        M, nC = masks.shape[0], len(Cs_t)
        coef = np.zeros((M, nC, k_out, d), dtype=np.float32)
        icpt = np.zeros((M, nC, k_out), dtype=np.float32)
        obj = np.zeros((M, nC))
        n_iter = np.zeros((M, nC), dtype=np.int64)
        X_host: Optional[np.ndarray] = None
        for mi in range(M):
            cols = np.flatnonzero(masks[mi])
            if len(cols) == 0:
                raise MissingDependencyError("the cuml backend cannot fit an empty mask: use --backend torch")
            Xm = Xg[:, cp.asarray(cols)] if len(cols) < d else Xg
            for ci, C in enumerate(Cs_t):
                model = self._LogisticRegression(penalty="l1", C=C, tol=self.tol, max_iter=self.max_iter,
                                                 fit_intercept=True, output_type="numpy", **self._extra)
                model.fit(Xm, yg)
                w = np.asarray(_host(model.coef_), dtype=np.float32).reshape(k_out, len(cols))
                b = np.asarray(_host(model.intercept_), dtype=np.float32).reshape(k_out)
                coef[mi, ci][:, cols] = w
                icpt[mi, ci] = b
                n_iter[mi, ci] = int(np.max(np.asarray(_host(getattr(model, "n_iter_", 0)))))
                if X_host is None:
                    X_host = cp.asnumpy(Xg)
                obj[mi, ci] = l1_logistic_objective(X_host[:, cols], y, n_classes, w, b, C)
                if self.check_kkt:
                    _check_kkt(X_host[:, cols], y, n_classes, w, b, C)
        if k_out > 1:
            icpt -= icpt.mean(axis=-1, keepdims=True)
        return PathFit(coef=coef, intercept=icpt, objective=obj, n_iter=n_iter, Cs=Cs_t,
                       rel_gap=np.full((M, nC), np.nan))


def _check_kkt(X: np.ndarray, y: np.ndarray, n_classes: int, w: np.ndarray, b: np.ndarray, C: float) -> None:
    """Warn when |C x_j^T r| on the nonzero weights is far from 1 (a penalty-scale mismatch)."""
    z = X.astype(np.float64) @ w.T.astype(np.float64) + b
    if w.shape[0] == 1:
        r = 1 / (1 + np.exp(-z)) - y[:, None]
    else:
        p = np.exp(z - z.max(axis=1, keepdims=True))
        r = p / p.sum(axis=1, keepdims=True) - np.eye(n_classes)[y]
    g = C * (r.T @ X)
    nz = w != 0
    if nz.sum() >= 5:
        med = float(np.median(np.abs(g[nz])))
        if not 0.5 < med < 2.0:
            log.warning("cuML solution at C=%g has median |C x^T r| = %.3g on its nonzero weights "
                        "(1 for sklearn's convention): this cuML version scales the penalty differently",
                        C, med)


def _to_cupy(X: Any) -> Any:
    """A float32 CuPy array from NumPy, CuPy or a torch tensor (DLPack, no copy on the GPU)."""
    import cupy as cp

    if hasattr(X, "detach"):
        X = X.detach()
        if X.is_cuda:
            return cp.from_dlpack(X.float().contiguous())
        X = X.cpu().numpy()
    return cp.ascontiguousarray(cp.asarray(X, dtype=cp.float32))


def _host(a: Any) -> Any:
    if hasattr(a, "get") and not isinstance(a, (np.ndarray, dict)):
        return a.get()
    if hasattr(a, "to_numpy"):
        return a.to_numpy()
    return a
