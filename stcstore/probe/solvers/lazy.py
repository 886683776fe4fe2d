"""A standardised design that exists only as raw column blocks: rows are built when a pass reads them.

An aggregation design concatenates the kept columns of many layers. Held whole in float32 it
is twice the raw float16 columns it is made of and grows with the row count; as
`StandardizedColumns` it is those raw blocks (views, no copy) plus each column's mean and
scale, and a solver that streams it (the torch backend) standardises one row chunk at a time
into a buffer of bounded size. Solvers that need a matrix get one from `np.asarray`.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..standardize import host_tensor, standardize_, standardize_into

__all__ = ["StandardizedColumns", "as_matrix"]


class StandardizedColumns:
    """The float32 design [(raw_0 - mean_0) / scale_0, (raw_1 - mean_1) / scale_1, ...], built on demand.

    `parts` are (raw (n, m_i) in any float dtype, mean (m_i,), scale (m_i,)); every raw block
    has the same n rows. The arithmetic is that of `standardize.standardize_columns`.
    """

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_rows: Optional[int] = None):
        self.parts = [(raw, np.asarray(mean, dtype=np.float64).astype(np.float32),
                       (1.0 / np.asarray(scale, dtype=np.float64)).astype(np.float32)) for raw, mean, scale in parts]
        ns = {raw.shape[0] for raw, _, _ in self.parts}
        if len(ns) > 1:
            raise ValueError(f"column blocks have different row counts {sorted(ns)}")
        n = ns.pop() if ns else int(n_rows or 0)
        widths = [raw.shape[1] for raw, _, _ in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self.shape = (int(n), int(self.offsets[-1]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self._mean = np.concatenate([m for _, m, _ in self.parts]) if self.parts else np.zeros(0, np.float32)
        self._inv = np.concatenate([i for _, _, i in self.parts]) if self.parts else np.zeros(0, np.float32)
        # per thread (a Newton step's models may build rows on several): (cols object, its column plan)
        self._plans = threading.local()

    @property
    def nbytes(self) -> int:
        """Bytes of the design if it were one float32 matrix."""
        return self.shape[0] * self.shape[1] * 4

    def rows(self, start: int, stop: int, cols: Optional[np.ndarray] = None,
             out: Optional[np.ndarray] = None) -> np.ndarray:
        """Standardised float32 rows [start, stop), all columns or only `cols` (sorted or not)."""
        n_cols = self.shape[1] if cols is None else len(cols)
        if out is None:
            out = np.empty((stop - start, n_cols), dtype=np.float32)
        if cols is None:
            for (raw, mean, inv), a, b in zip(self.parts, self.offsets[:-1], self.offsets[1:]):
                standardize_into(raw[start:stop], mean, inv, out[:, a:b])
            return out
        plan, mean, inv = self._column_plan(cols)
        o = torch.from_numpy(out)
        for p, sel, local in plan:
            raw = self.parts[p][0][start:stop]
            if 4 * len(local) >= raw.shape[1]:
                # most of the block: cast it whole, then gather in float32 (a float16 gather, by
                # NumPy or torch, took twice as long as the cast and the float32 gather together)
                o[:, sel] = host_tensor(raw).to(torch.float32).index_select(1, torch.from_numpy(local))
            else:
                # a few columns: gather them in the raw dtype, then cast only those
                o[:, sel] = torch.from_numpy(raw[:, local]).to(torch.float32)
        standardize_(o, mean, inv)
        return out

    def _column_plan(self, cols: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
        """Per block: (block, output positions, block columns) of `cols`, and their mean and 1 / scale.

        Kept, per thread, for the last `cols` object given: a pass asks for the same columns chunk
        after chunk.
        """
        last = getattr(self._plans, "last", None)
        if last is not None and last[0] is cols:
            return last[1]
        c = np.asarray(cols, dtype=np.int64)
        part = np.searchsorted(self.offsets, c, side="right") - 1
        plan = []
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            # sorted cols give each block one run of output columns: a slice copies fastest
            run = len(sel) and sel[-1] - sel[0] + 1 == len(sel)
            plan.append((int(p), slice(int(sel[0]), int(sel[-1]) + 1) if run else torch.from_numpy(sel),
                         c[sel] - self.offsets[p]))
        self._plans.last = (cols, (plan, self._mean[c], self._inv[c]))
        return self._plans.last[1]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.rows(0, self.shape[0])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"StandardizedColumns(shape={self.shape}, blocks={len(self.parts)})"


def as_matrix(X: Any) -> np.ndarray:
    """X as one contiguous float32 matrix (a StandardizedColumns is built whole)."""
    return np.ascontiguousarray(np.asarray(X), dtype=np.float32)
