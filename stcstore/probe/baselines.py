"""The baselines STC is compared with: the last layer, the best single layer, all layers concatenated.

The first two are layer probes the search already fitted, chosen on val; their test rows are
read again at the end (two blocks at most), so no probe keeps test columns for them. The
concat baseline holds every layer of one site/pool at once, by definition.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..store.reader import RunReader
from .aggregate import LayerProbe
from .blocks import fit_path, labels_from_decision, load_block, val_key
from .report import accuracy, macro_f1
from .splits import SplitPlan
from .standardize import StatsCache, standardize_columns

__all__ = ["baseline_picks", "layer_baselines", "concat_baseline"]


def baseline_picks(probes: dict, sites: Sequence[str], pools: Sequence[str],
                   n_layers: dict[str, int]) -> tuple[LayerProbe, LayerProbe]:
    """The last_layer probe (final hidden entry, best pool on val) and the best single probe on val."""
    last_site = "hidden" if "hidden" in sites else sites[-1]
    last = [probes[k] for k in ((last_site, pool, n_layers[last_site] - 1) for pool in pools) if k in probes]

    # ties: fewer nonzero weights, then the order sites / pools / layers were given in
    def rank(p: LayerProbe) -> tuple:
        return (*val_key(p.val, p.n_nonzero), sites.index(p.site), pools.index(p.pool), p.layer)

    return min(last, key=rank), min(probes.values(), key=rank)


def layer_baselines(probes: dict, sites: Sequence[str], pools: Sequence[str], n_layers: dict[str, int],
                    reader: RunReader, plan: SplitPlan, row_maps: dict, cache: StatsCache,
                    y_te: np.ndarray) -> dict[str, dict[str, Any]]:
    """last_layer and best_layer entries, each scored once on test."""
    out = {}
    for name, p in zip(("last_layer", "best_layer"), baseline_picks(probes, sites, pools, n_layers)):
        blk = load_block(reader, plan, row_maps, p.site, p.pool, p.layer, cache, roles=(2,))
        X_test = standardize_columns(blk.T, p.order, p.mean, p.scale)
        pred = labels_from_decision(X_test @ p.coef[:, p.order].T + p.intercept)
        out[name] = {"site": p.site, "pool": p.pool, "layer": p.layer, "C": p.C, "n_features": p.n_nonzero,
                     "val": p.val, "test": accuracy(y_te, pred), "macro_f1": macro_f1(y_te, pred)}
    return out


def concat_baseline(solver: Any, reader: RunReader, plan: SplitPlan, row_maps: dict, cache: StatsCache,
                    site: str, pool: str, L: int, y_tr: np.ndarray, y_va: np.ndarray, y_te: np.ndarray,
                    K: int, Cs: Sequence[float]) -> dict[str, Any]:
    """Every layer of one site/pool side by side (memory grows with the number of layers, by definition)."""
    d = reader.width(site)
    Xs = np.empty((plan.n("train"), L * d), dtype=np.float32)
    Vs = np.empty((plan.n("val"), L * d), dtype=np.float32)
    Ts = np.empty((plan.n("test"), L * d), dtype=np.float32)
    all_cols = np.arange(d)
    for layer in range(L):
        blk = load_block(reader, plan, row_maps, site, pool, layer, cache)
        sl = slice(layer * d, (layer + 1) * d)
        Xs[:, sl] = blk.X_train
        standardize_columns(blk.V, all_cols, blk.scaler.mean_, blk.scaler.scale_, out=Vs[:, sl])
        standardize_columns(blk.T, all_cols, blk.scaler.mean_, blk.scaler.scale_, out=Ts[:, sl])
        del blk
    coef, icpt = fit_path(solver, Xs, y_tr, K, Cs, None)
    del Xs
    coef, icpt = coef[0], icpt[0]
    n_out = coef.shape[1]
    dec = Vs @ coef.reshape(len(Cs) * n_out, -1).T + icpt.reshape(-1)
    val = (labels_from_decision(dec.reshape(len(y_va), len(Cs), n_out)) == y_va[:, None]).mean(axis=0)
    nnz = [int(np.count_nonzero(np.any(c != 0, axis=0))) for c in coef]
    ci = min(range(len(Cs)), key=lambda i: (val_key(val[i], nnz[i]), Cs[i]))
    pred = labels_from_decision(Ts @ coef[ci].T + icpt[ci])
    return {"site": site, "pool": pool, "layers": {site: list(range(L))}, "C": float(Cs[ci]),
            "n_features": nnz[ci], "val": float(val[ci]), "test": accuracy(y_te, pred),
            "macro_f1": macro_f1(y_te, pred)}
