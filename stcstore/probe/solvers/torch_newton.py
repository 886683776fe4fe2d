"""Proximal Newton on working sets (newGLMNET-like) for a batch of L1 logistic problems."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from .torch_data import _Data, _logits, _loss64, _np
from .torch_dual import _Eval, _evaluate, _Result, _StopRule, _Tracker
from .torch_fista import _solve_fista
from .torch_hessian import HessianCache, build_hessians, scaled
from .torch_model import _inner_fista, _model_kkt, _polish
from .torch_threads import ProblemThreads

# a Newton direction counts as exact (for _settled) when its quadratic model's KKT conditions
# hold to this, in units of the L1 penalty (|C x_j^T r| <= 1 at an optimal zero weight)
_MODEL_KKT_TOL = 1e-3

log = logging.getLogger(__name__)


def _solve_newton(data: _Data, C: torch.Tensor, mask: torch.Tensor, W: torch.Tensor, b: torch.Tensor, *,
                  tol: float, max_iter: int, min_ws: int, max_ws: int, ws_growth: float, inner_max_iter: int,
                  inner_rtol: float, settle_tol: float = 0.0, patience: int = 2,
                  hessians: Optional[HessianCache] = None, threads: Optional[ProblemThreads] = None) -> _Result:
    """Proximal Newton with working sets for P problems at once; returns their solutions.

    A problem stops when its relative duality gap is at most tol, or when its objective has
    settled (`_settled`: a relative change of at most settle_tol; 0 turns that off).
    `hessians` keeps problems' Hessians from step to step (and from call to call: its keys are
    the problems' indices); none kept by default. `threads` solves a step's large models side by side.
    """
    hessians = HessianCache(0) if hessians is None else hessians
    tr = _Tracker(W * mask[:, None, :], b)
    stop = _StopRule(W.shape[0], tol, patience, 0.5, W.device)
    P = W.shape[0]
    # objective before the last step, and whether that step was a clean full Newton step
    # (step 1, every KKT violator inside its working set, the model solved exactly): see _settled
    last_obj = torch.full((P,), float("inf"), dtype=torch.float64, device=W.device)
    clean = torch.zeros(P, dtype=torch.bool, device=W.device)
    # problems whose support outgrew the working-set cap: Newton would only move a block of them
    handed = np.zeros(P, dtype=bool)
    for it in range(max_iter + 1):
        idx = tr.active
        ev = _evaluate(data, tr.W[idx], tr.b[idx], C[idx], mask[idx])
        tr.record(idx, ev)
        settled = _settled(clean[idx], last_obj[idx], ev.primal, settle_tol)
        tr.settle(idx, settled)
        keep = stop.keep(idx, ev.rel_gap) & ~settled
        if it == max_iter or not bool(keep.any()):
            break
        idx = idx[keep]
        ev = ev.take(keep)
        full = (tr.W[idx] != 0).any(dim=1).sum(dim=1) >= max_ws
        if bool(full.any()):
            log.debug("newton: %d problems hold %d or more nonzeros: FISTA takes them over", int(full.sum()), max_ws)
            handed[_np(idx[full])] = True
            idx, ev = idx[~full], ev.take(~full)
            if len(idx) == 0:
                tr.active = idx
                break
        tr.active = idx
        tr.n_iter[_np(idx)] += 1
        ws, complete = _working_sets(tr.W[idx], ev.G0 * C[idx][:, None, None].float(), mask[idx], min_ws, max_ws,
                                     ws_growth)
        last_obj[idx] = ev.primal
        st, exact = _newton_step(data, tr, idx, C[idx], ev, ws, inner_max_iter, inner_rtol, hessians, threads)
        clean[idx] = complete & exact & (st == 1)
        stalled_t = st == 0
        if bool(stalled_t.any()):
            # no descent found: at the float32 floor the gap test cannot be met; far above it
            # (an inexact direction on a badly conditioned model) FISTA takes over below
            log.debug("newton: %d problems stalled at gaps %s", int(stalled_t.sum()),
                      _np(ev.rel_gap[stalled_t]).tolist())
            tr.active = idx[~stalled_t]
            if len(tr.active) == 0:
                break
    _finish_with_fista(data, C, mask, tr, tol, handed)
    return tr.result(tol, "newton")


def _settled(clean: torch.Tensor, before: torch.Tensor, now: torch.Tensor, settle_tol: float) -> torch.Tensor:
    """Problems whose last clean full Newton step changed the objective by at most settle_tol relative.

    On ill-conditioned designs (thousands of correlated neurons, C >= 0.1) Newton settles the
    objective to 1e-6..1e-8 relative several steps before the duality gap, whose dual point is
    scaled by the largest KKT residual, falls under tol: on the eta = 1 MiniLM ffn design the
    last 2-4 of 7-11 steps per problem moved the objective by under 1e-7 while the gap went
    from 5e-2 to its float32 floor. A full step (no backtracking) taken with every KKT
    violator in the working set, that changed the objective by under settle_tol (tol / 100 by
    default), converges superlinearly from there: what is left is far below what a gap of tol bounds.
    The step must also have solved its quadratic model exactly (_model_kkt): an inexact
    direction moves the objective little without being near the optimum (the whole default
    search stopped one problem at a gap of 0.12 before this was asked).
    """
    return clean & ((before - now).abs() <= settle_tol * now.abs())


def _finish_with_fista(data: _Data, C: torch.Tensor, mask: torch.Tensor, tr: "_Tracker", tol: float,
                       handed: Optional[np.ndarray] = None, max_iter: int = 20000) -> None:
    """Continue with FISTA, from where Newton left them, the problems it left above 10 tol and
    those it `handed` over (their support outgrew the working-set cap).

    Newton stops a problem when no step along its direction decreases the objective or after
    max_iter steps; far from the optimum that means an inexact direction on an ill-conditioned
    Hessian, not convergence (5 of the several thousand problems of the default search on all
    12,808 Rotten Tomatoes rows with MiniLM stopped at gaps 0.1 to 0.16). FISTA with
    backtracking needs no Hessian and converges from any point, only more slowly.
    """
    handed = np.zeros(len(tr.gap), dtype=bool) if handed is None else handed
    bad = np.flatnonzero((~(tr.gap <= 10 * tol) & ~tr.settled) | (handed & ~(tr.gap <= tol)))
    if len(bad) == 0:
        return
    # a problem handed over is not a failure of Newton's: the common case needs no warning
    (log.debug if handed[bad].all() else log.info)(
        "torch newton: %d problems stopped at relative gaps %s (C %s); finishing them with FISTA",
        len(bad), [f"{g:.1e}" for g in tr.gap[bad]], _np(C[bad]).tolist())
    bi = torch.as_tensor(bad, device=tr.W.device)
    res = _solve_fista(data, C[bi], mask[bi], tr.W[bi], tr.b[bi], tol=tol, max_iter=max_iter)
    better = np.flatnonzero(res.objective < tr.obj[bad])
    if len(better):
        sel = torch.as_tensor(better, device=tr.W.device)
        tr.W[bi[sel]], tr.b[bi[sel]] = res.W[sel], res.b[sel]
        tr.obj[bad[better]], tr.gap[bad[better]] = res.objective[better], res.gap[better]
        tr.settled[bad[better]] = False
    tr.n_iter[bad] += res.n_iter


def _working_sets(W: torch.Tensor, G: torch.Tensor, mask: torch.Tensor, min_ws: int, max_ws: int,
                  growth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature indices (p, k) per problem, -1 padded: the nonzeros, then the worst KKT violators;
    and whether each set holds every violator.

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
    return torch.where(srt < d, srt, torch.full_like(srt, -1)), n_cand <= target


def _newton_step(data: _Data, tr: _Tracker, idx: torch.Tensor, C: torch.Tensor, ev: _Eval, ws: torch.Tensor,
                 inner_max_iter: int, inner_rtol: float, hessians: HessianCache,
                 threads: Optional[ProblemThreads] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One proximal Newton step for problems idx (in place in tr); returns the step taken (0: none)
    and whether each direction minimised its quadratic model exactly (to _MODEL_KKT_TOL).

    The Hessians are built first, in one pass over X's rows for all problems (build_hessians).
    The quadratic models are then solved problem by problem at their own size (padding them into
    one batch made every problem pay for the largest working set and the slowest inner solve),
    side by side on the CPU's `threads` when they are large; the passes over X before and after
    (gradients, line search) are batched.
    The kept Hessians are taken and put back in problem order, so what is kept does not depend
    on which thread finished first.
    """
    K = data.K
    Wp, bp = tr.W[idx], tr.b[idx]
    gb = (ev.A - data.Y[:, None, :]).sum(0) * C[:, None].float()       # (p, K) intercept gradient
    sizes = _np((ws >= 0).sum(1)).tolist()
    keys = _np(idx).tolist()
    # near-exact Hessians only (HessianCache): on these ill-conditioned features a Hessian
    # reused whole from the previous step, subsampled rows or bfloat16 products all multiplied
    # the step count. Valid working-set entries come first, sorted.
    built = build_hessians(data, [hessians.take(k) for k in keys], [ws[j, :sizes[j]] for j in range(len(keys))],
                           ev.A, threads)

    def direction(j: int) -> tuple:
        kj = sizes[j]
        cols = ws[j, :kj]
        H = scaled(built[j][0], float(C[j]))
        # coordinates: class by class, the kj working features then the intercept
        g = torch.cat([ev.G0[j][:, cols] * C[j].float(), gb[j][:, None]], dim=1).reshape(-1)
        w = torch.cat([Wp[j][:, cols], bp[j][:, None]], dim=1).reshape(-1)
        pen = torch.cat([torch.ones((K, kj), device=w.device), torch.zeros((K, 1), device=w.device)],
                        dim=1).reshape(-1)
        c = g - H @ w
        v, it = _inner_fista(H, c, pen, w, inner_max_iter, inner_rtol)
        v = _polish(H, c, pen, v)
        exact = _model_kkt(H, c, pen, v) <= _MODEL_KKT_TOL
        delta = v - w
        return cols, delta.view(K, kj + 1), (g.double() * delta.double()).sum(), exact, it

    order = range(len(sizes))
    pooled = threads is not None and threads.worth(sizes)     # the solver makes threads on the CPU only
    if pooled:
        big_first = sorted(order, key=lambda j: -sizes[j])    # the last model to start is a small one
        out = dict(zip(big_first, threads.map(direction, big_first)))
    else:
        out = {j: direction(j) for j in order}
    dW = torch.zeros_like(Wp)
    db = torch.zeros_like(bp)
    g_dot_d = torch.zeros(len(idx), dtype=torch.float64, device=Wp.device)
    exact = torch.zeros(len(idx), dtype=torch.bool, device=Wp.device)
    n_inner = []
    for j in order:
        cols, delta, g_dot_d[j], exact[j], it = out[j]
        hessians.put(keys[j], *built[j])
        n_inner.append(it)
        dW[j][:, cols] = delta[:, :sizes[j]]
        db[j] = delta[:, sizes[j]]
    st = _line_search(data, Wp, C, ev, dW, db, g_dot_d)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("newton step: C %s gap %s ws %s inner %s step %s%s", _np(C).tolist(), _np(ev.rel_gap).tolist(),
                  sizes, n_inner, _np(st).tolist(), " (threads)" if pooled else "")
    tr.W[idx] = Wp + st[:, None, None] * dW
    tr.b[idx] = bp + st[:, None] * db
    return st, exact


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


