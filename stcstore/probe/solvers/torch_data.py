"""The torch solver's data: the design on its device, and the passes over it every engine shares.

Every pass over X (logits, X^T R, the Hessian's Gram products, the Lipschitz power iteration)
runs over row chunks of one size, set by the memory budget: one chunk (X as it is) when the
design and the solver's state fit; several when they do not. A design that does not fit on
the device at all stays on the host, and its chunks are streamed to the device through two
pinned staging buffers. Results do not depend on the chunking beyond float32 summation order.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import DataError
from ..memory import format_bytes
from .base import n_outputs
from .lazy import StandardizedColumns

log = logging.getLogger(__name__)

# fewer rows per chunk would make every pass a loop of tiny matmuls
MIN_CHUNK_ROWS = 16
# a design given as StandardizedColumns is built a row chunk of at most this size at a time, every
# pass (a smaller one, or one within the caller's resident_bytes, is built once, whole): so the
# host never holds it in float32 beyond a fixed size, whatever n
STREAM_CHUNK_BYTES = 8 << 20


@dataclass
class _Data:
    """The design shared by every problem: X, labels and the constants the dual point needs."""

    X: Optional[torch.Tensor]  # (n, d) float32, on `device` (resident) or on the host (streamed); None: `source`
    y: torch.Tensor        # (n,) int64
    Y: torch.Tensor        # (n, K) float32: one-hot, or y itself for one logit
    K: int                 # number of logits
    colsum: torch.Tensor   # (d,) float64, X^T 1
    XtY: torch.Tensor      # (K, d) float64, (X^T Y)^T
    ybar: torch.Tensor     # (K,) float64, mean of Y's columns
    device: torch.device = torch.device("cpu")
    rows: int = 1 << 62    # rows per chunk of every pass over X
    _stager: Optional["_Stager"] = field(default=None, repr=False)
    # a design built row chunk by row chunk on the host (X is None then), into a buffer per
    # thread (a Newton step's models may run on several: torch_threads)
    source: Optional[StandardizedColumns] = field(default=None, repr=False)
    _hosts: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def binary(self) -> bool:
        return self.K == 1

    @property
    def n(self) -> int:
        return (self.X if self.source is None else self.source).shape[0]

    @property
    def d(self) -> int:
        """Columns of the design."""
        return (self.X if self.source is None else self.source).shape[1]

    @property
    def n_chunks(self) -> int:
        """How many row chunks each pass over X takes."""
        return -(-self.n // self.rows)

    def chunks(self, cols: Optional[torch.Tensor] = None, max_rows: Optional[int] = None
               ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, rows of X on the device) for each row chunk, in order; only `cols` if given.

        `max_rows` makes chunks smaller than the layout's (to bound what a caller derives from
        one). A chunk is valid until the same thread asks for the next one (a built design reuses
        one buffer per thread).
        """
        n = self.n
        step = self.rows if max_rows is None else max(1, min(self.rows, int(max_rows)))
        c = None if cols is None or self.source is None else cols.cpu().numpy()
        k = self.d if cols is None else len(cols)
        if step >= n and self._stager is None and self.source is None:
            yield 0, n, (self.X if cols is None else self.X.index_select(1, cols))
            return
        for i, s in enumerate(range(0, n, step)):
            e = min(s + step, n)
            if self.source is not None:
                Xc = torch.from_numpy(self.source.rows(s, e, c, out=self._host()[:(e - s) * k].reshape(e - s, k)))
                yield s, e, (Xc if self._stager is None else self._stager.fetch(i, Xc))
                continue
            Xc = self.X[s:e] if self._stager is None else self._stager.fetch(i, self.X[s:e])
            yield s, e, (Xc if cols is None else Xc.index_select(1, cols))

    def _host(self) -> np.ndarray:
        """This thread's buffer for rows built from `source` (rows x d float32, made on first use)."""
        buf = getattr(self._hosts, "buf", None)
        if buf is None:
            buf = self._hosts.buf = np.empty(self.rows * self.d, dtype=np.float32)
        return buf


