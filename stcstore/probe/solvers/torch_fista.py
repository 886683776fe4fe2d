"""Batched FISTA with backtracking and restart for L1 logistic problems (many classes, and Newton's finish)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .torch_data import _Data, _logits, _loss64, _np, _probs_loss, _soft, _sq_norm_aug, _xt
from .torch_dual import _evaluate, _Result, _StopRule, _Tracker

log = logging.getLogger(__name__)


def _solve_fista(data: _Data, C: torch.Tensor, mask: torch.Tensor, W: torch.Tensor, b: torch.Tensor, *,
                 tol: float, max_iter: int, check_every: int = 10, **_: Any) -> _Result:
    """Batched FISTA with backtracking and restart; the gap is checked every `check_every` steps.

    One matmul forward (X @ step) and one backward per iteration: the logits of the new point
    and of the extrapolated point are updated from the step's logits, and refreshed from
    scratch at every gap check so float32 rounding cannot accumulate. Backtracking is per
    problem and on the device: a problem whose step fails the decrease test stays where it is
    with twice the curvature bound and tries again next iteration, so the host waits for the
    device only at gap checks (no sync per iteration on CUDA).
    """
    tr = _Tracker(W * mask[:, None, :], b)
    stop = _StopRule(W.shape[0], tol, 5, 0.9, W.device)
    dev = data.device
    maskf = mask[:, None, :].float()
    # start from an eighth of the global Lipschitz bound (the loss is rarely that curved) and
    # let backtracking raise it
    sig2 = _sq_norm_aug(data)
    curv = 0.25 if data.binary else 0.5
    L = (C * sig2 * curv / 8).float()
    idx = tr.active
    Wx, bx = tr.W.clone(), tr.b.clone()
    Wy, by = Wx.clone(), bx.clone()
    t = torch.ones(len(idx), device=dev)
    Cf = C.float()
    it = since = 0
    while True:
        if it % check_every == 0:
            tr.n_iter[_np(idx)] += since
            since = 0
            ev = _evaluate(data, Wx, bx, C[idx], mask[idx])
            tr.record(idx, ev)
            tr.W[idx], tr.b[idx] = Wx, bx
            keep = stop.keep(idx, ev.rel_gap)
            if it >= max_iter or not bool(keep.any()):
                break
            if not bool(keep.all()):
                idx, Wx, bx, Wy, by, t, L = (idx[keep], Wx[keep], bx[keep], Wy[keep], by[keep], t[keep], L[keep])
                maskf = mask[idx][:, None, :].float()
                ev = ev.take(keep)
            Zx = ev.Z
            Zy = _logits(data, Wy, by)
        Ay, _ = _probs_loss(data, Zy)
        Ry = Ay - data.Y[:, None, :]
        Gy = _xt(data, Ry) * Cf[idx][:, None, None]
        gby = Ry.sum(0) * Cf[idx][:, None]
        Zy64 = Zy.double()
        loss_y = _loss64(data, Zy64)
        Wn = _soft(Wy - Gy / L[:, None, None], 1.0 / L[:, None, None]) * maskf
        bn = by - gby / L[:, None]
        dW, dbb = Wn - Wy, bn - by
        dZ = _logits(data, dW, dbb)
        # f(x_new) - f(y) summed term by term in float64: exact enough to test at any scale
        df = C[idx] * (_loss64(data, Zy64 + dZ.double()) - loss_y).sum(0)
        quad = ((Gy * dW).sum(dim=(1, 2), dtype=torch.float64) + (gby * dbb).sum(1, dtype=torch.float64)
                + L.double() / 2 * ((dW * dW).sum(dim=(1, 2), dtype=torch.float64)
                                    + (dbb * dbb).sum(1, dtype=torch.float64)))
        ok = df <= quad
        Zn = Zy + dZ
        # restart the momentum where it points uphill (O'Donoghue & Candes gradient scheme)
        up = ((Wy - Wn) * (Wn - Wx)).sum(dim=(1, 2)) + ((by - bn) * (bn - bx)).sum(1) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(up, torch.zeros_like(t), (t - 1) / t_new)
        t_new = torch.where(up, torch.ones_like(t_new), t_new)
        # accepted problems move (logits are linear in (W, b): no extra matmul); rejected ones stay
        okW, okb, okZ = ok[:, None, None], ok[:, None], ok[None, :, None]
        Wy = torch.where(okW, Wn + beta[:, None, None] * (Wn - Wx), Wy)
        by = torch.where(okb, bn + beta[:, None] * (bn - bx), by)
        Zy = torch.where(okZ, Zn + beta[None, :, None] * (Zn - Zx), Zy)
        Wx, bx, Zx = torch.where(okW, Wn, Wx), torch.where(okb, bn, bx), torch.where(okZ, Zn, Zx)
        t = torch.where(ok, t_new, t)
        # backtracking doubles the bound; after an accepted step, let it grow back where the
        # curvature has dropped (the decrease test is exact enough in float64 differences that
        # this cannot creep into divergence)
        L = torch.where(ok, L * 0.95, 2 * L)
        since += 1
        it += 1
    return tr.result(tol, "fista")
