"""torch backend: all (mask, C) problems of a path in one batched solver, on CPU or CUDA.

Two algorithms share the data, the objective and the stopping test:

* ``newton`` (default up to 8 logits): proximal Newton on working sets, in the manner of
  newGLMNET (liblinear's L1 solver). Each step builds the exact Hessian of the loss on the
  working set (the nonzero weights plus the worst KKT violators, 1.25 times the support),
  minimises the L1-penalised quadratic model (accelerated proximal-gradient iterations find
  the support, then one Cholesky solve on that support finishes it exactly), and takes an
  Armijo step. Hessians are matrix-matrix products (compute bound) where first-order
  methods read all of X per iteration (memory bound), and on ill-conditioned activations
  Newton needs 3-9 steps per C where FISTA needs hundreds. A problem Newton leaves far
  above tol (no descent along an inexact direction) is finished by FISTA.
* ``fista``: FISTA with per-problem backtracking, gradient-based restart and one batched
  matmul each way per iteration. Used for many classes, where the Hessian grows with K^2.

What is batched: every pass over X (logits of all problems in one matmul, gradients in one,
line-search directions in one); the small dense models are solved problem by problem at
their own size. The C path is warm-started (smallest C first, all masks of one C together,
each from the better of the previous C's solution and the caller's `init`), and each
problem stops on its own relative duality gap (primal - dual) / primal <= tol, with a dual
point built from its residuals at no extra pass over X; converged problems leave the batch.
Float32 maths; objectives, duals and line-search differences in float64.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError, DataError
from .base import PathFit, Solver, check_init, check_inputs, n_outputs

__all__ = ["TorchSolver"]

log = logging.getLogger(__name__)

METHODS = ("auto", "newton", "fista")
PATHS = ("warm", "batch")
# above this many logits the K^2 Hessian blocks cost more than first-order steps
_NEWTON_MAX_OUT = 8
# largest expected Newton system (K x working set): 8192^2 float32 is 256 MiB
_NEWTON_MAX_COORDS = 8192


@dataclass
class _Data:
    """The design shared by every problem: X, labels and the constants the dual point needs."""

    X: torch.Tensor        # (n, d) float32
    y: torch.Tensor        # (n,) int64
    Y: torch.Tensor        # (n, K) float32: one-hot, or y itself for one logit
    K: int                 # number of logits
    colsum: torch.Tensor   # (d,) float64, X^T 1
    XtY: torch.Tensor      # (K, d) float64, (X^T Y)^T
    ybar: torch.Tensor     # (K,) float64, mean of Y's columns

    @property
    def binary(self) -> bool:
        return self.K == 1


@dataclass
class _Result:
    W: torch.Tensor         # (P, K, d)
    b: torch.Tensor         # (P, K)
    objective: np.ndarray   # (P,) float64
    gap: np.ndarray         # (P,) float64, relative
    n_iter: np.ndarray      # (P,) int


class TorchSolver(Solver):
    """Batched L1 logistic regression in torch (proximal Newton or FISTA), CPU or CUDA."""

    name = "torch"
    uses_init = True

    def __init__(self, device: str = "cpu", tol: float = 1e-4, method: str = "auto", path: str = "warm",
                 max_iter: Optional[int] = None, min_working_set: int = 128, max_working_set: int = 4096,
                 ws_growth: float = 1.25, inner_max_iter: int = 100, inner_rtol: float = 0.1) -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown torch solver method {method!r}: choose from {','.join(METHODS)}")
        if path not in PATHS:
            raise ConfigError(f"unknown torch solver path {path!r}: choose from {','.join(PATHS)}")
        if not 0 < tol < 1:
            raise ConfigError(f"tol must be in (0, 1), got {tol}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda asked for, but torch sees no CUDA GPU: use --device cpu")
        self._device = dev
        self.device = dev.type
        self.tol = float(tol)
        self.method = method
        self.path = path
        self.max_iter = max_iter
        self.min_working_set = int(min_working_set)
        self.max_working_set = int(max_working_set)
        self.ws_growth = float(ws_growth)
        self.inner_max_iter = int(inner_max_iter)
        self.inner_rtol = float(inner_rtol)

    def __repr__(self) -> str:
        return f"TorchSolver(device={self.device!r}, method={self.method!r}, tol={self.tol})"

    def _method_for(self, K: int, n: int, d: int) -> str:
        if self.method != "auto":
            return self.method
        # Newton's Hessian has (K * working-set)^2 entries and K (K + 1) / 2 GEMMs per step; the
        # working set rarely exceeds n (an L1 solution has at most about n nonzeros per logit)
        return "newton" if K <= _NEWTON_MAX_OUT and K * min(d, n) <= _NEWTON_MAX_COORDS else "fista"

    def fit_path(self, X: Any, y: np.ndarray, n_classes: int, Cs: Sequence[float],
                 masks: Optional[np.ndarray] = None, init: Optional[tuple[np.ndarray, np.ndarray]] = None
                 ) -> PathFit:
        """Fit every (mask, C) problem; solutions are exact to the relative duality gap `tol`."""
        y_np, Cs_t, masks_np = check_inputs(X, y, n_classes, Cs, masks)
        init = check_init(init, masks_np.shape[0], len(Cs_t), n_outputs(n_classes), masks_np.shape[1])
        t0 = time.perf_counter()
        data = _prepare(X, y_np, n_classes, self._device)
        K, d = data.K, data.X.shape[1]
        method = self._method_for(K, data.X.shape[0], d)
        engine = _solve_newton if method == "newton" else _solve_fista
        max_iter = self.max_iter or (100 if method == "newton" else 20000)
        M, nC = masks_np.shape[0], len(Cs_t)
        masks_t = torch.as_tensor(masks_np, device=self._device)
        coef = np.zeros((M, nC, K, d), dtype=np.float32)
        icpt = np.zeros((M, nC, K), dtype=np.float32)
        obj = np.zeros((M, nC))
        gap = np.zeros((M, nC))
        n_iter = np.zeros((M, nC), dtype=np.int64)
        b_prior = _prior_intercept(data)
        if init is not None:
            init_W = torch.as_tensor(init[0], device=self._device) * masks_t[:, None, None, :]
            init_b = torch.as_tensor(init[1], device=self._device)
        opts = dict(tol=self.tol, max_iter=max_iter, min_ws=self.min_working_set, max_ws=self.max_working_set,
                    ws_growth=self.ws_growth, inner_max_iter=self.inner_max_iter, inner_rtol=self.inner_rtol)
        if self.path == "warm":
            # smallest C first: its solution is sparse and cheap, and starts the next C close by
            W = torch.zeros((M, K, d), device=self._device)
            b = b_prior.expand(M, K).clone()
            for ci in np.argsort(Cs_t, kind="stable"):
                C = torch.full((M,), Cs_t[ci], dtype=torch.float64, device=self._device)
                if init is not None:
                    W, b = _better_start(data, C, (W, b), (init_W[:, ci], init_b[:, ci]))
                res = engine(data, C, masks_t, W, b, **opts)
                W, b = res.W, res.b
                coef[:, ci], icpt[:, ci] = _np(res.W), _np(res.b)
                obj[:, ci], gap[:, ci], n_iter[:, ci] = res.objective, res.gap, res.n_iter
        else:
            P = M * nC
            C = torch.tensor([Cs_t[ci] for _ in range(M) for ci in range(nC)], dtype=torch.float64,
                             device=self._device)
            mk = masks_t.repeat_interleave(nC, dim=0)
            if init is None:
                W0, b0 = torch.zeros((P, K, d), device=self._device), b_prior.expand(P, K).clone()
            else:
                W0, b0 = init_W.reshape(P, K, d).clone(), init_b.reshape(P, K).clone()
            res = engine(data, C, mk, W0, b0, **opts)
            coef[:] = _np(res.W).reshape(M, nC, K, d)
            icpt[:] = _np(res.b).reshape(M, nC, K)
            obj[:], gap[:], n_iter[:] = (res.objective.reshape(M, nC), res.gap.reshape(M, nC),
                                         res.n_iter.reshape(M, nC))
        if K > 1:
            # the softmax is invariant to a common shift of the intercepts: report them centred
            icpt -= icpt.mean(axis=-1, keepdims=True)
        log.debug("torch %s path: %d masks x %d C on %s in %.2fs, iterations %s, max rel gap %.1e",
                  method, M, nC, self.device, time.perf_counter() - t0, n_iter.tolist(), float(np.max(gap)))
        return PathFit(coef=coef, intercept=icpt, objective=obj, n_iter=n_iter, Cs=Cs_t, rel_gap=gap)


# ----------------------------------------------------------------------------- shared maths


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _to_tensor(X: Any, device: torch.device) -> torch.Tensor:
    """X as a float32 tensor on `device`; CuPy arrays arrive through DLPack without a copy."""
    if isinstance(X, torch.Tensor):
        t = X
    elif isinstance(X, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    elif hasattr(X, "__dlpack__"):
        t = torch.from_dlpack(X)
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(X), dtype=np.float32))
    return t.to(device=device, dtype=torch.float32).contiguous()


def _prepare(X: Any, y: np.ndarray, n_classes: int, device: torch.device) -> _Data:
    Xt = _to_tensor(X, device)
    if not all(bool(torch.isfinite(c).all()) for c in Xt.split(1024)):
        raise DataError("X has NaN or infinite values (in float32): check the stored activations")
    yt = torch.as_tensor(y, device=device)
    K = n_outputs(n_classes)
    Y = yt[:, None].float() if K == 1 else F.one_hot(yt, n_classes).float()
    # row chunks: a float64 copy of the whole X would double the probe's peak memory
    colsum = sum(c.sum(0, dtype=torch.float64) for c in Xt.split(1024))
    XtY = (Y.T @ Xt).double()
    return _Data(X=Xt, y=yt, Y=Y, K=K, colsum=colsum, XtY=XtY, ybar=Y.double().mean(0))


def _prior_intercept(data: _Data) -> torch.Tensor:
    """The intercept of the all-zero model: a good start for the smallest C."""
    p = data.ybar.clamp(1e-12, 1 - 1e-12)
    if data.binary:
        return torch.log(p / (1 - p)).float()
    lp = torch.log(p)
    return (lp - lp.mean()).float()


def _better_start(data: _Data, C: torch.Tensor, a: tuple[torch.Tensor, torch.Tensor],
                  b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per problem, whichever of two (masked) starting points has the lower objective."""
    objs = [_primal(W, _probs_loss(data, _logits(data, W, bb))[1], C) for W, bb in (a, b)]
    pick = objs[1] < objs[0]
    return (torch.where(pick[:, None, None], b[0], a[0]).contiguous(),
            torch.where(pick[:, None], b[1], a[1]).contiguous())


