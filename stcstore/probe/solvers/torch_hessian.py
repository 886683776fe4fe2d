"""The Newton step's Hessian on a working set, kept per problem and updated row by row between steps."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from .torch_data import _Data
from .torch_threads import ProblemThreads

# rows of X whose working-set columns a Hessian gathers at a time
HESSIAN_ROWS = 256
# rows whose curvature is below DROP times the largest count as zero (confidently fitted samples)
DROP = 1e-3
# a row's cached curvature is kept while it is within STALE of its current value (relative)
STALE = 1e-2
# bytes of kept Hessians per fit at most (within a quarter of its memory budget): the six nested
# masks of a binary MiniLM path at full working sets (3,072 columns) take 6 x 38 MB; without a
# cap, a 3-class path at the same working sets would keep 6 x 270 MB
KEEP_BYTES = 256 << 20


def _pairs(K: int) -> list[tuple[int, int]]:
    """Class-block pairs (c1 <= c2) of a K-logit Hessian."""
    return [(c1, c2) for c1 in range(K) for c2 in range(c1, K)]


def _row_weights(a: torch.Tensor) -> torch.Tensor:
    """(n, pairs) per-row weights of each class-block pair: a_c1 (delta_c1c2 - a_c2); binary a (1 - a)."""
    K = a.shape[1]
    if K == 1:
        return a * (1 - a)
    return torch.stack([a[:, c1] * ((1.0 if c1 == c2 else 0.0) - a[:, c2]) for c1, c2 in _pairs(K)], dim=1)


class HessianCache:
    """Each problem's last (unscaled) Hessian, its columns and the row weights it was built with.

    From one Newton step to the next most rows' curvatures barely move, and near the optimum
    none do (the last two or three steps of a problem); the working set also changes little.
    So a problem's Hessian is updated, not rebuilt: rows whose curvature moved by more than
    STALE (relative) are re-added with their change, columns that entered the working set are
    computed whole, and the rest is reused. The Hessian used is then within STALE of the
    exact one on every row (a relative perturbation, (1 +- STALE) in the PSD order), next to
    the DROP rule that already leaves out rows of negligible curvature. The kept Hessians and
    row weights take at most `max_bytes` (their actual sizes: small working sets all fit); a
    problem that finds no room is rebuilt every step.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._bytes = 0
        # Hessians built from scratch and updated from a cached one
        self.built = 0
        self.updated = 0

    def hessian(self, data: _Data, key: int, cols: torch.Tensor, a: torch.Tensor, Cj: float) -> torch.Tensor:
        """C * Hessian of the summed loss over [features cols (sorted), intercept], per class block, with a
        tiny ridge: (K (k + 1))^2; from problem `key`'s kept one where cheaper, kept for its next step.
        (One problem's `build_hessians`, `scaled` and `put`.)"""
        (entry, updated), = build_hessians(data, [self.take(key)], [cols], a[:, None, :])
        self.put(key, entry, updated)
        return scaled(entry, Cj)

    def take(self, key: int) -> Optional[tuple]:
        """Remove and return problem `key`'s kept entry (None: it has none)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        return old

    def keep_only(self, keys: list[int]) -> None:
        """Keep the entries of problems `keys` only, renumbered 0, 1, ... in that order (a batch that
        dropped some problems)."""
        old, self._entries, self._bytes = self._entries, {}, 0
        for new, key in enumerate(keys):
            entry = old.pop(key, None)
            if entry is not None:
                self._entries[new] = entry
                self._bytes += _nbytes(entry)

    def put(self, key: int, entry: tuple, updated: bool) -> None:
        """Keep problem `key`'s entry for its next step if it fits max_bytes; count how it was made."""
        if updated:
            self.updated += 1
        else:
            self.built += 1
        size = _nbytes(entry)
        if self._bytes + size <= self.max_bytes:
            self._entries[key] = entry
            self._bytes += size


def scaled(entry: tuple, Cj: float) -> torch.Tensor:
    """C * the entry's Hessian with a tiny ridge, as a new tensor (the entry stays as it is).

    The ridge keeps the model strictly convex (the multinomial intercepts have a null
    direction, and a working set can be rank deficient).
    """
    out = entry[1] * Cj
    diag = torch.diagonal(out)
    diag += 1e-7 * diag.mean() + 1e-10
    return out


