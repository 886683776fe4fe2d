"""Refitting a chosen configuration on train + val: same features, same C, the standardisation
recomputed from train + val; the refit model is the one a user keeps, scored once on test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..store.reader import RunReader
from .aggregate import SITE_CODES
from .blocks import fit_path, read_columns, read_features
from .solvers.lazy import StandardizedColumns
from .spill import Scratch
from .splits import SplitPlan
from .standardize import StreamingScaler, standardize_columns

__all__ = ["Refit", "refit"]


@dataclass
class Refit:
    """A model refitted on train + val, restricted to its nonzero columns."""

    cols: np.ndarray          # (F_nz,) positions among the features given to `refit`
    coef: np.ndarray          # (n_out, F_nz)
    intercept: np.ndarray     # (n_out,)
    mean: np.ndarray          # (F_nz,) float64, train + val
    scale: np.ndarray         # (F_nz,)
    test_decision: np.ndarray  # (n_test, n_out)


def refit(solver: Any, reader: RunReader, plan: SplitPlan, row_maps: dict, pool: str, site: np.ndarray,
          layer: np.ndarray, index: np.ndarray, C: float,
          init: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Refit:
    """Fit features (site code, layer entry, neuron) of one pool on train + val at one C; decide on test.

    `init` is a start: the train-only fit at that C ((n_out, F) coefficients of the features
    in the order given, (n_out,) intercept); a solver that takes starts begins from it, or from
    zero if that is better (a single C from zero is the hardest problem of a path).

    Each layer's columns are read once in the store's dtype (train and val rows together, in a
    scratch file when large) with their train + val statistics; the design is standardised as
    the solver reads it, so no float32 copy of it grows with the row count. Test rows are read
    for the nonzero columns only.
    """
    site, layer, index = (np.asarray(a, dtype=np.int64) for a in (site, layer, index))
    names = {code: name for name, code in SITE_CODES.items()}
    # the design's columns go layer by layer; perm[j] is the given position of design column j
    perm = np.argsort(site * (1 << 21) + layer, kind="stable")
    n_tv = plan.n("train") + plan.n("val")
    need = len(index) * n_tv * np.dtype(reader.layout.dtype).itemsize
    with Scratch() as scratch:
        spill = scratch.spills(need)
        fit_parts, means, scales = [], [], []
        n_tr = plan.n("train")
        for s, l in sorted(set(zip(site.tolist(), layer.tolist()))):
            cols = perm[(site[perm] == s) & (layer[perm] == l)]
            tv = np.empty((n_tv, len(cols)), dtype=reader.layout.dtype)    # train rows, then val rows
            read_columns(reader, plan, row_maps, names[s], pool, l, index[cols], roles=(0, 1),
                         out=(tv[:n_tr], tv[n_tr:], tv[:0]))
            scaler = StreamingScaler().partial_fit(tv)
            fit_parts.append((scratch.file(tv, "refit") if spill else tv, scaler.mean_, scaler.scale_))
            means.append(scaler.mean_)
            scales.append(scaler.scale_)
            del tv
        X = StandardizedColumns(fit_parts, n_rows=n_tv)
        y = np.concatenate([plan.y["train"], plan.y["val"]])
        start = None if init is None else (np.asarray(init[0])[None, None][..., perm], np.asarray(init[1])[None, None])
        coef, icpt, _ = fit_path(solver, X, y, plan.n_classes, [C], None, start)
        del X, fit_parts[:]
    coef, icpt = coef[0, 0], icpt[0, 0]
    nz = np.flatnonzero(np.any(coef != 0, axis=0))
    mean = np.concatenate(means) if means else np.zeros(0)
    scale = np.concatenate(scales) if scales else np.zeros(0)
    # test rows of the nonzero columns only: a fraction of the kept ones
    *_, te = read_features(reader, plan, row_maps, pool, site[perm[nz]], layer[perm[nz]], index[perm[nz]], roles=(2,))
    dec = standardize_columns(te, np.arange(len(nz)), mean[nz], scale[nz]) @ coef[:, nz].T + icpt
    return Refit(cols=perm[nz], coef=coef[:, nz].copy(), intercept=icpt.copy(), mean=mean[nz], scale=scale[nz],
                 test_decision=dec)
