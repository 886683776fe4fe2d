"""torch backend: all (mask, C) problems of a path in one batched solver, on CPU or CUDA.

Two algorithms share the data, the objective and the stopping test:

* ``newton`` (default up to 8 logits): proximal Newton on working sets, in the manner of
  newGLMNET (liblinear's L1 solver). Each step takes the Hessian of the loss on the
  working set (the nonzero weights plus the worst KKT violators, 1.25 times the support;
  updated from the problem's previous Hessian in the rows whose curvature moved by over 1%),
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

Modules: torch_data (the design and the passes over it), torch_dual (objective, dual point,
gap, bookkeeping), torch_newton and torch_fista (the two engines), torch_hessian (the Newton
step's Hessian, updated between steps), torch_model (the Newton step's quadratic model and
its solvers), torch_threads (a step's large models side by side on the CPU's threads); this
one holds the path.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ...errors import ConfigError
from .base import PathFit, PathStop, Solver, check_init, check_inputs, n_outputs
from ..memory import resolve_budget
from .torch_data import _np, _prepare, _prior_intercept, fp32_matmuls
from .torch_dual import _better_start
from .torch_fista import _solve_fista
from .torch_hessian import KEEP_BYTES, HessianCache
from .torch_newton import _solve_newton
from .torch_threads import ProblemThreads

__all__ = ["TorchSolver"]

log = logging.getLogger(__name__)

METHODS = ("auto", "newton", "fista")
PATHS = ("warm", "batch")
# above this many logits the K^2 Hessian blocks cost more than first-order steps
_NEWTON_MAX_OUT = 8
# largest expected Newton system (K x working set): 8192^2 float32 is 256 MiB
_NEWTON_MAX_COORDS = 8192


class TorchSolver(Solver):
    """Batched L1 logistic regression in torch (proximal Newton or FISTA), CPU or CUDA."""

    name = "torch"
    uses_init = True
    # takes a StandardizedColumns design as it is and builds its rows chunk by chunk
    streams_designs = True

    def __init__(self, device: str = "cpu", tol: float = 1e-4, method: str = "auto", path: str = "warm",
                 max_iter: Optional[int] = None, min_working_set: int = 128, max_working_set: int = 3072,
                 ws_growth: float = 1.25, inner_max_iter: int = 100, inner_rtol: float = 0.1,
                 memory_budget: Optional[int] = None, resident_design_bytes: Optional[int] = None,
                 settle_tol: Optional[float] = None) -> None:
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
        # a Newton system and its Cholesky copy stay within 2 x 36 MiB per logit (the support, and so
        # the working set, grows with n; a larger cap made peak memory grow with the row count)
        self.max_working_set = int(max_working_set)
        self.ws_growth = float(ws_growth)
        self.inner_max_iter = int(inner_max_iter)
        self.inner_rtol = float(inner_rtol)
        # Newton also stops a problem whose objective moved by under this (relative) in a clean
        # full step (torch_newton._settled); None: tol / 100, 0: only the gap test
        if settle_tol is not None and settle_tol < 0:
            raise ConfigError(f"settle_tol must be >= 0, got {settle_tol}")
        self.settle_tol = self.tol / 100 if settle_tol is None else float(settle_tol)
        if memory_budget is not None and memory_budget <= 0:
            raise ConfigError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        # bytes a fit may allocate on its device; None: a share of what is free when it starts
        self.memory_budget = memory_budget
        # bytes of a built design (StandardizedColumns) held whole on the CPU (None: STREAM_CHUNK_BYTES);
        # the search raises it to what its in-memory allowance leaves during aggregation
        self.resident_design_bytes = resident_design_bytes
        # how the last fit laid out its design: rows per chunk, chunk count, resident or streamed
        self.last_layout: dict[str, Any] = {}
        # how every problem fitted since this solver was made stopped (what benchmarks report)
        self.exit_summary: dict[str, Any] = {"problems": 0, "settled": 0, "max_rel_gap": 0.0,
                                             "max_rel_gap_not_settled": 0.0}

    def __repr__(self) -> str:
        return f"TorchSolver(device={self.device!r}, method={self.method!r}, tol={self.tol}, settle_tol={self.settle_tol})"

    def _method_for(self, K: int, n: int, d: int) -> str:
        if self.method != "auto":
            return self.method
        # Newton's Hessian has (K * working-set)^2 entries and K (K + 1) / 2 GEMMs per step; the
        # working set is capped (a problem whose support outgrows the cap goes on with FISTA)
        ws = min(d, n, self.max_working_set)
        return "newton" if K <= _NEWTON_MAX_OUT and K * ws <= _NEWTON_MAX_COORDS else "fista"

    def fit_path(self, X: Any, y: np.ndarray, n_classes: int, Cs: Sequence[float],
                 masks: Optional[np.ndarray] = None, init: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 stop: Optional[PathStop] = None) -> PathFit:
        """Fit every (mask, C) problem; solutions are exact to the relative duality gap `tol`.

        `stop` is honoured on the warm path; the batch path fits every C at once, so it fits them all.
        """
        y_np, Cs_t, masks_np = check_inputs(X, y, n_classes, Cs, masks)
        init = check_init(init, masks_np.shape[0], len(Cs_t), n_outputs(n_classes), masks_np.shape[1])
        with fp32_matmuls():
            return self._fit(X, y_np, n_classes, Cs_t, masks_np, init, stop)

    def _fit(self, X: Any, y_np: np.ndarray, n_classes: int, Cs_t: tuple[float, ...], masks_np: np.ndarray,
             init: Optional[tuple[np.ndarray, np.ndarray]], stop: Optional[PathStop]) -> PathFit:
        t0 = time.perf_counter()
        n, d = X.shape
        K = n_outputs(n_classes)
        method = self._method_for(K, n, d)
        M, nC = masks_np.shape[0], len(Cs_t)
        # problems solved at once: one C at a time on the warm path
        at_once = M if self.path == "warm" else M * nC
        # on the CPU a step's large models run side by side, one per intra-op thread (torch_threads)
        threads = ProblemThreads() if method == "newton" and self._device.type == "cpu" else None
        # Newton's dense systems: H, its support copy and a float64 copy for the fallback solve,
        # for as many models as run at once
        kw = min(d, n, self.max_working_set) + 1
        extra = 24 * (K * kw) ** 2 * (threads.n_threads if threads else 1) if method == "newton" else 0
        budget = resolve_budget(str(self._device), self.memory_budget)
        hessians = None
        if method == "newton":
            # each problem's Hessian kept for its next step (and the next C's first), within KEEP_BYTES
            # and a quarter of the budget; a problem without one rebuilds its Hessian every step
            per = 4 * (K * kw) ** 2 + n * K * (K + 1) * 2
            keep = min(KEEP_BYTES, at_once * per, max(0, budget // 4 - extra))
            hessians = HessianCache(keep)
            extra += keep
        data = _prepare(X, y_np, n_classes, self._device, budget, at_once, extra,
                        resident_bytes=self.resident_design_bytes)
        self.last_layout = {"budget": budget, "rows": data.rows, "n_chunks": data.n_chunks,
                            "resident": data._stager is None and data.source is None}
        engine = _solve_newton if method == "newton" else _solve_fista
        max_iter = self.max_iter or (100 if method == "newton" else 20000)
        masks_t = torch.as_tensor(masks_np, device=self._device)
        coef = np.zeros((M, nC, K, d), dtype=np.float32)
        icpt = np.zeros((M, nC, K), dtype=np.float32)
        obj = np.zeros((M, nC))
        gap = np.zeros((M, nC))
        n_iter = np.zeros((M, nC), dtype=np.int64)
        settled = np.zeros((M, nC), dtype=bool)
        fitted = np.zeros((M, nC), dtype=bool)
        b_prior = _prior_intercept(data)
        if init is not None:
            init_W = torch.as_tensor(init[0], device=self._device) * masks_t[:, None, None, :]
            init_b = torch.as_tensor(init[1], device=self._device)
        opts: dict[str, Any] = dict(tol=self.tol, max_iter=max_iter)
        if method == "newton":
            opts.update(min_ws=self.min_working_set, max_ws=self.max_working_set, ws_growth=self.ws_growth,
                        inner_max_iter=self.inner_max_iter, inner_rtol=self.inner_rtol, settle_tol=self.settle_tol,
                        hessians=hessians, threads=threads)
        with threads or nullcontext():
            if self.path == "warm":
                # smallest C first: its solution is sparse and cheap, and starts the next C close by
                W = torch.zeros((M, K, d), device=self._device)
                b = b_prior.expand(M, K).clone()
                # masks still on the path (W, b and the kept Hessians follow this order); `sel` indexes
                # the full arrays, a plain slice while every mask is on
                active = np.arange(M)
                sel: Any = slice(None)
                for ci in np.argsort(Cs_t, kind="stable"):
                    C = torch.full((len(active),), Cs_t[ci], dtype=torch.float64, device=self._device)
                    if init is not None:
                        W, b = _better_start(data, C, (W, b), (init_W[sel, ci], init_b[sel, ci]))
                    res = engine(data, C, masks_t[sel], W, b, **opts)
                    W, b = res.W, res.b
                    coef[active, ci], icpt[active, ci] = _np(res.W), _np(res.b)
                    obj[active, ci], gap[active, ci] = res.objective, res.gap
                    n_iter[active, ci], settled[active, ci] = res.n_iter, res.settled
                    fitted[active, ci] = True
                    if stop is None:
                        continue
                    go_on = ~np.asarray(stop(int(ci), active.copy(), coef[active, ci], icpt[active, ci]), dtype=bool)
                    if not go_on.all():
                        keep = np.flatnonzero(go_on)
                        if hessians is not None:
                            hessians.keep_only(keep.tolist())
                        W, b, active = W[keep], b[keep], active[keep]
                        sel = torch.as_tensor(active, device=self._device)
                        if len(active) == 0:
                            break
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
                settled[:] = res.settled.reshape(M, nC)
                fitted[:] = True
        if K > 1:
            # the softmax is invariant to a common shift of the intercepts: report them centred
            icpt -= icpt.mean(axis=-1, keepdims=True)
        log.debug("torch %s path: %d masks x %d C on %s in %.2fs, iterations %s, max rel gap %.1e",
                  method, M, nC, self.device, time.perf_counter() - t0, n_iter.tolist(), float(np.max(gap)))
        if hessians is not None:
            log.debug("torch newton: %d Hessians built, %d updated from the previous step's", hessians.built,
                      hessians.updated)
        self._note_exit(gap[fitted], settled[fitted])
        return PathFit(coef=coef, intercept=icpt, objective=obj, n_iter=n_iter, Cs=Cs_t, rel_gap=gap,
                       settled=settled, fitted=fitted)

    def _note_exit(self, gap: np.ndarray, settled: np.ndarray) -> None:
        s = self.exit_summary
        s["problems"] += int(gap.size)
        s["settled"] += int(settled.sum())
        s["max_rel_gap"] = max(s["max_rel_gap"], float(np.max(gap, initial=0.0)))
        s["max_rel_gap_not_settled"] = max(s["max_rel_gap_not_settled"], float(np.max(gap[~settled], initial=0.0)))

