"""Stages 1 and 2 of the method on one split plan: layer probes, then aggregation, pool by pool,
resuming from checkpoints. The search runs them once (and once per fold with --cv)."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..config import ProbeConfig
from ..store.reader import RunReader
from .aggregate import LayerProbe
from .candidates import Candidate, add_to_front, aggregate, load_aggregate, save_aggregate
from .checkpoints import LayerFitCache, layer_fit_key
from .experiment import Experiment
from .layer_probes import kept_bytes, layer_probe, read_kept_columns
from .spill import Scratch
from .splits import SplitPlan
from .standardize import StatsCache, cache_key

__all__ = ["Stages", "run_stages", "fit_cache_key"]


def fit_cache_key(fp_hash: str, config: ProbeConfig, plan: SplitPlan, solver: Any) -> str:
    """What a layer fit depends on: the run, the labels of train and val rows, the C grid, the solver."""
    y = hashlib.sha256()
    for role in ("train", "val"):
        y.update(plan.selection_hash(role).encode())
        y.update(np.ascontiguousarray(plan.y[role], dtype=np.int64).tobytes())
    return layer_fit_key({"fingerprint": fp_hash, "label": config.label, "classes": [str(c) for c in plan.classes],
                          "rows": y.hexdigest(), "c_grid": list(config.c_grid), "solver": repr(solver)})


@dataclass
class Stages:
    """What stages 1 and 2 (layer probes, aggregation) produce on one split plan."""

    probes: dict
    search: list
    front: list
    resumed: int
    fits: LayerFitCache
    cache: StatsCache
    row_maps: dict


def run_stages(config: ProbeConfig, reader: RunReader, plan: SplitPlan, solver: Any, exp: Experiment,
            sites: Sequence[str], pools: Sequence[str], fp_hash: str, n_layers: dict[str, int],
            choices: Sequence[str], timer: Any, bar: Any, tag: str = "") -> Stages:
    """Layer probes then aggregation, pool by pool, resuming from checkpoints (`tag` names the plan)."""
    K, Cs, etas = plan.n_classes, tuple(config.c_grid), tuple(config.eta_grid)
    y_tr, y_va = plan.y["train"], plan.y["val"]
    cache = StatsCache(reader.run_dir, cache_key(fp_hash, reader.layout.dtype, plan.selection_hash("train")))
    fits = LayerFitCache(reader.run_dir, fit_cache_key(fp_hash, config, plan, solver), read=not config.fresh)
    row_maps = {s: plan.row_roles(s, reader.n_rows(s)) for s in plan.store_splits()}
    # Going pool by pool bounds the kept-column memory to one pool's layers (both sites).
    probes: dict[tuple[str, str, int], LayerProbe] = {}
    search: list[dict[str, Any]] = []
    front: list[Candidate] = []       # every config either rule could still choose
    resumed = 0
    for pi, pool in enumerate(pools):
        done = {c: load_aggregate(exp, c, pool, tag) for c in choices}
        pending = [c for c in choices if done[c] is None]
        resumed += len(choices) - len(pending)
        for site in sites:
            for layer in range(n_layers[site]):
                bar.set_description(f"{tag}probe {site}/{pool}/{layer}")
                probes[(site, pool, layer)] = layer_probe(
                    solver, fits, reader, plan, row_maps, cache, site, pool, layer, y_tr, y_va, K, Cs, etas,
                    timer=timer)
                bar.update(1)
        # kept columns beyond a fixed allowance go to scratch files: memory stays flat in n
        with Scratch() as scratch:
            pool_probes = [probes[(site, pool, layer)] for site in sites for layer in range(n_layers[site])]
            if pending:
                spill = scratch if scratch.spills(kept_bytes(pool_probes, plan, reader.layout.dtype)) else None
                with timer("load"):
                    for p in pool_probes:
                        read_kept_columns(p, reader, plan, row_maps, spill)
            # one in-memory allowance for the kept columns and the designs built from them
            held = 0 if not pending or spill is not None else kept_bytes(pool_probes, plan, reader.layout.dtype)
            with timer("aggregate"), _design_allowance(solver, scratch.in_memory_bytes - held):
                for ci, choice in enumerate(choices):
                    if done[choice] is None:
                        bar.set_description(f"{tag}aggregate {choice}/{pool}")
                        done[choice] = aggregate(solver, probes, choice, ci, pool, pi, n_layers, etas, Cs,
                                                 y_tr, y_va, K, bar, c_stop=config.c_stop)
                        save_aggregate(exp, choice, pool, *done[choice], tag=tag)
                    else:
                        bar.update(len(etas))
                    entries, local = done[choice]
                    search.extend(entries)
                    for cand in local:
                        front = add_to_front(front, cand)
            for p in pool_probes:
                p.release_fit_columns()
                p.release_test_columns()
    return Stages(probes, search, front, resumed, fits, cache, row_maps)


@contextmanager
def _design_allowance(solver: Any, n_bytes: int) -> Iterator[None]:
    """Let a solver that streams designs hold a built one of up to n_bytes whole inside the block."""
    if not hasattr(solver, "resident_design_bytes"):
        yield
        return
    before = solver.resident_design_bytes
    solver.resident_design_bytes = max(0, int(n_bytes))
    try:
        yield
    finally:
        solver.resident_design_bytes = before
