"""cuML backend (optional `gpu` extra): one cuML LogisticRegression fit per (mask, C), on the GPU.

cuML has no batched or path fits, so this loops like the sklearn backend; the torch backend is
usually faster on the same GPU because it batches. Penalty convention: cuML's quasi-Newton
solver (OWL-QN for L1) minimises the *mean* loss plus l1 = 1/C divided by n_samples
(`qn_fit`: `l1 /= X.m`, and `penalty_normalized=True` where the parameter exists). That is
(1 / (C n)) * (||W||_1 + C sum_i loss_i): sklearn's objective up to a constant factor, so C
passes through unchanged. Older cuML releases did not divide by n (then C * n_samples would be
needed): a KKT check per path warns when the solutions do not match sklearn's C.

Objectives and KKT checks run where the design is (CuPy on the GPU), once per mask for all its
Cs: float32 products with the design, float64 only on the (n, n_C, K) logits, and only small
results come back to the host. Array code goes through one module, `xp` (CuPy, or NumPy when
CuPy is absent, as with the scikit-learn stand-in for cuML that CI tests the wiring with).
"""

from __future__ import annotations

import inspect
import logging
from types import ModuleType
from typing import Any, Optional, Sequence

import numpy as np

from ...errors import MissingDependencyError
from .base import (PathFit, PathStop, Solver, check_init, check_inputs, intercept_only, l1_logistic_objective,
                   n_outputs, stop_after)

__all__ = ["CumlSolver", "CUML_MISSING"]

log = logging.getLogger(__name__)

CUML_MISSING = ("--backend cuml needs cuML and a CUDA GPU: pip install 'stcstore[gpu]' "
                "or use --backend torch")


def array_module() -> ModuleType:
    """CuPy when it is installed, else NumPy: the one place array code picks its module."""
    try:
        import cupy

        return cupy
    except ImportError:
        return np


def _import_cuml() -> Any:
    """cuml.linear_model.LogisticRegression, or MissingDependencyError when cuML or a GPU is absent."""
    try:
        from cuml.linear_model import LogisticRegression
    except Exception:  # ImportError, or CUDA runtime errors raised while cuML initialises
        raise MissingDependencyError(CUML_MISSING) from None
    xp = array_module()
    if xp is not np:
        try:
            if xp.cuda.runtime.getDeviceCount() < 1:
                raise MissingDependencyError(CUML_MISSING)
        except MissingDependencyError:
            raise
        except Exception:
            raise MissingDependencyError(CUML_MISSING) from None
    return LogisticRegression


class CumlSolver(Solver):
    """GPU backend through cuML's OWL-QN L1 logistic regression, looped over (mask, C)."""

    name = "cuml"

    def __init__(self, tol: float = 1e-6, max_iter: int = 10000, check_kkt: bool = True) -> None:
        self._LogisticRegression = _import_cuml()
        self.xp = array_module()
        self.device = "cpu" if self.xp is np else "cuda"
        self.tol = tol
        self.max_iter = max_iter
        self.check_kkt = check_kkt
        params = inspect.signature(self._LogisticRegression).parameters
        self._extra = {"penalty_normalized": True} if "penalty_normalized" in params else {}

    def fit_path(self, X: Any, y: np.ndarray, n_classes: int, Cs: Sequence[float],
                 masks: Optional[np.ndarray] = None, init: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 stop: Optional[PathStop] = None) -> PathFit:
        """Fit every (mask, C) problem with one cuML fit each, on the mask's columns."""
        xp = self.xp
        y, Cs_t, masks = check_inputs(X, y, n_classes, Cs, masks)
        # cuML fits every problem from scratch: a starting point is checked, then unused
        check_init(init, masks.shape[0], len(Cs_t), n_outputs(n_classes), masks.shape[1])
        Xg = _to_device(X, xp)
        yg = xp.asarray(y.astype(np.float32))
        n, d = Xg.shape
        k_out = n_outputs(n_classes)
        M, nC = masks.shape[0], len(Cs_t)
        coef = np.zeros((M, nC, k_out, d), dtype=np.float32)
        icpt = np.zeros((M, nC, k_out), dtype=np.float32)
        obj = np.zeros((M, nC))
        n_iter = np.zeros((M, nC), dtype=np.int64)
        fitted = np.zeros((M, nC), dtype=bool)
        for mi in range(M):
            cols = np.flatnonzero(masks[mi])
            Xm = Xg[:, xp.asarray(cols)] if len(cols) < d else Xg
            W = np.zeros((nC, k_out, len(cols)), dtype=np.float32)
            for ci in np.argsort(Cs_t, kind="stable"):     # ascending: a stop rule ends the path early
                if len(cols) == 0:  # no feature allowed: the intercept-only model, as every backend gives
                    icpt[mi, ci] = intercept_only(y, n_classes)
                else:
                    model = self._LogisticRegression(penalty="l1", C=Cs_t[ci], tol=self.tol, max_iter=self.max_iter,
                                                     fit_intercept=True, output_type="numpy", **self._extra)
                    model.fit(Xm, yg)
                    W[ci] = np.asarray(_host(model.coef_), dtype=np.float32).reshape(k_out, len(cols))
                    icpt[mi, ci] = np.asarray(_host(model.intercept_), dtype=np.float32).reshape(k_out)
                    n_iter[mi, ci] = int(np.max(np.asarray(_host(getattr(model, "n_iter_", 0)))))
                    coef[mi, ci][..., cols] = W[ci]
                fitted[mi, ci] = True
                if stop_after(stop, int(ci), mi, coef[mi, ci], icpt[mi, ci]):
                    break
            done = np.flatnonzero(fitted[mi])
            Cs_done = [Cs_t[ci] for ci in done]
            if len(cols) == 0:
                obj[mi, done] = [l1_logistic_objective(np.zeros((n, 1)), y, n_classes, np.zeros((k_out, 1)),
                                                       icpt[mi, ci], Cs_t[ci]) for ci in done]
            else:
                obj[mi, done], scale = _path_checks(xp, Xm, yg, n_classes, W[done], icpt[mi, done], Cs_done)
                if self.check_kkt:
                    _warn_on_scale(scale, Cs_done)
            del Xm
        if k_out > 1:
            icpt -= icpt.mean(axis=-1, keepdims=True)
        return PathFit(coef=coef, intercept=icpt, objective=obj, n_iter=n_iter, Cs=Cs_t,
                       rel_gap=np.full((M, nC), np.nan), fitted=fitted)


