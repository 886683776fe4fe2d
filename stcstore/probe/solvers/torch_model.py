"""The quadratic model of a proximal Newton step: its value, optimality residual and solvers."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

# rows of a Newton system converted to float64 at a time for the refinement residual
_REFINE_ROWS = 256


def _model_kkt(H: torch.Tensor, c: torch.Tensor, pen: torch.Tensor, v: torch.Tensor) -> float:
    """Largest violation of the model's optimality conditions at v: grad + pen sign(v) = 0 where
    v != 0 or pen = 0, |grad| <= pen where v = 0 (grad = Hv + c)."""
    g = torch.addmv(c, H, v)
    on = (v != 0) | (pen == 0)
    viol = torch.where(on, (g + pen * torch.sign(v)).abs(), (g.abs() - pen).clamp(min=0))
    return float(viol.max())


def _model_value(H: torch.Tensor, c: torch.Tensor, pen: torch.Tensor, v: torch.Tensor) -> float:
    """q(v) = v'Hv / 2 + c'v + sum pen |v|, in float64."""
    return float(((0.5 * (H @ v) + c) * v).sum(dtype=torch.float64) + (pen * v.abs()).sum(dtype=torch.float64))


def _polish(H: torch.Tensor, c: torch.Tensor, pen: torch.Tensor, v: torch.Tensor, rounds: int = 8) -> torch.Tensor:
    """Exact minimiser of the model on v's support and signs (Cholesky solves), if it is better.

    First-order inner iterations find the support quickly but converge slowly on it when the
    features are correlated; on a fixed support and signs the model is a smooth quadratic,
    solved exactly by one linear system. Signs that flip are set to zero and the smaller system
    re-solved, until none flips (at most `rounds` solves); the best of v and these points by
    model value is returned. On first-token MiniLM ffn features at C = 1 the inner iterations
    left a third of a 982-entry support with wrong signs: the second round still flipped 93,
    the fifth none, and stopping after two left Newton at full steps of no progress (100 steps,
    gap 0.11) where five rounds beat the inner solution in every step.
    """
    best, best_val = v, _model_value(H, c, pen, v)
    u = v
    for _ in range(rounds):
        sgn = torch.sign(u) * pen
        fi = torch.nonzero((u != 0) | (pen == 0))[:, 0]
        rhs = -(c.index_select(0, fi) + sgn.index_select(0, fi))
        sol = _spd_solve(H, fi, rhs)
        if sol is None:
            break
        u_new = torch.zeros_like(u)
        u_new[fi] = sol
        flipped = (pen > 0) & (torch.sign(u_new) != sgn)
        u = torch.where(flipped, torch.zeros_like(u_new), u_new)
        val = _model_value(H, c, pen, u)
        if val < best_val:
            best, best_val = u, val
        if not bool(flipped.any()):
            break
    return best


def _spd_solve(H: torch.Tensor, fi: torch.Tensor, b: torch.Tensor) -> Optional[torch.Tensor]:
    """A^-1 b for the principal block A = H[fi, fi] (symmetric positive definite): float32
    Cholesky plus one float64 refinement.

    The refinement step (residual in float64, correction with the same factor) recovers most
    of a float64 solve's accuracy at half its cost; float64 throughout if float32 fails. One
    copy of A exists, factored in place, and the residual reads A's rows from H a block at a
    time: with working sets of thousands of columns these systems are a Newton step's largest
    allocations.
    """
    # index_select, not H[fi[:, None], fi]: advanced indexing took 4x as long here
    A = H.index_select(0, fi).index_select(1, fi)
    Lc, info = torch.linalg.cholesky_ex(A, out=(A, torch.empty((), dtype=torch.int32, device=A.device)))
    if int(info) == 0:
        x = _cholesky_solve(Lc, b)
        x64 = x.double()
        r = b.double()
        for i in range(0, len(fi), _REFINE_ROWS):
            r[i:i + _REFINE_ROWS] -= H.index_select(0, fi[i:i + _REFINE_ROWS]).index_select(1, fi).double() @ x64
        return x + _cholesky_solve(Lc, r.float())
    del A, Lc
    Lc, info = torch.linalg.cholesky_ex(H.index_select(0, fi).index_select(1, fi).double())
    if int(info) != 0:
        return None
    return _cholesky_solve(Lc, b.double()).float()


def _cholesky_solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(L L^T)^-1 b for a lower Cholesky factor L: two triangular solves (torch.cholesky_solve
    copied the row-major factor every call, 3x the time of the solves)."""
    z = torch.linalg.solve_triangular(L, b[:, None], upper=False)
    return torch.linalg.solve_triangular(L.mT, z, upper=True)[:, 0]


def _inner_fista(H: torch.Tensor, c: torch.Tensor, pen: torch.Tensor, v0: torch.Tensor, max_iter: int,
                 rtol: float, check_every: int = 10) -> tuple[torch.Tensor, int]:
    """min_v 0.5 v'Hv + c'v + sum pen |v| on a small dense H, from v0 (accelerated, restarted).

    pen is 1 on weights and 0 on intercepts. Stops when the gradient-mapping norm falls to
    rtol times its first value: the outer step only needs a direction of sufficient decrease,
    and _polish finishes it on the support. Few, fused ops per iteration; on a GPU the momentum
    and restart stay on the device and the host reads the stopping test only every
    `check_every` iterations, so the loop is not a sync per iteration. This loop runs
    for every problem of every Newton step. The default cap of 100 iterations: at 50, the
    C = 1 problems of large MiniLM designs needed up to 3 times the Newton steps (each
    direction too inexact); 200 gained no steps.
    """
    # step 1/L from the top eigenvalue (power iteration; 10% margin for its underestimate)
    u = torch.ones_like(c)
    for _ in range(20):
        u = H @ u
        u = u / u.norm().clamp(min=1e-30)
    L = float((H @ u).norm()) * 1.1 + 1e-12
    inv_L = 1.0 / L
    free = pen == 0
    # on the CPU reading a scalar costs nothing, and Python floats save half the tensor ops of
    # an iteration (on 3-class designs of a few hundred rows those ops, not the products, were
    # the time); on a GPU the momentum stays on the device, so the loop never waits for it
    host = c.device.type == "cpu"
    v, yv = v0, v0
    t: "float | torch.Tensor" = 1.0 if host else torch.ones((), dtype=c.dtype, device=c.device)
    rho0 = 0.0
    for i in range(max_iter):
        z = torch.add(yv, torch.addmv(c, H, yv), alpha=-inv_L)
        v_new = torch.where(free, z, F.softshrink(z, inv_L))
        step = v_new - yv
        if i % check_every == 0:
            # gradient-mapping norm at yv: zero exactly at the model's minimiser
            rho = float(step.norm()) * L
            if i == 0:
                rho0 = max(rho, 1e-30)
            elif rho <= rtol * rho0:
                return v_new, i + 1
        move = v_new - v
        # restart the momentum where it points uphill (O'Donoghue & Candes)
        if host:
            up = float(torch.dot(step, move)) < 0
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            beta, t = (0.0, 1.0) if up else ((t - 1) / t_new, t_new)
            yv = torch.add(v_new, move, alpha=beta)
        else:
            up_t = torch.dot(step, move) < 0
            t_new_t = (1 + torch.sqrt(1 + 4 * t * t)) / 2
            beta_t = torch.where(up_t, torch.zeros_like(t_new_t), (t - 1) / t_new_t)
            t = torch.where(up_t, torch.ones_like(t_new_t), t_new_t)
            yv = v_new + beta_t * move
        v = v_new
    return v, max_iter