class _Stager:
    """Two pinned host buffers that row chunks alternate through on their way to the GPU.

    The copy of chunk i + 1 is queued while chunk i is used; a buffer is refilled only after
    the copy that last read it has finished (its event). Host memory: two chunks, whatever n.
    """

    def __init__(self, rows: int, d: int, device: torch.device) -> None:
        self.device = device
        self.bufs = [torch.empty((rows, d), dtype=torch.float32, pin_memory=True) for _ in range(2)]
        self.events: list[Optional[Any]] = [None, None]

    def fetch(self, i: int, src: torch.Tensor) -> torch.Tensor:
        """src (host rows) as a device tensor, copied asynchronously through buffer i % 2."""
        j = i % 2
        if self.events[j] is not None:
            self.events[j].synchronize()
        buf = self.bufs[j].view(-1)[: src.numel()].view(src.shape)
        buf.copy_(src)
        out = buf.to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        self.events[j] = ev
        return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


@contextmanager
def fp32_matmuls() -> Iterator[None]:
    """True float32 matmuls inside the block (no TF32), the caller's setting restored after.

    The duality-gap tolerance assumes float32 products: TF32's 10-bit mantissa would leave
    the gap stalled far above it.
    """
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def state_bytes(n: int, d: int, K: int, P: int) -> int:
    """Device bytes of the solver's state for P problems besides X: logits, residuals, weights."""
    # per row and logit: about 8 float32 (logits, probabilities, steps) and 5 float64 (line
    # search, dual point) arrays; per weight: about 10 float32 and 3 float64 copies
    return n * P * K * (8 * 4 + 5 * 8) + P * K * d * (10 * 4 + 3 * 8) + n * (K + 2) * 8


def _to_tensor(X: Any) -> torch.Tensor:
    """X as a contiguous float32 tensor where it lives; CuPy arrays arrive through DLPack without a copy."""
    if isinstance(X, torch.Tensor):
        t = X
    elif isinstance(X, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    elif hasattr(X, "__dlpack__"):
        t = torch.from_dlpack(X)
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(X), dtype=np.float32))
    return t.to(dtype=torch.float32).contiguous()