def _path_checks(xp: ModuleType, X: Any, y: Any, n_classes: int, W: np.ndarray, b: np.ndarray,
                 Cs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Objectives (n_C,) and the median |C x_j^T r| on nonzero weights (n_C,), for all Cs at once.

    Two float32 products with the design where it lives (logits of every C, then X^T R); the
    losses and residuals are float64 on the small (n, n_C, K) logits. NaN: too few nonzeros.
    """
    nC, k_out, k = W.shape
    Wd = xp.asarray(W.reshape(nC * k_out, k))
    Z = (X @ Wd.T).reshape(-1, nC, k_out).astype(xp.float64) + xp.asarray(b, dtype=xp.float64)
    yi = y.astype(xp.int64)
    if k_out == 1:
        z = Z[..., 0]
        loss = (xp.logaddexp(0.0, z) - yi[:, None] * z).sum(axis=0)
        R = (1 / (1 + xp.exp(-z)) - yi[:, None])[..., None]
    else:
        zmax = Z.max(axis=2, keepdims=True)
        lse = zmax[..., 0] + xp.log(xp.exp(Z - zmax).sum(axis=2))
        loss = (lse - xp.take_along_axis(Z, yi[:, None, None].repeat(nC, axis=1), axis=2)[..., 0]).sum(axis=0)
        P = xp.exp(Z - lse[..., None])
        R = P - (yi[:, None, None] == xp.arange(n_classes)[None, None, :])
    Cd = xp.asarray(np.asarray(Cs, dtype=np.float64))
    obj = xp.abs(Wd.astype(xp.float64)).reshape(nC, -1).sum(axis=1) + Cd * loss
    G = (R.reshape(R.shape[0], nC * k_out).astype(xp.float32).T @ X).reshape(nC, k_out, k)
    G = xp.abs(G.astype(xp.float64)) * Cd[:, None, None]
    nz = xp.asarray(W != 0)
    med = np.full(nC, np.nan)
    counts = _host(nz.reshape(nC, -1).sum(axis=1))
    for ci in range(nC):
        if counts[ci] >= 5:
            med[ci] = float(xp.median(G[ci][nz[ci]]))
    return np.asarray(_host(obj), dtype=np.float64), med


def _warn_on_scale(med: np.ndarray, Cs: Sequence[float]) -> None:
    """Warn when |C x_j^T r| on the nonzero weights is far from 1 (a penalty-scale mismatch)."""
    for m, C in zip(med, Cs):
        if np.isfinite(m) and not 0.5 < m < 2.0:
            log.warning("cuML solution at C=%g has median |C x^T r| = %.3g on its nonzero weights "
                        "(1 for sklearn's convention): this cuML version scales the penalty differently", C, m)


def _to_device(X: Any, xp: ModuleType) -> Any:
    """A float32 C-ordered array of module xp from NumPy, CuPy or a torch tensor (DLPack on the GPU)."""
    if hasattr(X, "detach"):
        X = X.detach()
        if X.is_cuda and xp is not np:
            return xp.from_dlpack(X.float().contiguous())
        X = X.cpu().numpy()
    return xp.ascontiguousarray(xp.asarray(X, dtype=xp.float32))


def _host(a: Any) -> Any:
    if hasattr(a, "get") and not isinstance(a, (np.ndarray, dict)):
        return a.get()
    if hasattr(a, "to_numpy"):
        return a.to_numpy()
    return a