def build_hessians(data: _Data, olds: list[Optional[tuple]], cols: list[torch.Tensor], A: torch.Tensor,
                   threads: Optional[ProblemThreads] = None) -> list[tuple[tuple, bool]]:
    """Each problem's unscaled Hessian entry (cols, H, row weights) and whether it was updated from
    its old entry (one `take` returned, or None), in one pass over X's rows. `olds` is consumed:
    each is dropped once its problem is planned, so its memory serves the next.

    d^2 loss / dz_c1 dz_c2 = a_c1 (delta_c1c2 - a_c2) (binary: a (1 - a)); A holds the
    probabilities (n, P, K) at the problems' current weights. The pass builds each row chunk
    once, on the union of the working sets, and every problem takes its columns from it: the
    masks of a path are nested, so their working sets overlap (on the eta = 1 MiniLM ffn
    design the union was 2.6 times smaller than their sum), and a streamed design was read
    once per problem before. With `threads` (worth it for these sizes), the problems are split
    by their cost into a pass per thread.
    """
    jobs = []
    for j, c in enumerate(cols):
        old, olds[j] = olds[j], None
        jobs.append(_Job.plan(data, old, c, A[:, j, :]))
        del old
    sizes = [len(c) for c in cols]
    if threads is not None and threads.worth(sizes):
        # a pass per thread over its share of the problems (each builds its own chunks)
        threads.map(lambda group: _pass(data, group), _balanced(jobs, threads.n_threads))
    else:
        _pass(data, jobs)
    return [(job.finish(), job.updated) for job in jobs]


def _pass(data: _Data, jobs: list["_Job"]) -> None:
    """Add every row chunk of X to the jobs' Hessians, each chunk built once on the union of their columns."""
    union = torch.unique(torch.cat([job.cols for job in jobs]))          # sorted
    for job in jobs:
        job.at = None if len(job.cols) == len(union) else torch.searchsorted(union, job.cols)
    for s, e, XU in data.chunks(union, max_rows=HESSIAN_ROWS):
        for job in jobs:
            job.add_chunk(XU, s, e)


def _balanced(jobs: list["_Job"], n: int) -> list[list["_Job"]]:
    """The jobs in at most n groups of about equal cost (a product costs its working set squared)."""
    groups: list[list["_Job"]] = [[] for _ in range(n)]
    load = [0] * n
    for job in sorted(jobs, key=lambda job: -len(job.cols)):
        g = load.index(min(load))
        groups[g].append(job)
        load[g] += len(job.cols) ** 2
    return [g for g in groups if g]


class _Job:
    """One problem's Hessian while a pass builds it: what each row chunk adds to it."""

    def __init__(self, K: int, cols: torch.Tensor, H: torch.Tensor, D_used: torch.Tensor, add_rows: torch.Tensor,
                 add_w: torch.Tensor, new: Optional[torch.Tensor], updated: bool) -> None:
        self.K, self.cols, self.H, self.D_used, self.updated = K, cols, H, D_used, updated
        self.kk = len(cols) + 1
        self.edges = _tiles(len(cols))
        # rows added with weights add_w (changed rows' differences, or every kept row's weights)
        self.add_rows, self.add_w = add_rows, add_w
        # feature positions computed whole over every row of nonzero weight (columns that entered)
        self.new = new
        self.set_rows = None if new is None else D_used.abs().amax(dim=1) > 0
        self.acc = None if new is None else torch.zeros((len(_pairs(K)), len(new), self.kk), device=H.device)
        self.at: Optional[torch.Tensor] = None       # cols' positions in the pass's union of columns

    @staticmethod
    def plan(data: _Data, old: Optional[tuple], cols: torch.Tensor, a: torch.Tensor) -> "_Job":
        """What to add for row weights at probabilities a (n, K): to the old entry where that costs
        fewer rows, else from zero."""
        K = data.K
        curv = a * (1 - a)
        rowmax = curv.amax(dim=1)
        top = rowmax.max()
        kept = rowmax >= DROP * top
        D = _row_weights(a) * kept[:, None]
        if old is not None:
            o_cols, o_H, o_D = old
            kj, n_kept = int(cols.shape[0]), int(kept.sum())
            diff = D - o_D
            changed = diff.abs().amax(dim=1) > STALE * torch.maximum(rowmax, DROP * top)
            n_changed = int(changed.sum())
            new = ~torch.isin(cols, o_cols)
            n_new = int(new.sum())
            # in row x column^2 products: changed rows on the upper tiles (0.56 of a full product),
            # entering columns whole over every kept row, against every kept row on the tiles
            if 0.56 * n_changed * kj + n_new * n_kept < 0.56 * n_kept * kj:
                D_used = o_D.clone()
                D_used[changed] = D[changed]
                return _Job(K, cols, _carry(o_H, o_cols, cols, K), D_used, changed, diff,
                            torch.nonzero(new)[:, 0] if n_new else None, True)
        kk = int(cols.shape[0]) + 1
        H = torch.zeros((K * kk, K * kk), device=D.device)
        return _Job(K, cols, H, D, D.abs().amax(dim=1) > 0, D, None, False)

    def add_chunk(self, XU: torch.Tensor, s: int, e: int) -> None:
        """Add rows s..e (XU: on the pass's union of columns) to the Hessian and the entering columns."""
        for rows, w, whole in ((self.add_rows, self.add_w, False), (self.set_rows, self.D_used, True)):
            if rows is None:
                continue
            take = torch.nonzero(rows[s:e])[:, 0]
            if len(take) == 0:
                continue
            XS, Dc = XU, w[s:e]
            if len(take) < XS.shape[0]:
                XS, Dc = XS.index_select(0, take), Dc.index_select(0, take)
            if self.at is not None:
                XS = XS.index_select(1, self.at)
            (self._columns if whole else self._rows)(XS, Dc)

    def _rows(self, XS: torch.Tensor, Dc: torch.Tensor) -> None:
        """Add sum over rows of x x^T weighted by Dc's pair weights to H's upper tiles and intercept columns."""
        kk, kj = self.kk, self.kk - 1
        for p, (c1, c2) in enumerate(_pairs(self.K)):
            XD = XS * Dc[:, p, None]
            blk = self.H[c1 * kk:(c1 + 1) * kk, c2 * kk:(c2 + 1) * kk]
            _gram_add(XS, XD, blk[:kj, :kj], self.edges)
            blk[:kj, kj] += XD.sum(0)
            blk[kj, kj] += Dc[:, p].sum()

    def _columns(self, XS: torch.Tensor, Dc: torch.Tensor) -> None:
        """Accumulate the entering columns' rows of every block over these rows."""
        kj = self.kk - 1
        XP = XS.index_select(1, self.new)
        for p in range(len(_pairs(self.K))):
            XD = XP * Dc[:, p, None]
            self.acc[p, :, :kj].addmm_(XD.T, XS)
            self.acc[p, :, kj] += XD.sum(0)

    def finish(self) -> tuple:
        """The entry (cols, H, row weights): entering columns set whole, lower tiles mirrored."""
        kk, H = self.kk, self.H
        if self.acc is not None:
            for p, (c1, c2) in enumerate(_pairs(self.K)):
                blk = H[c1 * kk:(c1 + 1) * kk, c2 * kk:(c2 + 1) * kk]
                # each block is symmetric (its rows' weights are one per row), so rows and columns agree
                blk[self.new] = self.acc[p]
                blk[:, self.new] = self.acc[p].T
        _mirror(H, self.K, kk)
        return self.cols, H, self.D_used