def _prepare(X: Any, y: np.ndarray, n_classes: int, device: torch.device, budget: Optional[int] = None,
             n_problems: int = 1, extra_bytes: int = 0, resident_bytes: Optional[int] = None) -> _Data:
    """The design on `device` (or streamed from the host), chunked to fit `budget` bytes.

    A built design (StandardizedColumns) on the CPU is held whole when it is at most
    `resident_bytes` or STREAM_CHUNK_BYTES, else rebuilt a chunk at a time every pass (on
    MiniLM x Rotten Tomatoes, rebuilding took a sixth of the aggregation time).
    """
    source = X if isinstance(X, StandardizedColumns) else None
    n, d = X.shape if source is not None else (0, 0)
    hold = max(STREAM_CHUNK_BYTES, resident_bytes or 0)
    if source is not None and (device.type == "cpu" and source.nbytes <= hold):
        source, X = None, source.rows(0, n)   # small enough to build once
    Xt = None if source is not None else _to_tensor(X)
    if Xt is not None:
        n, d = Xt.shape
    K = n_outputs(n_classes)
    state = state_bytes(n, d, K, n_problems) + extra_bytes
    on_device = Xt is not None and Xt.device == device
    copy = 0 if on_device else n * d * 4
    budget = (1 << 62) if budget is None else int(budget)
    # a design already on the device stays there; the host is the device on the CPU (a built
    # design is streamed there, never held whole in float32); a GPU takes what fits its budget
    if source is not None:
        resident = device.type != "cpu" and copy + state <= budget
    else:
        resident = on_device or device.type == "cpu" or copy + state <= budget
    if resident and source is not None:
        Xt = _build_on(source, device, max(MIN_CHUNK_ROWS, STREAM_CHUNK_BYTES // max(1, d * 4)))
        source = None
    elif resident:
        Xt = Xt.to(device)
    # per chunk row: its copy from the host when streamed, the Hessian's gathered columns and
    # their weighted copy (at most d wide each), and the chunk's logits
    per_row = d * 4 * (2 if resident else 3) + n_problems * K * 4
    free = budget - state - (copy if resident else 0)
    rows = int(min(n, max(MIN_CHUNK_ROWS, free // per_row)))
    if source is not None:
        rows = min(rows, max(MIN_CHUNK_ROWS, STREAM_CHUNK_BYTES // max(1, d * 4)))
    streamed = not resident and device.type != "cpu"
    stager = _Stager(rows, d, device) if streamed else None
    if streamed:
        log.info("torch solver: the %d x %d design (%s) does not fit the memory budget %s on %s: "
                 "streaming it from the host in %d chunks of %d rows", n, d, format_bytes(n * d * 4),
                 format_bytes(budget), device, -(-n // rows), rows)
    elif rows < n:
        log.debug("torch solver: %d chunks of %d rows to stay within %s", -(-n // rows), rows, format_bytes(budget))
    yt = torch.as_tensor(y, device=device)
    Y = yt[:, None].float() if K == 1 else F.one_hot(yt, n_classes).float()
    data = _Data(X=Xt, y=yt, Y=Y, K=K, colsum=torch.zeros(d, dtype=torch.float64, device=device),
                 XtY=torch.zeros((K, d), dtype=torch.float64, device=device), ybar=Y.double().mean(0),
                 device=device, rows=rows, _stager=stager, source=source)
    finite = torch.ones((), dtype=torch.bool, device=device)
    for s, e, Xc in data.chunks():
        # sub-chunks: a float64 copy of a whole chunk would double the probe's peak memory
        for c in Xc.split(1024):
            finite &= torch.isfinite(c).all()
            data.colsum += c.sum(0, dtype=torch.float64)
        data.XtY += (Y[s:e].T @ Xc).double()
    if not bool(finite):
        raise DataError("X has NaN or infinite values (in float32): check the stored activations")
    return data


def _build_on(source: StandardizedColumns, device: torch.device, rows: int) -> torch.Tensor:
    """A built design as one float32 tensor on `device`, filled a row chunk at a time from the host."""
    n, d = source.shape
    out = torch.empty((n, d), dtype=torch.float32, device=device)
    buf = np.empty((min(rows, n), d), dtype=np.float32)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        out[s:e].copy_(torch.from_numpy(source.rows(s, e, out=buf[:e - s])))
    return out


def _prior_intercept(data: _Data) -> torch.Tensor:
    """The intercept of the all-zero model: a good start for the smallest C."""
    p = data.ybar.clamp(1e-12, 1 - 1e-12)
    if data.binary:
        return torch.log(p / (1 - p)).float()
    lp = torch.log(p)
    return (lp - lp.mean()).float()



def _logits(data: _Data, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits (n, P, K) of P problems with one matmul per row chunk against the shared X."""
    P, K, d = W.shape
    Wt = W.reshape(P * K, d).T
    Z = torch.empty((data.n, P * K), device=data.device)
    for s, e, Xc in data.chunks():
        torch.mm(Xc, Wt, out=Z[s:e])
    return Z.view(-1, P, K) + b


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
    """X^T R for residuals (n, P, K): (P, K, d), one matmul per row chunk, summed."""
    n, P, K = R.shape
    R2 = R.reshape(n, P * K)
    G: Optional[torch.Tensor] = None
    for s, e, Xc in data.chunks():
        if G is None:
            G = R2[s:e].T @ Xc
        else:
            G.addmm_(R2[s:e].T, Xc)
    return G.view(P, K, -1)


def _sq_norm_aug(data: _Data, iters: int = 30) -> torch.Tensor:
    """||[X, 1]||_2^2 by power iteration (the Lipschitz scale of the loss with an intercept)."""
    d = data.d
    v = torch.ones(d + 1, device=data.device, dtype=torch.float32) / float(np.sqrt(d + 1))
    s = torch.tensor(1.0, device=data.device)
    u = torch.empty(data.n, device=data.device)
    for _ in range(iters):
        g = torch.zeros(d, device=data.device)
        for a, e, Xc in data.chunks():
            torch.mv(Xc, v[:d], out=u[a:e])
            u[a:e] += v[d]
            g.addmv_(Xc.T, u[a:e])
        v = torch.cat([g, u.sum()[None]])
        s = v.norm()
        v = v / s.clamp(min=1e-30)
    return s.double()



def _loss64(data: _Data, Z: torch.Tensor) -> torch.Tensor:
    """Per-row losses (n, p) in float64 from float64 logits (n, p, K)."""
    if data.binary:
        z = Z[..., 0]
        return F.softplus(z) - data.Y.double() * z
    zy = Z.gather(-1, data.y[:, None, None].expand(-1, Z.shape[1], 1))[..., 0]
    return torch.logsumexp(Z, dim=-1) - zy



def _soft(x: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (x.abs() - thr).clamp(min=0)

