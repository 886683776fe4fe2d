"""Stage 1 of the method: one L1 probe per (site, pool, layer), its C chosen on val, its neurons
ranked; the fit is checkpointed (shared by the run's experiments) and the kept columns are
read in the store's dtype only when an aggregation still needs them."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..store.reader import RunReader
from .aggregate import LayerProbe
from .blocks import Block, fit_path, load_block, read_columns, val_accuracy_raw, val_key
from .checkpoints import LayerFit, LayerFitCache
from .sparsify import keep_counts, ranking
from .spill import Scratch
from .splits import SplitPlan
from .standardize import StatsCache

__all__ = ["layer_probe", "kept_bytes", "read_kept_columns", "layer_entry"]


def layer_probe(solver: Any, fits: LayerFitCache, reader: RunReader, plan: SplitPlan, row_maps: dict,
                 cache: StatsCache, site: str, pool: str, layer: int, y_tr: np.ndarray, y_va: np.ndarray, K: int,
                 Cs: Sequence[float], etas: Sequence[float], *, timer: Any) -> LayerProbe:
    """One layer's probe: its fit (from the checkpoint cache, or fitted and checkpointed), no columns yet."""
    fit = fits.load(site, pool, layer)
    with timer("load"):
        # a checkpointed fit needs no rows here; the scaler comes from the statistics cache
        blk = load_block(reader, plan, row_maps, site, pool, layer, cache, roles=(0, 1) if fit is None else ())
    if fit is None:
        with timer("probes"):
            fit = _fit_layer(solver, blk, y_tr, y_va, K, Cs)
        fits.save(site, pool, layer, fit)
    scaler = blk.scaler
    del blk
    w = fit.coef
    order = ranking(w)
    none = np.zeros((0, len(order)), dtype=reader.layout.dtype)
    return LayerProbe(
        site=site, pool=pool, layer=layer, C=fit.C, val=fit.val, n_nonzero=fit.n_nonzero, val_by_C=fit.val_by_C,
        coef=w, intercept=fit.intercept, order=order, counts=keep_counts(w, etas),
        mean=scaler.mean_[order], scale=scaler.scale_[order], X_train=none, X_val=none, X_test=none,
    )


def kept_bytes(probes: Sequence[LayerProbe], plan: SplitPlan, raw_dtype: Any) -> int:
    """Bytes of the kept train and val columns of some layer probes, in the store's dtype."""
    return sum(len(p.order) for p in probes) * (plan.n("train") + plan.n("val")) * np.dtype(raw_dtype).itemsize


def read_kept_columns(p: LayerProbe, reader: RunReader, plan: SplitPlan, row_maps: dict,
                      spill: Optional[Scratch] = None) -> None:
    """Give a layer probe its kept train and val columns, in the store's dtype, for aggregation.

    Read in a second pass once every layer of the pool is fitted: the float32 block of a fit
    never coexists with them. In scratch files when `spill` is given. No test columns: only
    the chosen configuration meets the test rows, read again at the end.
    """
    tr, va, te = read_columns(reader, plan, row_maps, p.site, p.pool, p.layer, p.order, roles=(0, 1))
    if spill is not None:
        tr, va = spill.file(tr, "train"), spill.file(va, "val")
    p.X_train, p.X_val, p.X_test = tr, va, te


def _fit_layer(solver: Any, blk: Block, y_tr: np.ndarray, y_va: np.ndarray, K: int, Cs: Sequence[float]) -> LayerFit:
    """Fit every C on one block and choose C on val."""
    coef, icpt, _ = fit_path(solver, blk.X_train, y_tr, K, Cs, None)
    coef, icpt = coef[0], icpt[0]                          # (n_C, n_out, d), (n_C, n_out)
    val = val_accuracy_raw(blk.V, blk.scaler, coef, icpt, y_va)
    nnz = np.array([int(np.count_nonzero(np.any(c != 0, axis=0))) for c in coef])
    # best val, then fewer nonzero weights, then the smaller C
    ci = min(range(len(Cs)), key=lambda i: (val_key(val[i], nnz[i]), Cs[i]))
    return LayerFit(C=float(Cs[ci]), val=float(val[ci]), n_nonzero=int(nnz[ci]), val_by_C=[float(v) for v in val],
                    coef=coef[ci].copy(), intercept=icpt[ci].copy())


def layer_entry(p: LayerProbe) -> dict[str, Any]:
    # test stays null: the test split is scored only for the winner and the baselines
    return {"site": p.site, "pool": p.pool, "layer": p.layer, "C": p.C, "val": p.val, "test": None,
            "n_nonzero": p.n_nonzero, "val_by_C": p.val_by_C}
