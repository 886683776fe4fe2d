"""Choosing the configuration by K-fold cross-validation over train + val (`probe --cv K`).

The train and val rows are pooled and cut into K stratified, seeded folds; on each fold the
layer probes and the aggregation run as usual (train = the other folds, val = the fold), and
every configuration's val score is averaged over the folds. The selection rule then works on
the fold means (its standard error from the pooled rows). The chosen configuration's neurons
come from the ordinary train split's layer probes, and it is refitted on train + val.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .aggregate import SITE_CODES, layers_for
from .candidates import Candidate
from .selection import choose
from .splits import SplitPlan, stratified_partition

__all__ = ["cv_plans", "cv_choose", "cv_candidate", "cv_layer_scores", "kept_features", "CONFIG_KEYS"]

CONFIG_KEYS = ("site", "pool", "eta", "k", "C")


def cv_plans(plan: SplitPlan, k: int, seed: int) -> list[SplitPlan]:
    """K plans over the pooled train + val rows: fold i is val, the other folds train; test unchanged."""
    splits, idx, y = [], [], []
    for role in ("train", "val"):
        at = 0
        for split, ix in plan.rows[role].items():
            splits += [split] * len(ix)
            idx.append(np.asarray(ix, np.int64))
            y.append(plan.y[role][at:at + len(ix)])
            at += len(ix)
    splits_a, idx_a, y_a = np.array(splits), np.concatenate(idx), np.concatenate(y)
    folds = stratified_partition(y_a, [1.0] * k, seed)
    out = []
    for i in range(k):
        val = folds[i]
        train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i]))
        rows, ys = {}, {}
        for role, pos in (("train", train), ("val", val)):
            rows[role], parts = {}, []
            for split in dict.fromkeys(splits_a[pos].tolist()):      # first-seen order of the store splits
                sel = pos[splits_a[pos] == split]
                order = np.argsort(idx_a[sel], kind="stable")          # rows ascending within a split
                rows[role][split] = idx_a[sel][order]
                parts.append(y_a[sel][order])
            ys[role] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        rows["test"], ys["test"] = plan.rows["test"], plan.y["test"]
        out.append(SplitPlan(rows=rows, y=ys, classes=plan.classes, source=f"{plan.source}+cv{k}",
                             notes=[*plan.notes, f"fold {i + 1} of {k} over train + val"]))
    return out


def cv_choose(fold_searches: Sequence[list[dict[str, Any]]], choices: Sequence[str], pools: Sequence[str],
              rule: str, n_rows: int) -> tuple[dict[str, Any], Optional[dict[str, Any]], dict[str, Any]]:
    """The configuration chosen on the fold means (configs scored on every fold), runner-up, rule info."""
    table: dict[tuple, list[dict]] = {}
    for entries in fold_searches:
        for e in entries:
            table.setdefault(tuple(e[k] for k in CONFIG_KEYS), []).append(e)
    rows = []
    for key, es in table.items():
        if len(es) != len(fold_searches):
            continue    # an eta whose kept sets equal a smaller eta's on some fold (scored there)
        vals = [e["val"] for e in es]
        rows.append({**dict(zip(CONFIG_KEYS, key)), "n_blocks": es[0]["n_blocks"],
                     "n_features": float(np.mean([e["n_features"] for e in es])), "val": float(np.mean(vals)),
                     "val_folds": vals, "val_std": float(np.std(vals))})

    def rank(r: dict) -> tuple:
        return (-round(r["val"], 12), r["n_features"], r["n_blocks"], choices.index(r["site"]),
                pools.index(r["pool"]), r["eta"], r["C"])

    chosen, runner_up, info = choose(rows, lambda r: r["val"], lambda r: (r["n_blocks"], r["n_features"]), rank,
                                     rule, n_rows)
    info["cv_folds"] = len(fold_searches)
    return chosen, runner_up, info


def cv_layer_scores(fold_probes: Sequence[dict]) -> dict[tuple[str, str, int], tuple[float, float]]:
    """Per layer probe: (mean val over the folds, mean nonzero weights)."""
    keys = fold_probes[0].keys()
    return {k: (float(np.mean([fp[k].val for fp in fold_probes])), float(np.mean([fp[k].n_nonzero for fp in fold_probes])))
            for k in keys}


def kept_features(probes: dict, choice: str, pool: str, eta_index: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(site code, layer entry, neuron) of the neurons a configuration keeps, in design order."""
    site, layer, index = [], [], []
    for s, ls in layers_for(choice, k).items():
        for l in ls:
            p = probes[(s, pool, l)]
            m = int(p.counts[eta_index])
            site += [SITE_CODES[s]] * m
            layer += [l] * m
            index += p.order[:m].tolist()
    return np.array(site, np.int64), np.array(layer, np.int64), np.array(index, np.int64)


def cv_candidate(folds: list, probes: dict, choices: Sequence[str], pools: Sequence[str], etas: Sequence[float],
                  rule: str, n_rows: int) -> tuple[Candidate, Optional[dict], dict]:
    """The configuration chosen on the folds' mean val, as a candidate to refit (no train-only fit)."""
    cfg, runner_up, info = cv_choose([f.search for f in folds], choices, pools, rule, n_rows)
    site, layer, index = kept_features(probes, cfg["site"], cfg["pool"], list(etas).index(cfg["eta"]), cfg["k"])
    entry = {k: cfg[k] for k in ("site", "pool", "eta", "k", "C", "n_blocks", "n_features", "val")}
    entry.update(n_kept=len(index), layers=layers_for(cfg["site"], cfg["k"]),
                 cv={"k": len(folds), "val_folds": cfg["val_folds"], "val_std": cfg["val_std"]})
    cand = Candidate(key=(), entry=entry, coef=None, intercept=None, site=None, layer=None, index=None, mean=None,
                     scale=None, kept_site=site, kept_layer=layer, kept_index=index)
    return cand, runner_up, info
