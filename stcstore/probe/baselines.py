"""The baselines STC is compared with: the last layer, the best single layer, all layers concatenated.

They get STC's treatment: chosen on val by the same rule, then (unless --no-refit) refitted on
train + val at the chosen C and scored once on test, next to the train-only fit's score. The
first two are layer probes the search already fitted; their rows are read again at the end (two
blocks at most). The concat baseline holds every layer of one site/pool at once, by definition.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..store.reader import RunReader
from .aggregate import LayerProbe, n_blocks
from .blocks import decision_rows, labels_from_decision, load_block, read_columns, val_key
from .c_path import fit_scored
from .metrics import classification_metrics
from .aggregate import SITE_CODES
from .refit import refit as refit_cols
from .selection import choose
from .solvers.lazy import StandardizedColumns
from .spill import Scratch
from .splits import SplitPlan
from .standardize import StatsCache, standardize_columns

__all__ = ["baseline_picks", "layer_baselines", "concat_baseline"]


def _blocks_of(p: LayerProbe) -> int:
    return n_blocks(p.site, p.layer + 1)


def baseline_picks(probes: dict, sites: Sequence[str], pools: Sequence[str], n_layers: dict[str, int],
                   rule: str, n_val: int) -> tuple[tuple[LayerProbe, dict], tuple[LayerProbe, dict]]:
    """The last_layer probe (final hidden entry, a pool chosen on val) and the best_layer probe
    (any single probe chosen on val), each with what the rule saw."""
    last_site = "hidden" if "hidden" in sites else sites[-1]
    last = [probes[k] for k in ((last_site, pool, n_layers[last_site] - 1) for pool in pools) if k in probes]

    # ties: fewer nonzero weights, then the order sites / pools / layers were given in
    def rank(p: LayerProbe) -> tuple:
        return (*val_key(p.val, p.n_nonzero), sites.index(p.site), pools.index(p.pool), p.layer)

    def pick(items: list) -> tuple[LayerProbe, dict]:
        chosen, runner_up, info = choose(items, lambda p: p.val, lambda p: (_blocks_of(p), p.n_nonzero), rank,
                                         rule, n_val)
        info["runner_up"] = None if runner_up is None else {
            "site": runner_up.site, "pool": runner_up.pool, "layer": runner_up.layer, "val": runner_up.val}
        return chosen, info

    return pick(last), pick(list(probes.values()))


def layer_baselines(probes: dict, sites: Sequence[str], pools: Sequence[str], n_layers: dict[str, int],
                    reader: RunReader, plan: SplitPlan, row_maps: dict, cache: StatsCache, solver: Any,
                    rule: str, refit: bool, preds: dict, n_val: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """last_layer and best_layer entries, each scored once on test (train fit, and refit); their
    test predictions go into `preds`."""
    out = {}
    K, y_te = plan.n_classes, plan.y["test"]
    # n_val: the rows behind each probe's val score (all of train + val when they are fold means)
    picks = baseline_picks(probes, sites, pools, n_layers, rule, n_val or plan.n("val"))
    for name, (p, info) in zip(("last_layer", "best_layer"), picks):
        entry = {"site": p.site, "pool": p.pool, "layer": p.layer, "C": p.C, "n_features": p.n_nonzero,
                 "val": p.val, "selection": info}
        te = load_block(reader, plan, row_maps, p.site, p.pool, p.layer, cache, roles=(2,)).T
        X_test = standardize_columns(te, p.order, p.mean, p.scale)
        dec = X_test @ p.coef[:, p.order].T + p.intercept
        trained = classification_metrics(y_te, dec, K)
        preds[f"{name}_no_refit" if refit else name] = labels_from_decision(dec)
        del te, X_test
        if refit:
            d = reader.width(p.site)
            r = refit_cols(solver, reader, plan, row_maps, p.pool, np.full(d, SITE_CODES[p.site]), np.full(d, p.layer),
                           np.arange(d), p.C, init=(p.coef, p.intercept))
            entry.update(classification_metrics(y_te, r.test_decision, K))
            preds[name] = labels_from_decision(r.test_decision)
            entry["no_refit"] = {"n_features": p.n_nonzero, **trained}
            entry["n_features"] = int(len(r.cols))
        else:
            entry.update(trained)
        entry["refit"] = refit
        out[name] = entry
    return out


def concat_baseline(solver: Any, reader: RunReader, plan: SplitPlan, row_maps: dict, cache: StatsCache,
                    site: str, pool: str, L: int, Cs: Sequence[float], rule: str, refit: bool,
                    preds: dict, c_stop: float = 0.0) -> dict[str, Any]:
    """Every layer of one site/pool side by side: raw columns (in scratch files when large), standardised
    as the solver reads them; a solver that needs a matrix builds it (L layer blocks, by definition).
    Its C path ends early as the aggregation's do (c_stop, c_path.ValStop)."""
    K, y_tr, y_va, y_te = plan.n_classes, plan.y["train"], plan.y["val"], plan.y["test"]
    d = reader.width(site)
    all_cols = np.arange(d)
    n_rows = sum(plan.n(r) for r in ("train", "val", "test"))
    parts: tuple[list, list, list] = ([], [], [])
    with Scratch() as scratch:
        spill = scratch.spills(L * d * n_rows * np.dtype(reader.layout.dtype).itemsize)
        for layer in range(L):
            scaler = load_block(reader, plan, row_maps, site, pool, layer, cache, roles=()).scaler
            for part, raw, name in zip(parts, read_columns(reader, plan, row_maps, site, pool, layer, all_cols),
                                       ("train", "val", "test")):
                part.append((scratch.file(raw, name) if spill else raw, scaler.mean_, scaler.scale_))
        Xs, Vs, Ts = (StandardizedColumns(p, n_rows=plan.n(r)) for p, r in zip(parts, ("train", "val", "test")))
        coef, icpt, fitted, val = fit_scored(solver, Xs, Vs, y_tr, y_va, K, Cs, None, c_stop=c_stop)
        coef, icpt, val = coef[0], icpt[0], val[0]
        nnz = [int(np.count_nonzero(np.any(c != 0, axis=0))) for c in coef]
        ci, runner_up, info = choose(np.flatnonzero(fitted[0]).tolist(), lambda i: float(val[i]),
                                     lambda i: (nnz[i],), lambda i: (val_key(val[i], nnz[i]), Cs[i]), rule,
                                     plan.n("val"))
        dec = decision_rows(Ts, coef[ci], icpt[ci])
    info["runner_up"] = None if runner_up is None else {"C": float(Cs[runner_up]), "val": float(val[runner_up])}
    trained = classification_metrics(y_te, dec, K)
    preds["all_layers_concat_no_refit" if refit else "all_layers_concat"] = labels_from_decision(dec)
    entry = {"site": site, "pool": pool, "layers": {site: list(range(L))}, "C": float(Cs[ci]),
             "n_features": nnz[ci], "val": float(val[ci]), "selection": info, "refit": refit}
    if not refit:
        entry.update(trained)
        return entry
    # train + val statistics per layer: the refit reads each layer's raw columns once more
    r = refit_cols(solver, reader, plan, row_maps, pool, np.full(L * d, SITE_CODES[site]),
                   np.repeat(np.arange(L), d), np.tile(all_cols, L), float(Cs[ci]), init=(coef[ci], icpt[ci]))
    entry.update(classification_metrics(y_te, r.test_decision, K))
    preds["all_layers_concat"] = labels_from_decision(r.test_decision)
    entry["no_refit"] = {"n_features": nnz[ci], **trained}
    entry["n_features"] = int(len(r.cols))
    return entry