def _logits(data: _Data, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits (n, P, K) of P problems with one matmul against the shared X."""
    P, K, d = W.shape
    return (data.X @ W.reshape(P * K, d).T).view(-1, P, K) + b


def _probs_loss(data: _Data, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (n, P, K) and summed loss per problem (P,) in float64."""
    if data.binary:
        z = Z[..., 0]
        loss = (F.softplus(z) - data.Y * z).sum(0, dtype=torch.float64)
        return torch.sigmoid(z)[..., None], loss
    lse = torch.logsumexp(Z, dim=-1)
    zy = Z.gather(-1, data.y[:, None, None].expand(-1, Z.shape[1], 1))[..., 0]
    loss = (lse - zy).sum(0, dtype=torch.float64)
    return torch.exp(Z - lse[..., None]), loss


def _xt(data: _Data, R: torch.Tensor) -> torch.Tensor:
    """X^T R for residuals (n, P, K): (P, K, d), again one matmul."""
    n, P, K = R.shape
    return (R.reshape(n, P * K).T @ data.X).view(P, K, -1)


def _dual(data: _Data, A: torch.Tensor, G0: torch.Tensor, C: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A dual-feasible objective (P,) float64 from probabilities A and G0 = X^T (A - Y).

    The dual of min ||W||_1 + C sum_i loss_i is max -C sum_i negentropy(alpha_i) over rows alpha_i
    in the simplex (binary: [0, 1]) with sum_i (alpha_i - y_i) = 0 (the free intercept) and
    C |X^T (alpha - Y)| <= 1 on the mask. At the optimum alpha = A; from any A: shift to satisfy
    the intercept constraint, mix with the class frequencies until nonnegative, then shrink
    towards Y until the box constraint holds. Every step is a rank-one update of G0, so the
    dual costs no extra pass over X.
    """
    A = A.double()
    Y = data.Y.double()[:, None, :]
    E = data.ybar                                        # (K,) every class present: E > 0
    m = (A - Y).mean(0)                                  # (P, K)
    A1 = A - m
    neg = (-A1).clamp(min=0)
    t = (neg / (neg + E)).amax(dim=(0, 2))               # (P,)
    if data.binary:
        over = (A1 - 1).clamp(min=0)
        t = torch.maximum(t, (over / (over + (1 - E))).amax(dim=(0, 2)))
    t = t.clamp(0, 1)[:, None]
    A2 = (1 - t[None]) * A1 + t[None] * E
    # X^T (A2 - Y) = (1 - t) (G0 - colsum m^T) + t (colsum E^T - X^T Y)
    cs = data.colsum[None, None, :]
    XR2 = (1 - t[..., None]) * (G0.double() - m[..., None] * cs) + t[..., None] * (E[None, :, None] * cs
                                                                                 - data.XtY[None])
    norm = (XR2.abs() * mask[:, None, :]).amax(dim=(1, 2))
    s = torch.clamp(1.0 / (C * norm).clamp(min=1e-300), max=1.0)
    # rounding can leave alpha a hair outside [0, 1], where the entropy is undefined
    alpha = (Y + s[None, :, None] * (A2 - Y)).clamp(0, 1)
    ent = torch.special.xlogy(alpha, alpha).sum(dim=(0, 2))
    if data.binary:
        ent = ent + torch.special.xlogy(1 - alpha, 1 - alpha).sum(dim=(0, 2))
    return -C * ent


def _soft(x: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (x.abs() - thr).clamp(min=0)


@dataclass
class _Eval:
    """Everything known at the current iterate of the active problems."""

    Z: torch.Tensor        # (n, p, K) logits
    A: torch.Tensor        # (n, p, K) probabilities
    G0: torch.Tensor       # (p, K, d) X^T (A - Y)
    primal: torch.Tensor   # (p,) float64
    rel_gap: torch.Tensor  # (p,) float64


def _primal(W: torch.Tensor, loss: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """sklearn's objective ||W||_1 + C * summed loss per problem, in float64."""
    return W.abs().sum(dim=(1, 2), dtype=torch.float64) + C * loss


def _evaluate(data: _Data, W: torch.Tensor, b: torch.Tensor, C: torch.Tensor, mask: torch.Tensor) -> _Eval:
    Z = _logits(data, W, b)
    A, loss = _probs_loss(data, Z)
    G0 = _xt(data, A - data.Y[:, None, :])
    primal = _primal(W, loss, C)
    dual = _dual(data, A, G0, C, mask)
    rel_gap = (primal - dual).clamp(min=0) / primal.clamp(min=1e-300)
    return _Eval(Z=Z, A=A, G0=G0, primal=primal, rel_gap=rel_gap)


class _Tracker:
    """Per-problem bookkeeping shared by both engines: results, iteration counts, who is left."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        self.W, self.b = W.clone(), b.clone()
        P = W.shape[0]
        self.obj = np.full(P, np.nan)
        self.gap = np.full(P, np.nan)
        self.n_iter = np.zeros(P, dtype=np.int64)
        self.active = torch.arange(P, device=W.device)

    def record(self, idx: torch.Tensor, ev: _Eval) -> None:
        i = _np(idx)
        self.obj[i] = _np(ev.primal)
        self.gap[i] = _np(ev.rel_gap)

    def result(self, tol: float, method: str) -> _Result:
        # a gap between tol and 10 tol is the float32 floor (see _StopRule): fine, but say so
        bad = np.flatnonzero(~(self.gap <= 10 * tol))
        if len(bad):
            log.warning("torch %s: %d of %d problems stopped at relative duality gap %.1e > %.0e",
                        method, len(bad), len(self.gap), float(np.nanmax(self.gap[bad])), 10 * tol)
        elif np.any(self.gap > tol):
            log.debug("torch %s: gaps %s stopped at the float32 floor", method, self.gap[self.gap > tol].tolist())
        return _Result(W=self.W, b=self.b, objective=self.obj, gap=self.gap, n_iter=self.n_iter)


class _StopRule:
    """Per problem: continue while the relative gap is above tol, unless it has stalled.

    Float32 logits put a floor under the gap (1e-4 to 3e-4 relative on 3600 x 1536 MiniLM
    activations at C = 1: the KKT residual carries rounding of order sqrt(n) * 1e-7 * |x|):
    a problem whose gap is within 10 tol and has not shrunk by `factor` for `patience`
    evaluations stops there.
    """

    def __init__(self, P: int, tol: float, patience: int, factor: float, device: torch.device) -> None:
        self.tol, self.patience, self.factor = tol, patience, factor
        self.best = torch.full((P,), float("inf"), dtype=torch.float64, device=device)
        self.no_gain = torch.zeros(P, dtype=torch.int64, device=device)

    def keep(self, idx: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """Which of the problems idx, now at relative gaps `gap`, should continue."""
        gained = (gap < self.factor * self.best[idx]) | (gap > 10 * self.tol)
        self.no_gain[idx] = torch.where(gained, torch.zeros_like(self.no_gain[idx]), self.no_gain[idx] + 1)
        self.best[idx] = torch.minimum(self.best[idx], gap)
        return (gap > self.tol) & (self.no_gain[idx] < self.patience)


# ----------------------------------------------------------------------------- proximal Newton


def _solve_newton(data: _Data, C: torch.Tensor, mask: torch.Tensor, W: torch.Tensor, b: torch.Tensor, *,
                  tol: float, max_iter: int, min_ws: int, max_ws: int, ws_growth: float, inner_max_iter: int,
                  inner_rtol: float,
                  patience: int = 2) -> _Result:
    """Proximal Newton with working sets for P problems at once; returns their solutions."""
    tr = _Tracker(W * mask[:, None, :], b)
    stop = _StopRule(W.shape[0], tol, patience, 0.5, W.device)
    for it in range(max_iter + 1):
        idx = tr.active
        ev = _evaluate(data, tr.W[idx], tr.b[idx], C[idx], mask[idx])
        tr.record(idx, ev)
        keep = stop.keep(idx, ev.rel_gap)
        if it == max_iter or not bool(keep.any()):
            break
        idx = idx[keep]
        ev = _Eval(Z=ev.Z[:, keep], A=ev.A[:, keep], G0=ev.G0[keep], primal=ev.primal[keep],
                   rel_gap=ev.rel_gap[keep])
        tr.active = idx
        tr.n_iter[_np(idx)] += 1
        ws = _working_sets(tr.W[idx], ev.G0 * C[idx][:, None, None].float(), mask[idx], min_ws, max_ws, ws_growth)
        st = _newton_step(data, tr, idx, C[idx], ev, ws, inner_max_iter, inner_rtol)
        stalled_t = st == 0
        if bool(stalled_t.any()):
            # no descent found: at the float32 floor the gap test cannot be met; far above it
            # (an inexact direction on a badly conditioned model) FISTA takes over below
            log.debug("newton: %d problems stalled at gaps %s", int(stalled_t.sum()),
                      _np(ev.rel_gap[stalled_t]).tolist())
            tr.active = idx[~stalled_t]
            if len(tr.active) == 0:
                break
    _finish_with_fista(data, C, mask, tr, tol)
    return tr.result(tol, "newton")


def _finish_with_fista(data: _Data, C: torch.Tensor, mask: torch.Tensor, tr: "_Tracker", tol: float,
                       max_iter: int = 20000) -> None:
    """Continue with FISTA, from where Newton left them, the problems it left above 10 tol.

    Newton stops a problem when no step along its direction decreases the objective or after
    max_iter steps; far from the optimum that means an inexact direction on an ill-conditioned
    Hessian, not convergence (5 of the several thousand problems of the default search on all
    12,808 Rotten Tomatoes rows with MiniLM stopped at gaps 0.1 to 0.16). FISTA with
    backtracking needs no Hessian and converges from any point, only more slowly.
    """
    bad = np.flatnonzero(~(tr.gap <= 10 * tol))
    if len(bad) == 0:
        return
    log.info("torch newton: %d problems stopped at relative gaps %s (C %s); finishing them with FISTA",
             len(bad), [f"{g:.1e}" for g in tr.gap[bad]], _np(C[bad]).tolist())
    bi = torch.as_tensor(bad, device=tr.W.device)
    res = _solve_fista(data, C[bi], mask[bi], tr.W[bi], tr.b[bi], tol=tol, max_iter=max_iter)
    better = np.flatnonzero(res.objective < tr.obj[bad])
    if len(better):
        sel = torch.as_tensor(better, device=tr.W.device)
        tr.W[bi[sel]], tr.b[bi[sel]] = res.W[sel], res.b[sel]
        tr.obj[bad[better]], tr.gap[bad[better]] = res.objective[better], res.gap[better]
    tr.n_iter[bad] += res.n_iter


def _working_sets(W: torch.Tensor, G: torch.Tensor, mask: torch.Tensor, min_ws: int, max_ws: int,
                  growth: float) -> torch.Tensor:
    """Feature indices (p, k) per problem, -1 padded: the nonzeros, then the worst KKT violators.

    A zero weight is optimal while |C x_j^T r| <= 1 (all classes), so only violators can enter;
    the set is the support grown by `growth` (at least min_ws / 2 new entries, at least min_ws
    in all), so it grows geometrically while the support does, as in celer / skglm. The
    Hessian costs the working set squared: on MiniLM aggregation designs (thousands of kept
    neurons, C = 1) growth 1.25 took 0.45 times the time of growth 2, for one or two more steps.
    """
    nz = (W != 0).any(dim=1)
    gmax = G.abs().amax(dim=1)
    score = torch.where(nz, torch.full_like(gmax, float("inf")), torch.where(gmax > 1, gmax, -1.0))
    score = torch.where(mask, score, torch.full_like(score, -1.0))
    n_cand = (score > 0).sum(dim=1)
    n_nz = nz.sum(dim=1)
    grown = torch.maximum(torch.ceil(growth * n_nz).long(), n_nz + min_ws // 2)
    target = torch.clamp(torch.maximum(grown, torch.full_like(n_cand, min_ws)), max=max_ws)
    k = int(torch.minimum(target, n_cand).max().clamp(min=1))
    top_s, top_i = torch.topk(score, k, dim=1)
    size = torch.minimum(target, n_cand)
    valid = (top_s > 0) & (torch.arange(k, device=W.device)[None] < size[:, None])
    # valid first, in feature order (contiguous-ish column gathers)
    d = W.shape[-1]
    srt = torch.where(valid, top_i, torch.full_like(top_i, d)).sort(dim=1).values
    return torch.where(srt < d, srt, torch.full_like(srt, -1))


def _newton_step(data: _Data, tr: _Tracker, idx: torch.Tensor, C: torch.Tensor, ev: _Eval, ws: torch.Tensor,
                 inner_max_iter: int, inner_rtol: float) -> torch.Tensor:
    """One proximal Newton step for problems idx (in place in tr); returns the step taken (0: none).

    The quadratic models are solved problem by problem at their own size (padding them into
    one batch made every problem pay for the largest working set and the slowest inner solve);
    the passes over X before and after (gradients, line search) are batched.
    """
    K = data.K
    Wp, bp = tr.W[idx], tr.b[idx]
    dW = torch.zeros_like(Wp)
    db = torch.zeros_like(bp)
    g_dot_d = torch.zeros(len(idx), dtype=torch.float64, device=Wp.device)
    gb = (ev.A - data.Y[:, None, :]).sum(0) * C[:, None].float()       # (p, K) intercept gradient
    sizes = _np((ws >= 0).sum(1)).tolist()
    n_inner = []
    for j, kj in enumerate(sizes):
        cols = ws[j, :kj]                    # valid entries come first, sorted
        # exact Hessians only: on these ill-conditioned features, a Hessian reused from the
        # previous step, subsampled rows or bfloat16 products all multiplied the step count
        H = _hessian(data, cols, ev.A[:, j, :], float(C[j]))
        # coordinates: class by class, the kj working features then the intercept
        g = torch.cat([ev.G0[j][:, cols] * C[j].float(), gb[j][:, None]], dim=1).reshape(-1)
        w = torch.cat([Wp[j][:, cols], bp[j][:, None]], dim=1).reshape(-1)
        pen = torch.cat([torch.ones((K, kj), device=w.device), torch.zeros((K, 1), device=w.device)],
                        dim=1).reshape(-1)
        c = g - H @ w
        v, it = _inner_fista(H, c, pen, w, inner_max_iter, inner_rtol)
        v = _polish(H, c, pen, v)
        n_inner.append(it)
        delta = v - w
        g_dot_d[j] = (g.double() * delta.double()).sum()
        delta = delta.view(K, kj + 1)
        dW[j][:, cols] = delta[:, :kj]
        db[j] = delta[:, kj]
    st = _line_search(data, Wp, C, ev, dW, db, g_dot_d)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("newton step: C %s gap %s ws %s inner %s step %s", _np(C).tolist(), _np(ev.rel_gap).tolist(),
                  sizes, n_inner, _np(st).tolist())
    tr.W[idx] = Wp + st[:, None, None] * dW
    tr.b[idx] = bp + st[:, None] * db
    return st


def _hessian(data: _Data, cols: torch.Tensor, a: torch.Tensor, Cj: float, drop: float = 1e-3) -> torch.Tensor:
    """C * Hessian of the summed loss over [features cols, intercept], per class block: (K(k+1))^2.

    d^2 loss / dz_c1 dz_c2 = a_c1 (delta_c1c2 - a_c2) (binary: a (1 - a)). Two savings on the
    GEMMs, which dominate a Newton step: rows whose curvature is below `drop` times the largest
    (confidently fitted samples; a quarter of the rows at C = 1 on MiniLM features, 0.03% of
    the curvature mass) are left out, which only makes the step slightly inexact (the gradient
    stays exact); and symmetric blocks are computed once, upper triangle by tiles. A tiny ridge
    keeps the model strictly convex (the multinomial intercepts have a null direction, and a
    working set can be rank deficient).
    """
    K, kj = data.K, len(cols)
    kk = kj + 1
    curv = a * (1 - a)                                   # (n, K) diagonal curvatures
    rowmax = curv.amax(dim=1)
    keep = torch.nonzero(rowmax >= drop * rowmax.max())[:, 0]
    XS = data.X.index_select(1, cols)                    # (n, kj), contiguous
    if len(keep) < XS.shape[0]:
        XS, a = XS.index_select(0, keep), a.index_select(0, keep)
    H = torch.empty((K * kk, K * kk), device=XS.device)
    for c1 in range(K):
        for c2 in range(c1, K):
            if K == 1:
                dvec = Cj * a[:, 0] * (1 - a[:, 0])
            else:
                dvec = Cj * a[:, c1] * ((1.0 if c1 == c2 else 0.0) - a[:, c2])
            XD = XS * dvec[:, None]
            blk = H[c1 * kk:(c1 + 1) * kk, c2 * kk:(c2 + 1) * kk]
            _gram(XS, XD, blk[:kj, :kj], symmetric=c1 == c2)
            hfb = XD.sum(0)
            blk[:kj, kj] = hfb
            blk[kj, :kj] = hfb
            blk[kj, kj] = dvec.sum()
            if c1 != c2:
                H[c2 * kk:(c2 + 1) * kk, c1 * kk:(c1 + 1) * kk] = blk.T
    diag = torch.diagonal(H)
    diag += 1e-7 * diag.mean() + 1e-10
    return H


def _gram(XS: torch.Tensor, XD: torch.Tensor, out: torch.Tensor, symmetric: bool) -> None:
    """out = XS^T XD; when symmetric, only tiles on and above the diagonal are multiplied."""
    k = XS.shape[1]
    # tiles of >= 160 columns keep GEMM efficiency; 8 tiles do 56% of the full product's work
    nb = min(8, k // 160) if symmetric else 1
    if nb <= 1:
        out.copy_(XS.T @ XD)
        return
    edges = [round(i * k / nb) for i in range(nb + 1)]
    for bi in range(nb):
        r0, r1 = edges[bi], edges[bi + 1]
        # one GEMM per tile row: the diagonal tile and everything right of it
        out[r0:r1, r0:] = XS[:, r0:r1].T @ XD[:, r0:]
        out[r1:, r0:r1] = out[r0:r1, r1:].T


def _model_value(H: torch.Tensor, c: torch.Tensor, pen: torch.Tensor, v: torch.Tensor) -> float:
    """q(v) = v'Hv / 2 + c'v + sum pen |v|, in float64."""
    return float(((0.5 * (H @ v) + c) * v).sum(dtype=torch.float64) + (pen * v.abs()).sum(dtype=torch.float64))


def _polish(H: torch.Tensor, c: torch.Tensor, pen: torch.Tensor, v: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """Exact minimiser of the model on v's support and signs (one Cholesky solve), if it is better.

    First-order inner iterations find the support quickly but converge slowly on it when the
    features are correlated; on a fixed support and signs the model is a smooth quadratic,
    solved exactly by one linear system. A sign that flips is set to zero and the system
    re-solved (`rounds` times); the result replaces v only if it lowers the model value.
    """
    u = v
    for _ in range(rounds):
        sgn = torch.sign(u) * pen
        fi = torch.nonzero((u != 0) | (pen == 0))[:, 0]
        Hs = H.index_select(0, fi).index_select(1, fi)
        rhs = -(c.index_select(0, fi) + sgn.index_select(0, fi))
        sol = _spd_solve(Hs, rhs)
        if sol is None:
            break
        u_new = torch.zeros_like(u)
        u_new[fi] = sol
        flipped = (pen > 0) & (torch.sign(u_new) != sgn)
        u = torch.where(flipped, torch.zeros_like(u_new), u_new)
        if not bool(flipped.any()):
            break
    return u if _model_value(H, c, pen, u) < _model_value(H, c, pen, v) else v


def _line_search(data: _Data, Wp: torch.Tensor, C: torch.Tensor, ev: _Eval, dW: torch.Tensor, db: torch.Tensor,
                 g_dot_d: torch.Tensor) -> torch.Tensor:
    """Armijo step per problem: F(w + s D) - F(w) <= 1e-4 s (g.D + |w + D|_1 - |w|_1); 0 if none.

    The change F(w + s D) - F(w) is summed term by term in float64 from float32 logits: near
    the optimum it is far below float32 resolution of F itself, and comparing two rounded
    totals would accept or reject steps at random.
    """
    p = Wp.shape[0]
    dev = Wp.device
    dZ = _logits(data, dW, db).double()
    Z = ev.Z.double()
    W64, dW64 = Wp.double(), dW.double()
    l1_now = W64.abs().sum(dim=(1, 2))
    decrease = g_dot_d + (W64 + dW64).abs().sum(dim=(1, 2)) - l1_now
    loss_now = _loss64(data, Z)
    step = torch.ones(p, dtype=torch.float64, device=dev)
    accepted = torch.zeros(p, dtype=torch.bool, device=dev)
    descent = decrease < 0
    for _ in range(30):
        todo = descent & ~accepted
        if not bool(todo.any()):
            break
        dF = ((W64 + step[:, None, None] * dW64).abs().sum(dim=(1, 2)) - l1_now
              + C * (_loss64(data, Z + step[None, :, None] * dZ) - loss_now).sum(0))
        ok = dF <= 1e-4 * step * decrease
        accepted = accepted | (todo & ok)
        step = torch.where(todo & ~ok, step * 0.5, step)
    return torch.where(accepted, step, torch.zeros_like(step)).float()


def _loss64(data: _Data, Z: torch.Tensor) -> torch.Tensor:
    """Per-row losses (n, p) in float64 from float64 logits (n, p, K)."""
    if data.binary:
        z = Z[..., 0]
        return F.softplus(z) - data.Y.double() * z
    zy = Z.gather(-1, data.y[:, None, None].expand(-1, Z.shape[1], 1))[..., 0]
    return torch.logsumexp(Z, dim=-1) - zy


def _spd_solve(A: torch.Tensor, b: torch.Tensor) -> Optional[torch.Tensor]:
    """A^-1 b for symmetric positive definite A: float32 Cholesky plus one float64 refinement.

    The refinement step (residual in float64, correction with the same factor) recovers most
    of a float64 solve's accuracy at half its cost; float64 throughout if float32 fails.
    """
    Lc, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        x = torch.cholesky_solve(b[:, None], Lc)[:, 0]
        r = b.double() - A.double() @ x.double()
        return x + torch.cholesky_solve(r.float()[:, None], Lc)[:, 0]
    Lc, info = torch.linalg.cholesky_ex(A.double())
    if int(info) != 0:
        return None
    return torch.cholesky_solve(b.double()[:, None], Lc)[:, 0].float()


def _inner_fista(H: torch.Tensor, c: torch.Tensor, pen: torch.Tensor, v0: torch.Tensor, max_iter: int,
                 rtol: float) -> tuple[torch.Tensor, int]:
    """min_v 0.5 v'Hv + c'v + sum pen |v| on a small dense H, from v0 (accelerated, restarted).

    pen is 1 on weights and 0 on intercepts. Stops when the gradient-mapping norm falls to
    rtol times its first value: the outer step only needs a direction of sufficient decrease,
    and _polish finishes it on the support. Few, fused ops per iteration: this loop runs for
    every problem of every Newton step. The default cap of 100 iterations: at 50, the C = 1
    problems of large MiniLM designs needed up to 3 times the Newton steps (each direction too
    inexact); 200 gained no steps.
    """
    # step 1/L from the top eigenvalue (power iteration; 10% margin for its underestimate)
    u = torch.ones_like(c)
    for _ in range(20):
        u = H @ u
        u = u / u.norm().clamp(min=1e-30)
    L = float((H @ u).norm()) * 1.1 + 1e-12
    free = pen == 0
    v, yv = v0, v0
    t = 1.0
    rho0 = None
    for i in range(max_iter):
        z = torch.add(yv, torch.addmv(c, H, yv), alpha=-1.0 / L)
        v_new = torch.where(free, z, F.softshrink(z, 1.0 / L))
        step = v_new - yv
        if i % 5 == 0:
            # gradient-mapping norm at yv: zero exactly at the model's minimiser
            rho = float(step.norm()) * L
            if rho0 is None:
                rho0 = max(rho, 1e-30)
            elif rho <= rtol * rho0:
                return v_new, i + 1
        move = v_new - v
        # restart the momentum where it points uphill (O'Donoghue & Candes)
        if float(torch.dot(step, move)) < 0:
            yv, t = v_new, 1.0
        else:
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            yv, t = torch.add(v_new, move, alpha=(t - 1) / t_new), t_new
        v = v_new
    return v, max_iter


# ----------------------------------------------------------------------------- FISTA


def _solve_fista(data: _Data, C: torch.Tensor, mask: torch.Tensor, W: torch.Tensor, b: torch.Tensor, *,
                 tol: float, max_iter: int, check_every: int = 10, **_: Any) -> _Result:
    """Batched FISTA with backtracking and restart; the gap is checked every `check_every` steps.

    One matmul forward (X @ step) and one backward per iteration: the logits of the new point
    and of the extrapolated point are updated from the step's logits, and refreshed from
    scratch at every gap check so float32 rounding cannot accumulate.
    """
    tr = _Tracker(W * mask[:, None, :], b)
    stop = _StopRule(W.shape[0], tol, 5, 0.9, W.device)
    dev = data.X.device
    maskf = mask[:, None, :].float()
    # start from an eighth of the global Lipschitz bound (the loss is rarely that curved) and
    # let backtracking raise it
    sig2 = _sq_norm_aug(data.X)
    curv = 0.25 if data.binary else 0.5
    L = (C * sig2 * curv / 8).float()
    idx = tr.active
    Wx, bx = tr.W.clone(), tr.b.clone()
    Wy, by = Wx.clone(), bx.clone()
    t = torch.ones(len(idx), device=dev)
    Cf = C.float()
    it = 0
    while True:
        if it % check_every == 0:
            ev = _evaluate(data, Wx, bx, C[idx], mask[idx])
            tr.record(idx, ev)
            tr.W[idx], tr.b[idx] = Wx, bx
            keep = stop.keep(idx, ev.rel_gap)
            if it >= max_iter or not bool(keep.any()):
                break
            if not bool(keep.all()):
                idx, Wx, bx, Wy, by, t, L = (idx[keep], Wx[keep], bx[keep], Wy[keep], by[keep], t[keep], L[keep])
                maskf = mask[idx][:, None, :].float()
                ev = _Eval(Z=ev.Z[:, keep], A=ev.A[:, keep], G0=ev.G0[keep], primal=ev.primal[keep],
                           rel_gap=ev.rel_gap[keep])
            Zx = ev.Z
            Zy = _logits(data, Wy, by)
        Ay, _ = _probs_loss(data, Zy)
        Ry = Ay - data.Y[:, None, :]
        Gy = _xt(data, Ry) * Cf[idx][:, None, None]
        gby = Ry.sum(0) * Cf[idx][:, None]
        Zy64 = Zy.double()
        loss_y = _loss64(data, Zy64)
        while True:
            Wn = _soft(Wy - Gy / L[:, None, None], 1.0 / L[:, None, None]) * maskf
            bn = by - gby / L[:, None]
            dW, dbb = Wn - Wy, bn - by
            dZ = _logits(data, dW, dbb)
            # f(x_new) - f(y) summed term by term in float64: exact enough to test at any scale
            df = C[idx] * (_loss64(data, Zy64 + dZ.double()) - loss_y).sum(0)
            quad = ((Gy * dW).sum(dim=(1, 2), dtype=torch.float64) + (gby * dbb).sum(1, dtype=torch.float64)
                    + L.double() / 2 * ((dW * dW).sum(dim=(1, 2), dtype=torch.float64)
                                        + (dbb * dbb).sum(1, dtype=torch.float64)))
            bad = df > quad
            if not bool(bad.any()):
                break
            L = torch.where(bad, 2 * L, L)
        Zn = Zy + dZ
        # restart the momentum where it points uphill (O'Donoghue & Candes gradient scheme)
        up = ((Wy - Wn) * (Wn - Wx)).sum(dim=(1, 2)) + ((by - bn) * (bn - bx)).sum(1) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(up, torch.zeros_like(t), (t - 1) / t_new)
        t_new = torch.where(up, torch.ones_like(t_new), t_new)
        Wy = Wn + beta[:, None, None] * (Wn - Wx)
        by = bn + beta[:, None] * (bn - bx)
        Zy = Zn + beta[None, :, None] * (Zn - Zx)   # logits are linear in (W, b): no extra matmul
        Wx, bx, Zx, t = Wn, bn, Zn, t_new
        # let the step grow back where the curvature has dropped (the decrease test above is
        # exact enough in float64 differences that this cannot creep into divergence)
        L = L * 0.95
        tr.n_iter[_np(idx)] += 1
        it += 1
    return tr.result(tol, "fista")


def _sq_norm_aug(X: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """||[X, 1]||_2^2 by power iteration (the Lipschitz scale of the loss with an intercept)."""
    n, d = X.shape
    v = torch.ones(d + 1, device=X.device, dtype=torch.float32) / math.sqrt(d + 1)
    s = torch.tensor(1.0, device=X.device)
    for _ in range(iters):
        u = X @ v[:d] + v[d]
        v = torch.cat([X.T @ u, u.sum()[None]])
        s = v.norm()
        v = v / s.clamp(min=1e-30)
    return s.double()
