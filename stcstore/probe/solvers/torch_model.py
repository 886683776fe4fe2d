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

    The support is ordered by decreasing |v| (unpenalised coordinates first): the flips are
    mostly small weights, so after the first round only the factor's tail, from the first
    dropped coordinate on, is recomputed. On the eta = 1 MiniLM ffn design later rounds were
    57% of the Cholesky work, dropping a few to a few hundred of 1,500-3,000 coordinates.
    """
    best, best_val = v, _model_value(H, c, pen, v)
    u = v
    fi = torch.nonzero((v != 0) | (pen == 0))[:, 0]
    fi = fi[torch.argsort(torch.where(pen[fi] == 0, float("inf"), v[fi].abs()), descending=True, stable=True)]
    fac = _Factor.of(H, fi)
    for _ in range(rounds):
        sgn = torch.sign(u) * pen
        rhs = -(c.index_select(0, fi) + sgn.index_select(0, fi))
        sol = _spd_solve(H, fi, rhs) if fac is None else fac.solve(H, rhs)
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
        keep = ~flipped.index_select(0, fi)
        fac = None if fac is None else fac.without(H, keep)
        fi = fi[keep]
    return best


class _Factor:
    """Lower float32 Cholesky factor of H's principal block on an ordered coordinate list."""

    def __init__(self, fi: torch.Tensor, L: torch.Tensor) -> None:
        self.fi, self.L = fi, L

    @staticmethod
    def of(H: torch.Tensor, fi: torch.Tensor) -> Optional["_Factor"]:
        """The factor of H[fi, fi], or None where float32 Cholesky fails."""
        # index_select, not H[fi[:, None], fi]: advanced indexing took 4x as long here
        A = H.index_select(0, fi).index_select(1, fi)
        L, info = torch.linalg.cholesky_ex(A, out=(A, torch.empty((), dtype=torch.int32, device=A.device)))
        return _Factor(fi, L) if int(info) == 0 else None

    def solve(self, H: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """H[fi, fi]^-1 b: one solve plus one refinement with a float64 residual.

        The refinement recovers most of a float64 solve's accuracy at half its cost; the
        residual reads H's rows a block at a time (no second copy of the system).
        """
        fi = self.fi
        x = _cholesky_solve(self.L, b)
        x64 = x.double()
        r = b.double()
        for i in range(0, len(fi), _REFINE_ROWS):
            r[i:i + _REFINE_ROWS] -= H.index_select(0, fi[i:i + _REFINE_ROWS]).index_select(1, fi).double() @ x64
        return x + _cholesky_solve(self.L, r.float())

    def without(self, H: torch.Tensor, keep: torch.Tensor) -> Optional["_Factor"]:
        """The factor of the block on fi[keep]: the part before the first dropped coordinate is kept,
        the tail's Schur complement refactored (None where that fails)."""
        p = int(torch.nonzero(~keep)[0, 0])
        fi = self.fi[keep]
        tail_at = torch.nonzero(keep[p:])[:, 0] + p
        m = len(fi)
        L = torch.empty((m, m), device=H.device)
        L[:p, :p] = self.L[:p, :p]
        L21 = self.L.index_select(0, tail_at)[:, :p]
        L[p:, :p] = L21
        tail = fi[p:]
        S = H.index_select(0, tail).index_select(1, tail)
        S.addmm_(L21, L21.T, alpha=-1)
        Ls, info = torch.linalg.cholesky_ex(S, out=(S, torch.empty((), dtype=torch.int32, device=S.device)))
        if int(info) != 0:
            return None
        L[p:, p:] = Ls
        return _Factor(fi, L)


def _spd_solve(H: torch.Tensor, fi: torch.Tensor, b: torch.Tensor) -> Optional[torch.Tensor]:
    """A^-1 b for the principal block A = H[fi, fi] (symmetric positive definite): float32
    Cholesky plus one float64 refinement, float64 throughout if float32 fails.

    With working sets of thousands of columns these systems are a Newton step's largest
    allocations: one copy of A exists, factored in place.
    """
    fac = _Factor.of(H, fi)
    if fac is not None:
        return fac.solve(H, b)
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
