"""The Newton step's Hessian on a working set, kept per problem and updated row by row between steps."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from .torch_data import _Data

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
        tiny ridge: (K (k + 1))^2; from problem `key`'s kept one where cheaper, kept for its next step."""
        H, entry, updated = self.build(data, self.take(key), cols, a, Cj)
        self.put(key, entry, updated)
        return H

    def take(self, key: int) -> Optional[tuple]:
        """Remove and return problem `key`'s kept entry (None: it has none)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        return old

    def build(self, data: _Data, old: Optional[tuple], cols: torch.Tensor, a: torch.Tensor, Cj: float
              ) -> tuple[torch.Tensor, tuple, bool]:
        """The scaled Hessian (see `hessian`), the entry to keep, and whether it was updated from `old`
        (an entry `take` returned). Reads nothing shared but the design: problems may run on threads.

        d^2 loss / dz_c1 dz_c2 = a_c1 (delta_c1c2 - a_c2) (binary: a (1 - a)); `a` holds the
        probabilities (n, K) at the current weights. The ridge keeps the model strictly convex
        (the multinomial intercepts have a null direction, and a working set can be rank deficient).
        """
        curv = a * (1 - a)
        rowmax = curv.amax(dim=1)
        top = rowmax.max()
        kept = rowmax >= DROP * top
        D = _row_weights(a) * kept[:, None]
        H, D_used, updated = _update(data, old, cols, D, torch.maximum(rowmax, DROP * top), int(kept.sum()))
        out = H * Cj
        diag = torch.diagonal(out)
        diag += 1e-7 * diag.mean() + 1e-10
        return out, (cols, H, D_used), updated

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


def _update(data: _Data, old: Optional[tuple], cols: torch.Tensor, D: torch.Tensor, scale: torch.Tensor,
            n_kept: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The unscaled Hessian for row weights D on cols, from a kept one where that costs fewer rows;
    with the row weights it holds and whether it was updated (not built whole)."""
    K = data.K
    kj = int(cols.shape[0])
    kk = kj + 1
    if old is not None:
        o_cols, o_H, o_D = old
        changed = (D - o_D).abs().amax(dim=1) > STALE * scale
        n_changed = int(changed.sum())
        new = ~torch.isin(cols, o_cols)
        n_new = int(new.sum())
        # in row x column^2 products: changed rows on the upper tiles (0.56 of a full product),
        # entering columns whole over every kept row, against every kept row on the tiles
        if 0.56 * n_changed * kj + n_new * n_kept < 0.56 * n_kept * kj:
            H = _carry(o_H, o_cols, cols, K)
            D_used = o_D.clone()
            if n_changed:
                D_used[changed] = D[changed]
                _add_rows(H, data, cols, D - o_D, changed, K, kk)
            if n_new:
                _set_columns(H, data, cols, D_used, torch.nonzero(new)[:, 0], K, kk)
            _mirror(H, K, kk)
            return H, D_used, True
    H = torch.zeros((K * kk, K * kk), device=D.device)
    _add_rows(H, data, cols, D, D.abs().amax(dim=1) > 0, K, kk)
    _mirror(H, K, kk)
    return H, D, False


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


def _weighted_rows(data: _Data, cols: torch.Tensor, D: torch.Tensor, rows: torch.Tensor
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(X rows on cols, their weights D) of the rows flagged in `rows`, HESSIAN_ROWS at a time."""
    for s, e, XS in data.chunks(cols, max_rows=HESSIAN_ROWS):   # (rows, kj), contiguous
        take = torch.nonzero(rows[s:e])[:, 0]
        if len(take) == 0:
            continue
        Dc = D[s:e]
        if len(take) < XS.shape[0]:
            XS, Dc = XS.index_select(0, take), Dc.index_select(0, take)
        yield XS, Dc


def _add_rows(H: torch.Tensor, data: _Data, cols: torch.Tensor, D: torch.Tensor, rows: torch.Tensor,
              K: int, kk: int) -> None:
    """Add sum over `rows` of x x^T weighted by D's pair weights to H's upper tiles and intercept columns."""
    kj = kk - 1
    edges = _tiles(kj)
    for XS, Dc in _weighted_rows(data, cols, D, rows):
        for p, (c1, c2) in enumerate(_pairs(K)):
            XD = XS * Dc[:, p, None]
            blk = H[c1 * kk:(c1 + 1) * kk, c2 * kk:(c2 + 1) * kk]
            _gram_add(XS, XD, blk[:kj, :kj], edges)
            blk[:kj, kj] += XD.sum(0)
            blk[kj, kj] += Dc[:, p].sum()


def _set_columns(H: torch.Tensor, data: _Data, cols: torch.Tensor, D: torch.Tensor, pos: torch.Tensor,
                 K: int, kk: int) -> None:
    """Compute whole the rows and columns of H at feature positions `pos` (every block, intercept included)."""
    kj = kk - 1
    P = len(_pairs(K))
    acc = torch.zeros((P, len(pos), kk), device=H.device)
    for XS, Dc in _weighted_rows(data, cols, D, D.abs().amax(dim=1) > 0):
        XP = XS.index_select(1, pos)
        for p in range(P):
            XD = XP * Dc[:, p, None]
            acc[p, :, :kj].addmm_(XD.T, XS)
            acc[p, :, kj] += XD.sum(0)
    for p, (c1, c2) in enumerate(_pairs(K)):
        blk = H[c1 * kk:(c1 + 1) * kk, c2 * kk:(c2 + 1) * kk]
        # each block is symmetric (its rows' weights are one per row), so rows and columns agree
        blk[pos] = acc[p]
        blk[:, pos] = acc[p].T


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
