"""Aggregation over depths: per (site choice, pool), every eta's kept-feature design fitted over all
depths k and C at once, and the front of configurations a selection rule could choose.

A configuration that another beats on val, simplicity (blocks, features) and rank at once can
never be chosen, so each aggregation keeps its scored table and that front only, with each
front member's fit on its nonzero columns (no rows: the chosen one's rows are read again at
the end). Both are checkpointed in the experiment folder, so a resumed search skips them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np

from .aggregate import (
    Design,
    build_design,
    carry_solutions,
    feature_keys,
    k_values,
    layers_for,
    n_blocks,
    nested_masks,
    unique_rows,
)
from .blocks import val_key
from .c_path import fit_scored
from .checkpoints import load_checkpoint, save_checkpoint
from .experiment import Experiment
from .selection import is_dominated, pareto_add

__all__ = ["Candidate", "CANDIDATE_ARRAYS", "SELECTION_ORDER", "add_to_front", "aggregate", "save_aggregate", "load_aggregate"]


@dataclass
class Candidate:
    """An aggregated config that a selection rule may choose: its fit on its nonzero columns.

    No rows are kept: the chosen one's test (and, to refit, train and val) columns are read
    again from the store at the end.
    """

    key: tuple                # (-val, n_features, n_blocks, choice, pool, eta, C): rank for `best`
    entry: dict[str, Any]
    coef: np.ndarray          # (n_out, F_nz)
    intercept: np.ndarray     # (n_out,)
    site: np.ndarray          # (F_nz,) nonzero features: site code, layer entry, neuron
    layer: np.ndarray
    index: np.ndarray
    mean: np.ndarray          # (F_nz,) train statistics
    scale: np.ndarray
    kept_site: np.ndarray     # the mask's columns (features fed to the final probe)
    kept_layer: np.ndarray
    kept_index: np.ndarray


CANDIDATE_ARRAYS = ("coef", "intercept", "site", "layer", "index", "mean", "scale", "kept_site", "kept_layer",
                     "kept_index")


# what a selection rule compares (val, simplicity, rank): anything with `key` and `entry`
SELECTION_ORDER = (lambda c: c.entry["val"], lambda c: (c.entry["n_blocks"], c.entry["n_features"]), lambda c: c.key)


def add_to_front(front: list, cand: "Candidate") -> list:
    """The front with `cand` in it, unless a member beats it on val, simplicity and rank."""
    return pareto_add(front, cand, *SELECTION_ORDER)


def aggregate(solver: Any, probes: dict, choice: str, ci: int, pool: str, pi: int, n_layers: dict[str, int],
               etas: Sequence[float], Cs: Sequence[float], y_tr: np.ndarray, y_va: np.ndarray, K: int,
              bar: Any, c_stop: float = 0.0) -> tuple[list[dict[str, Any]], list[Candidate]]:
    """Every eta (deduplicated) of one (site choice, pool): one batched fit over all k and C each.

    With c_stop > 0 a depth's C path ends once its val accuracy falls more than c_stop standard
    errors below its best (c_path.ValStop): its larger Cs are neither fitted nor reported.
    Returns the scored configurations and the front of those a selection rule could choose.
    """
    sites = ("hidden", "ffn") if choice == "both" else (choice,)
    layer_probes = {(s, l): probes[(s, pool, l)] for s in sites for l in range(n_layers[s])}
    ks = k_values(choice, n_layers)
    seen: set[tuple[int, ...]] = set()
    prev: Optional[tuple] = None        # (feature keys, mask index, coef, intercept) of the last eta
    entries: list[dict[str, Any]] = []
    front: list[Candidate] = []
    for ei, eta in enumerate(etas):
        bar.update(1)
        counts = {key: int(p.counts[ei]) for key, p in layer_probes.items()}
        sig = tuple(counts[key] for key in sorted(counts))
        if sig in seen:  # same kept sets as a smaller eta: same fits, smaller eta already won ties
            continue
        seen.add(sig)
        design = build_design(layer_probes, choice, counts)
        if design.n_features == 0:
            continue
        masks = nested_masks(design.feature_site, design.feature_layer, choice, ks)
        umasks, index = unique_rows(masks)
        if len(umasks) == 0:
            continue
        keys = feature_keys(design)
        init = None if prev is None else carry_solutions(*prev, keys, index)
        coef, icpt, fitted, val = fit_scored(solver, design.X_train, design.X_val, y_tr, y_va, K, Cs, umasks, init,
                                             c_stop)                     # val (U, nC)
        if solver.uses_init:
            # the next eta's design holds these columns and more: these solutions start its fits
            prev = (keys, index, coef, icpt)
        nnz = np.any(coef != 0, axis=2).sum(axis=-1)                     # (U, nC)
        n_kept = umasks.sum(axis=1)
        for kk, k in enumerate(ks):
            u = index[kk]
            if u < 0:
                continue
            for c, C in enumerate(Cs):
                if not fitted[u, c]:
                    continue
                nb = n_blocks(choice, k)
                entry = {"site": choice, "pool": pool, "eta": float(eta), "k": int(k), "C": float(C),
                         "n_blocks": nb, "n_kept": int(n_kept[u]), "n_features": int(nnz[u, c]),
                         "val": float(val[u, c])}
                entries.append(entry)
                key = (*val_key(val[u, c], int(nnz[u, c])), nb, ci, pi, float(eta), float(C))
                # only a config that joins the front keeps its fit (copied off the design)
                if not is_dominated(front, SimpleNamespace(key=key, entry=entry), *SELECTION_ORDER):
                    front = add_to_front(front, _candidate(key, entry, design, umasks[u], coef[u, c], icpt[u, c], choice, k))
    return entries, front


def _aggregate_path(exp: Experiment, choice: str, pool: str, tag: str) -> Path:
    return exp.checkpoints / f"aggregate.{tag}{choice}.{pool}.safetensors"


def save_aggregate(exp: Experiment, choice: str, pool: str, entries: list, front: list[Candidate],
                   tag: str = "") -> None:
    """Checkpoint one (site choice, pool) aggregation (of one split plan, `tag`): its table and front."""
    arrays = {f"{i}.{k}": np.asarray(getattr(c, k)) for i, c in enumerate(front) for k in CANDIDATE_ARRAYS}
    meta = {"entries": entries, "front": [{"key": list(c.key), "entry": c.entry} for c in front]}
    save_checkpoint(_aggregate_path(exp, choice, pool, tag), arrays, meta)


def load_aggregate(exp: Experiment, choice: str, pool: str, tag: str = "") -> Optional[tuple[list, list[Candidate]]]:
    """A checkpointed aggregation, or None when it has to be done."""
    got = load_checkpoint(_aggregate_path(exp, choice, pool, tag))
    if got is None:
        return None
    arrays, meta = got
    front = [Candidate(key=tuple(c["key"]), entry=c["entry"], **{k: arrays[f"{i}.{k}"] for k in CANDIDATE_ARRAYS})
             for i, c in enumerate(meta["front"])]
    return meta["entries"], front


def _candidate(key: tuple, entry: dict, design: Design, mask: np.ndarray, coef: np.ndarray, icpt: np.ndarray,
               choice: str, k: int) -> Candidate:
    """Keep only the winner-so-far's nonzero columns (the design itself is dropped after the fit)."""
    nz = np.flatnonzero(np.any(coef != 0, axis=0))
    entry = dict(entry)
    entry["layers"] = layers_for(choice, k)
    return Candidate(
        key=key, entry=entry, coef=coef[:, nz].copy(), intercept=icpt.copy(),
        site=design.feature_site[nz], layer=design.feature_layer[nz], index=design.feature_index[nz],
        mean=design.mean[nz], scale=design.scale[nz],
        kept_site=design.feature_site[mask], kept_layer=design.feature_layer[mask],
        kept_index=design.feature_index[mask],
    )