def _nbytes(entry: tuple[torch.Tensor, ...]) -> int:
    """Bytes a cache entry holds."""
    return sum(t.nelement() * t.element_size() for t in entry)


def _coords(pos: torch.Tensor, kj: int, K: int) -> torch.Tensor:
    """Flat Hessian coordinates of feature positions `pos` and the intercept, class block by class block."""
    one = torch.cat([pos, torch.tensor([kj], device=pos.device)])
    return torch.cat([c * (kj + 1) + one for c in range(K)])


def _carry(o_H: torch.Tensor, o_cols: torch.Tensor, cols: torch.Tensor, K: int) -> torch.Tensor:
    """A Hessian on cols holding o_H's entries for the columns both sets share (zero elsewhere)."""
    if torch.equal(o_cols, cols):
        return o_H
    kj, o_kj = len(cols), len(o_cols)
    at = torch.searchsorted(o_cols, cols).clamp(max=max(o_kj - 1, 0))
    both = o_cols[at] == cols if o_kj else torch.zeros_like(cols, dtype=torch.bool)
    dst = _coords(torch.nonzero(both)[:, 0], kj, K)
    src = _coords(at[both], o_kj, K)
    N = K * (kj + 1)
    # two index_copy_ calls: advanced-index assignment of a 2-d block is several times slower
    part = torch.zeros((len(dst), N), device=o_H.device)
    part.index_copy_(1, dst, o_H.index_select(0, src).index_select(1, src))
    return torch.zeros((N, N), device=o_H.device).index_copy_(0, dst, part)


def _mirror(H: torch.Tensor, K: int, kk: int) -> None:
    """Fill each block's lower tiles and intercept row from its upper ones, and blocks below the diagonal."""
    kj = kk - 1
    edges = _tiles(kj)
    for c1, c2 in _pairs(K):
        blk = H[c1 * kk:(c1 + 1) * kk, c2 * kk:(c2 + 1) * kk]
        blk[kj, :kj] = blk[:kj, kj]
        for r0, r1 in zip(edges[:-1], edges[1:]):
            blk[r1:kj, r0:r1] = blk[r0:r1, r1:kj].T
        if c1 != c2:
            H[c2 * kk:(c2 + 1) * kk, c1 * kk:(c1 + 1) * kk] = blk


def _tiles(k: int) -> list[int]:
    """Tile edges of a symmetric k x k product: tiles of >= 160 columns keep GEMM efficiency,
    and 8 tiles do 56% of the full product's work."""
    nb = max(1, min(8, k // 160))
    return [round(i * k / nb) for i in range(nb + 1)]


def _gram_add(XS: torch.Tensor, XD: torch.Tensor, out: torch.Tensor, edges: list[int]) -> None:
    """out += XS^T XD on and above the diagonal tiles `edges` (a symmetric product), in place."""
    if len(edges) <= 2:
        out.addmm_(XS.T, XD)
        return
    for r0, r1 in zip(edges[:-1], edges[1:]):
        # one GEMM per tile row: the diagonal tile and everything right of it
        out[r0:r1, r0:].addmm_(XS[:, r0:r1].T, XD[:, r0:])
