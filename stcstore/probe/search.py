"""The probe search: per-layer L1 probes, sparsification, aggregation over depths, baselines.

The stages of the method, pool by pool: (1) one L1 probe per (site, layer) on a block read out
of core (blocks.py), keeping each probe's nonzero-weight columns in the store's dtype;
(2) per site choice and eta, one kept-feature design standardised as it is built and one
batched `fit_path` over every depth k and C (nested masks); (3) the winner on val and the
baselines (baselines.py) are scored once on test; (4) classifier, search table, plots and
report land in the experiment folder (outputs.py), the report last.

Nothing is lost: each finished layer fit is checkpointed in a cache shared by the run's
experiments (checkpoints.py) and each (site choice, pool) aggregation in the experiment folder
(experiment.py, which also holds the lock and the settings). Rerunning the same command
resumes and gives the same report; a finished experiment is returned as it is.

Memory: one layer block at a time, plus the kept columns of one pool's layers (store dtype)
while that pool is aggregated, plus one float32 design and the solver's state. The
all-layers-concat baseline is the exception by definition (every layer of one site/pool at
once); turn it off with `concat_baseline=False` (`--no-concat-baseline`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..config import ProbeConfig
from ..errors import ConfigError, MissingDependencyError, StoreError
from ..store.fingerprint import fingerprint_hash
from ..store.reader import RunReader
from .aggregate import (
    SITE_CODES,
    Design,
    LayerProbe,
    build_design,
    carry_solutions,
    feature_keys,
    k_values,
    layers_for,
    n_blocks,
    nested_masks,
    site_choices,
    unique_rows,
)
from .baselines import concat_baseline as _concat_baseline
from .baselines import layer_baselines
from .metrics import classification_metrics
from .refit import refit, refit_buffers
from .selection import choose, pareto_add
from .blocks import (
    Block,
    fit_path,
    labels_from_decision,
    load_block,
    read_columns,
    read_features,
    return_freed_blocks_to_os,
    val_accuracy_raw,
    val_key,
)
from .checkpoints import LayerFit, LayerFitCache, layer_fit_key, load_checkpoint, save_checkpoint
from .experiment import REPORT_NAME, Experiment
from .memory import concat_bytes, format_bytes, out_of_memory_as, resolve_budget
from .outputs import CLASSIFIER_DIR, SEARCH_NAME, copy_out, load_outputs, write_outputs
from .report import BASELINE_NAMES
from .sparsify import keep_counts, ranking
from .splits import SplitPlan, resolve_splits
from .standardize import StatsCache, cache_key, standardize_columns

__all__ = ["ProbeResult", "run_probe", "REPORT_NAME", "SEARCH_NAME", "CLASSIFIER_DIR"]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}$")


@dataclass
class ProbeResult:
    """What `run_probe` produced: the report, where it was written, the classifier, every config scored."""

    report: dict[str, Any]
    name: str
    path: Path                       # <store>/<run>/probes/<name>
    out: Optional[Path]              # the --out copy, if asked for
    classifier: Any                  # ClassifierArtifact
    search: list[dict[str, Any]] = field(default_factory=list)
    finished_before: bool = False    # True when a finished experiment was returned as it was

    @property
    def stc(self) -> dict[str, Any]:
        """The winning configuration's report entry."""
        return self.report["stc"]


@dataclass
class _Candidate:
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

    @property
    def val(self) -> float:
        return self.entry["val"]

    @property
    def simplicity(self) -> tuple:
        return (self.entry["n_blocks"], self.entry["n_features"])


_CANDIDATE_ARRAYS = ("coef", "intercept", "site", "layer", "index", "mean", "scale", "kept_site", "kept_layer",
                     "kept_index")


def _add(front: list, cand: "_Candidate") -> list:
    return pareto_add(front, cand, lambda c: c.val, lambda c: c.simplicity, lambda c: c.key)


class _Timer:
    """Named wall-clock accumulators."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


# -- settings -------------------------------------------------------------------------------------
def _experiment_name(config: ProbeConfig) -> str:
    if config.name is not None:
        if not _NAME_RE.match(config.name):
            raise ConfigError(
                f"--name {config.name!r} is not a plain folder name: use letters, digits and . _ - = + (no slashes)"
            )
        return config.name
    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", config.label).lstrip("._-") or "probe"
    return name[:100]


def _pick(given: Optional[Sequence[str]], have: Sequence[str], what: str) -> tuple[str, ...]:
    if given is None:
        return tuple(have)
    missing = [g for g in given if g not in have]
    if missing:
        raise ConfigError(
            f"{what} {','.join(missing)} not extracted in this run (it has {','.join(have)}): "
            f"pick from those with --{what}s, or re-extract"
        )
    return tuple(given)


def _get_solver(config: ProbeConfig) -> Any:
    try:
        from .solvers import get_solver
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(__package__ + ".solvers"):
            raise MissingDependencyError(
                "the probe solvers (stcstore.probe.solvers) are not installed: reinstall stcstore"
            ) from None
        raise
    return get_solver(backend=config.backend, device=config.device, memory_budget=config.memory_budget)


def _settings(config: ProbeConfig, reader: RunReader, fp_hash: str, sites: Sequence[str], pools: Sequence[str],
              solver: Any, want_concat: bool) -> dict[str, Any]:
    """Everything that changes an experiment's result (its identity)."""
    return {
        "run": reader.name, "fingerprint_hash": fp_hash, "label": config.label,
        "split_column": config.split_column, "seed": config.seed, "sites": list(sites), "pools": list(pools),
        "c_grid": list(config.c_grid), "eta_grid": list(config.eta_grid),
        "backend": getattr(solver, "name", type(solver).__name__), "device": str(getattr(solver, "device", "cpu")),
        "concat_baseline": want_concat, "selection": config.selection, "refit": config.refit,
    }


def _fit_cache_key(fp_hash: str, config: ProbeConfig, plan: SplitPlan, solver: Any) -> str:
    """What a layer fit depends on: the run, the labels of train and val rows, the C grid, the solver."""
    y = hashlib.sha256()
    for role in ("train", "val"):
        y.update(plan.selection_hash(role).encode())
        y.update(np.ascontiguousarray(plan.y[role], dtype=np.int64).tobytes())
    return layer_fit_key({"fingerprint": fp_hash, "label": config.label, "classes": [str(c) for c in plan.classes],
                          "rows": y.hexdigest(), "c_grid": list(config.c_grid), "solver": repr(solver)})


# -- the search -----------------------------------------------------------------------------------
def run_probe(config: ProbeConfig, *, concat_baseline: Optional[bool] = None, solver: Any = None) -> ProbeResult:
    """Probe every layer, sparsify, aggregate, pick the winner on val, score test once, write outputs.

    `concat_baseline` overrides `config.concat_baseline` (default True): the all-layers-concat
    baseline holds every layer of one site/pool in memory. `solver` replaces the one
    `config.backend` picks (any `Solver`). An experiment of the same name and settings resumes
    (or is returned when finished); other settings are refused unless `config.overwrite`.
    """
    timer = _Timer()
    t_start = time.perf_counter()
    config = config.validate()
    return_freed_blocks_to_os()
    want_concat = bool(getattr(config, "concat_baseline", True) if concat_baseline is None else concat_baseline)
    name = _experiment_name(config)
    out_extra = Path(config.out).expanduser() if config.out else None
    if out_extra is not None and out_extra.exists() and not out_extra.is_dir():
        raise ConfigError(f"--out {str(out_extra)!r} is a file: give a folder path")

    with timer("load"):
        reader = RunReader(config.store, config.run)
        reader.require_complete()
        sites = _pick(config.sites, reader.sites, "site")
        pools = _pick(config.pools, reader.pools, "pool")
        plan = resolve_splits(reader, config.label, config.split_column, config.seed)
    if solver is None:
        solver = _get_solver(config)
    fp_hash = reader.meta.get("fingerprint_hash") or fingerprint_hash(reader.fingerprint)
    settings = _settings(config, reader, fp_hash, sites, pools, solver, want_concat)
    with Experiment(reader.probes_dir(), name).open(settings, fresh=config.fresh, overwrite=config.overwrite) as exp:
        finished_before = exp.finished
        if finished_before:
            report, search, artifact = load_outputs(exp.path)
            log.info("experiment %r is finished with these settings: returning its result", name)
        else:
            with out_of_memory_as("out of memory while probing: rerun the same command with a smaller "
                                  "--memory-budget (it resumes where it stopped), or probe fewer --pools/--sites"):
                report, search, artifact = _search(config, reader, plan, solver, exp, sites, pools, fp_hash,
                                                   want_concat, timer, t_start)
        out_copy = copy_out(exp.path, out_extra, skip=_PRIVATE) if out_extra is not None else None
    stc = report["stc"]
    log.info("STC %s/%s eta %g k %d C %g: val %.4f test %.4f (%d features); in %s",
             stc["site"], stc["pool"], stc["eta"], stc["k"], stc["C"], stc["val"], stc["test"],
             stc["n_features"], exp.path)
    return ProbeResult(report=report, name=name, path=exp.path, out=out_copy, classifier=artifact, search=search,
                       finished_before=finished_before)


_PRIVATE = ("_probe.lock", "_checkpoints", "experiment.json")


def _search(config: ProbeConfig, reader: RunReader, plan: SplitPlan, solver: Any, exp: Experiment,
            sites: Sequence[str], pools: Sequence[str], fp_hash: str, want_concat: bool, timer: _Timer,
            t_start: float) -> tuple[dict, list, Any]:
    """The search proper, resuming from the experiment's checkpoints; returns report, search, artifact."""
    K = plan.n_classes
    Cs, etas = tuple(config.c_grid), tuple(config.eta_grid)
    y_tr, y_va, y_te = plan.y["train"], plan.y["val"], plan.y["test"]
    log.info(
        "probing %r of run %r: %d classes, train %d / val %d / test %d rows (%s splits), backend %s on %s",
        config.label, reader.name, K, len(y_tr), len(y_va), len(y_te), plan.source,
        getattr(solver, "name", "?"), getattr(solver, "device", "?"),
    )
    cache = StatsCache(reader.run_dir, cache_key(fp_hash, reader.layout.dtype, plan.selection_hash("train")))
    fits = LayerFitCache(reader.run_dir, _fit_cache_key(fp_hash, config, plan, solver), read=not config.fresh)
    row_maps = {s: plan.row_roles(s, reader.n_rows(s)) for s in plan.store_splits()}
    n_layers = {s: reader.n_layers(s) for s in sites}
    choices = [c for c in site_choices(sites) if c != "both" or _both_ok(n_layers)]

    # -- 1+2. per pool: layer probes, then aggregation over that pool's kept columns ----------------
    # Going pool by pool bounds the kept-column memory to one pool's layers (both sites).
    probes: dict[tuple[str, str, int], LayerProbe] = {}
    search: list[dict[str, Any]] = []
    front: list[_Candidate] = []       # every config either rule could still choose
    resumed = 0
    n_probes = sum(n_layers[s] for s in sites) * len(pools)
    with _progress(config.progress, n_probes + len(choices) * len(pools) * len(etas)) as bar:
        for pi, pool in enumerate(pools):
            done = {c: _load_aggregate(exp, c, pool) for c in choices}
            pending = [c for c in choices if done[c] is None]
            resumed += len(choices) - len(pending)
            for site in sites:
                for layer in range(n_layers[site]):
                    bar.set_description(f"probe {site}/{pool}/{layer}")
                    probes[(site, pool, layer)] = _layer_probe(
                        solver, fits, reader, plan, row_maps, cache, site, pool, layer, y_tr, y_va, K, Cs, etas,
                        columns=bool(pending), timer=timer)
                    bar.update(1)
            with timer("aggregate"):
                for ci, choice in enumerate(choices):
                    if done[choice] is None:
                        bar.set_description(f"aggregate {choice}/{pool}")
                        done[choice] = _aggregate(solver, probes, choice, ci, pool, pi, n_layers, etas, Cs,
                                                  y_tr, y_va, K, bar)
                        _save_aggregate(exp, choice, pool, *done[choice])
                    else:
                        bar.update(len(etas))
                    entries, local = done[choice]
                    search.extend(entries)
                    for cand in local:
                        front = _add(front, cand)
            for site in sites:
                for layer in range(n_layers[site]):
                    probes[(site, pool, layer)].release_fit_columns()
                    probes[(site, pool, layer)].release_test_columns()
    if not front:
        raise StoreError("no probe kept any neuron (every layer probe is all zeros): try a larger --c-grid")

    # -- 3. the chosen config and the layer baselines on the test split, once (refit on train + val) -
    n_val = plan.n("val")
    best, runner_up, rule = choose(front, lambda c: c.val, lambda c: c.simplicity, lambda c: c.key,
                                   config.selection, n_val)
    with timer("test"):
        stc, artifact = _score_stc(best, config, reader, plan, row_maps, solver, fp_hash)
    stc["selection"] = {**rule, "runner_up": None if runner_up is None else _public(runner_up.entry)}
    with timer("baselines"):
        baselines: dict[str, Any] = layer_baselines(probes, sites, pools, n_layers, reader, plan, row_maps, cache,
                                                    solver, config.selection, config.refit)
    baselines["all_layers_concat"] = None

    # -- 4. report and classifier first; the concat baseline (optional, memory-hungry) after --------
    report = _report(config, reader, plan, solver, exp.name, fp_hash, sites, pools, probes, n_layers, stc,
                     baselines, search, cache, fits, resumed, timer, t_start)
    if want_concat:
        report["pending"] = ["all_layers_concat"]
    # plots are an extra too: drawn once, with the final report
    write_outputs(exp.path, report, search, artifact, config.plots and not want_concat)
    if want_concat:
        b = baselines["best_layer"]
        too_big = _concat_too_big(solver, config, plan, reader.width(b["site"]) * n_layers[b["site"]])
        if too_big:
            log.warning("%s", too_big)
            report.setdefault("notes", []).append(too_big)
        else:
            oom = (f"out of memory in the all-layers-concat baseline (the report and classifier are written in "
                   f"{exp.path}): rerun with a smaller --memory-budget to finish it, or add --no-concat-baseline "
                   f"--overwrite to go without it")
            with timer("concat_baseline"), out_of_memory_as(oom):
                report["baselines"]["all_layers_concat"] = _concat_baseline(
                    solver, reader, plan, row_maps, cache, b["site"], b["pool"], n_layers[b["site"]], config.c_grid,
                    config.selection, config.refit)
            report["test_scored"].append("all_layers_concat")
        report.pop("pending")
        report["timing_s"] = _timings(timer, t_start)
        write_outputs(exp.path, report, search, artifact, config.plots)
    return report, search, artifact


def _concat_too_big(solver: Any, config: ProbeConfig, plan: SplitPlan, n_cols: int) -> Optional[str]:
    """Why the concat baseline is skipped (its rows would not fit the host budget), or None."""
    n_rows = sum(plan.n(r) for r in ("train", "val", "test"))
    need = concat_bytes(n_rows, plan.n("train"), n_cols, getattr(solver, "name", ""))
    budget = resolve_budget("cpu", config.memory_budget)
    if need <= budget:
        return None
    return (f"all_layers_concat skipped: its {n_rows} x {n_cols} rows need about {format_bytes(need)}, over the "
            f"memory budget of {format_bytes(budget)} (set --memory-budget, or --no-concat-baseline)")


def _public(entry: dict) -> dict:
    return {k: entry[k] for k in ("site", "pool", "eta", "k", "C", "n_blocks", "n_features", "val") if k in entry}


def _score_stc(best: _Candidate, config: ProbeConfig, reader: RunReader, plan: SplitPlan, row_maps: dict,
               solver: Any, fp_hash: str) -> tuple[dict[str, Any], Any]:
    """The chosen config's report entry and classifier: the train fit scored on test, and (unless
    --no-refit) the refit on train + val, which becomes the classifier and the quoted test score."""
    K, y_te = plan.n_classes, plan.y["test"]
    pool = best.entry["pool"]
    stc = dict(best.entry)
    _, _, te = read_features(reader, plan, row_maps, pool, best.site, best.layer, best.index)
    dec = standardize_columns(te, np.arange(te.shape[1]), best.mean, best.scale) @ best.coef.T + best.intercept
    trained = classification_metrics(y_te, dec, K)
    feats = (best.site, best.layer, best.index, best.coef, best.intercept, best.mean, best.scale)
    if config.refit:
        X, bufs = refit_buffers(plan, len(best.kept_index), reader.layout.dtype)
        read_features(reader, plan, row_maps, pool, best.kept_site, best.kept_layer, best.kept_index, out=bufs)
        r = refit(solver, X, bufs[2], plan, best.entry["C"])
        del X, bufs
        stc.update(classification_metrics(y_te, r.test_decision, K))
        stc["n_features"] = int(len(r.cols))
        stc["no_refit"] = {"n_features": best.entry["n_features"], **trained}
        c = r.cols
        feats = (best.kept_site[c], best.kept_layer[c], best.kept_index[c], r.coef, r.intercept, r.mean, r.scale)
    else:
        stc.update(trained)
    stc["refit"] = bool(config.refit)
    stc["features_per_layer"] = _features_per_layer(stc["layers"], best.kept_site, best.kept_layer, feats[0], feats[1])
    return stc, _artifact(feats, stc, config.label, plan.classes, reader, fp_hash)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    """One progress display over layer probes and aggregation steps (log lines when not a terminal)."""
    from ..progress import progress_bar

    with progress_bar(total, desc="probe", unit="step", enabled=enabled, leave=False) as bar:
        yield bar


def _layer_probe(solver: Any, fits: LayerFitCache, reader: RunReader, plan: SplitPlan, row_maps: dict,
                 cache: StatsCache, site: str, pool: str, layer: int, y_tr: np.ndarray, y_va: np.ndarray, K: int,
                 Cs: Sequence[float], etas: Sequence[float], *, columns: bool, timer: _Timer) -> LayerProbe:
    """One layer's probe: its fit (from the checkpoint cache, or fitted and checkpointed) and, when
    aggregation still needs them, its kept columns in the store's dtype."""
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
    if columns:
        # a second, cheap pass for the kept columns in the store's dtype: holding the raw train
        # rows beside the float32 block during the fit would cost half a block more
        with timer("load"):
            tr, va, te = read_columns(reader, plan, row_maps, site, pool, layer, order)
    else:
        tr = va = te = np.zeros((0, len(order)), dtype=reader.layout.dtype)
    return LayerProbe(
        site=site, pool=pool, layer=layer, C=fit.C, val=fit.val, n_nonzero=fit.n_nonzero, val_by_C=fit.val_by_C,
        coef=w, intercept=fit.intercept, order=order, counts=keep_counts(w, etas),
        mean=scaler.mean_[order], scale=scaler.scale_[order], X_train=tr, X_val=va, X_test=te,
    )


def _fit_layer(solver: Any, blk: Block, y_tr: np.ndarray, y_va: np.ndarray, K: int, Cs: Sequence[float]) -> LayerFit:
    """Fit every C on one block and choose C on val."""
    coef, icpt = fit_path(solver, blk.X_train, y_tr, K, Cs, None)
    coef, icpt = coef[0], icpt[0]                          # (n_C, n_out, d), (n_C, n_out)
    val = val_accuracy_raw(blk.V, blk.scaler, coef, icpt, y_va)
    nnz = np.array([int(np.count_nonzero(np.any(c != 0, axis=0))) for c in coef])
    # best val, then fewer nonzero weights, then the smaller C
    ci = min(range(len(Cs)), key=lambda i: (val_key(val[i], nnz[i]), Cs[i]))
    return LayerFit(C=float(Cs[ci]), val=float(val[ci]), n_nonzero=int(nnz[ci]), val_by_C=[float(v) for v in val],
                    coef=coef[ci].copy(), intercept=icpt[ci].copy())


def _both_ok(n_layers: dict[str, int]) -> bool:
    ok = n_layers["hidden"] == n_layers["ffn"] + 1
    if not ok:
        log.warning("skipping site 'both': hidden has %d entries, ffn %d (expected L+1 and L)",
                    n_layers["hidden"], n_layers["ffn"])
    return ok


def _aggregate(solver: Any, probes: dict, choice: str, ci: int, pool: str, pi: int, n_layers: dict[str, int],
               etas: Sequence[float], Cs: Sequence[float], y_tr: np.ndarray, y_va: np.ndarray, K: int,
               bar: Any) -> tuple[list[dict[str, Any]], Optional[_Candidate]]:
    """Every eta (deduplicated) of one (site choice, pool): one batched fit over all k and C each.

    Returns the scored configurations and the front of those a selection rule could choose.
    """
    sites = ("hidden", "ffn") if choice == "both" else (choice,)
    layer_probes = {(s, l): probes[(s, pool, l)] for s in sites for l in range(n_layers[s])}
    ks = k_values(choice, n_layers)
    seen: set[tuple[int, ...]] = set()
    prev: Optional[tuple] = None        # (feature keys, mask index, coef, intercept) of the last eta
    entries: list[dict[str, Any]] = []
    front: list[_Candidate] = []
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
        coef, icpt = fit_path(solver, design.X_train, y_tr, K, Cs, umasks, init)
        if solver.uses_init:
            # the next eta's design holds these columns and more: these solutions start its fits
            prev = (keys, index, coef, icpt)
        U, nC, n_out, F = coef.shape
        dec = design.X_val @ coef.reshape(U * nC * n_out, F).T + icpt.reshape(-1)
        pred = labels_from_decision(dec.reshape(len(y_va), U, nC, n_out))
        val = (pred == y_va[:, None, None]).mean(axis=0)                 # (U, nC)
        nnz = np.any(coef != 0, axis=2).sum(axis=-1)                     # (U, nC)
        n_kept = umasks.sum(axis=1)
        for kk, k in enumerate(ks):
            u = index[kk]
            if u < 0:
                continue
            for c, C in enumerate(Cs):
                nb = n_blocks(choice, k)
                entry = {"site": choice, "pool": pool, "eta": float(eta), "k": int(k), "C": float(C),
                         "n_blocks": nb, "n_kept": int(n_kept[u]), "n_features": int(nnz[u, c]),
                         "val": float(val[u, c])}
                entries.append(entry)
                key = (*val_key(val[u, c], int(nnz[u, c])), nb, ci, pi, float(eta), float(C))
                probe = _Candidate(key=key, entry=entry, coef=coef[u, c], intercept=icpt[u, c], site=None, layer=None,
                                   index=None, mean=None, scale=None, kept_site=None, kept_layer=None, kept_index=None)
                if _add(front, probe) is not front:   # on the front: keep its fit (copied off the design)
                    front = _add(front, _candidate(key, entry, design, umasks[u], coef[u, c], icpt[u, c], choice, k))
    return entries, front


def _aggregate_path(exp: Experiment, choice: str, pool: str) -> Path:
    return exp.checkpoints / f"aggregate.{choice}.{pool}.safetensors"


def _save_aggregate(exp: Experiment, choice: str, pool: str, entries: list, front: list[_Candidate]) -> None:
    """Checkpoint one (site choice, pool) aggregation: its scored configurations and its front."""
    arrays = {f"{i}.{k}": np.asarray(getattr(c, k)) for i, c in enumerate(front) for k in _CANDIDATE_ARRAYS}
    meta = {"entries": entries, "front": [{"key": list(c.key), "entry": c.entry} for c in front]}
    save_checkpoint(_aggregate_path(exp, choice, pool), arrays, meta)


def _load_aggregate(exp: Experiment, choice: str, pool: str) -> Optional[tuple[list, list[_Candidate]]]:
    """A checkpointed aggregation, or None when it has to be done."""
    got = load_checkpoint(_aggregate_path(exp, choice, pool))
    if got is None:
        return None
    arrays, meta = got
    front = [_Candidate(key=tuple(c["key"]), entry=c["entry"], **{k: arrays[f"{i}.{k}"] for k in _CANDIDATE_ARRAYS})
             for i, c in enumerate(meta["front"])]
    return meta["entries"], front


def _candidate(key: tuple, entry: dict, design: Design, mask: np.ndarray, coef: np.ndarray, icpt: np.ndarray,
               choice: str, k: int) -> _Candidate:
    """Keep only the winner-so-far's nonzero columns (the design itself is dropped after the fit)."""
    nz = np.flatnonzero(np.any(coef != 0, axis=0))
    entry = dict(entry)
    entry["layers"] = layers_for(choice, k)
    return _Candidate(
        key=key, entry=entry, coef=coef[:, nz].copy(), intercept=icpt.copy(),
        site=design.feature_site[nz], layer=design.feature_layer[nz], index=design.feature_index[nz],
        mean=design.mean[nz], scale=design.scale[nz],
        kept_site=design.feature_site[mask], kept_layer=design.feature_layer[mask],
        kept_index=design.feature_index[mask],
    )


def _features_per_layer(layers: dict, kept_site: np.ndarray, kept_layer: np.ndarray, site: np.ndarray,
                        layer: np.ndarray) -> list[dict[str, Any]]:
    """Per layer entry of the chosen depth: neurons kept by eta, and nonzero in the classifier."""
    rows = []
    for site_name, ls in layers.items():
        code = SITE_CODES[site_name]
        for l in ls:
            rows.append({
                "site": site_name, "layer": int(l),
                "kept": int(np.sum((kept_site == code) & (kept_layer == l))),
                "nonzero": int(np.sum((site == code) & (layer == l))),
            })
    return rows


def _layer_entry(p: LayerProbe) -> dict[str, Any]:
    # test stays null: the test split is scored only for the winner and the baselines
    return {"site": p.site, "pool": p.pool, "layer": p.layer, "C": p.C, "val": p.val, "test": None,
            "n_nonzero": p.n_nonzero, "val_by_C": p.val_by_C}


def _timings(timer: _Timer, t_start: float) -> dict[str, float]:
    timings = dict(timer.t)
    timings["total"] = time.perf_counter() - t_start
    for k in ("load", "probes", "aggregate"):
        timings.setdefault(k, 0.0)
    return timings


def _report(config: ProbeConfig, reader: RunReader, plan: SplitPlan, solver: Any, name: str, fp_hash: str,
            sites: Sequence[str], pools: Sequence[str], probes: dict, n_layers: dict[str, int], stc: dict,
            baselines: dict, search: list, cache: StatsCache, fits: LayerFitCache, resumed: int, timer: _Timer,
            t_start: float) -> dict[str, Any]:
    """The report.json document (DESIGN.md's contract keys first)."""
    return {
        "label": config.label,
        "classes": plan.classes,
        "n": {"train": plan.n("train"), "val": plan.n("val"), "test": plan.n("test")},
        "metric": "accuracy",
        "backend": getattr(solver, "name", str(solver)),
        "device": str(getattr(solver, "device", "cpu")),
        "stc": stc,
        "baselines": {k: baselines.get(k) for k in BASELINE_NAMES},
        "layers": [_layer_entry(probes[(s, p, l)]) for s in sites for p in pools for l in range(n_layers[s])],
        "timing_s": _timings(timer, t_start),
        "run": reader.name,
        "store": str(reader.store_path),
        "name": name,
        "split_source": plan.source,
        "split_notes": plan.notes,
        "seed": config.seed,
        "sites": list(sites),
        "pools": list(pools),
        "c_grid": list(config.c_grid),
        "eta_grid": list(config.eta_grid),
        "n_configs": len(search),
        "test_scored": ["stc", "last_layer", "best_layer"],
        "selection": config.selection,
        "refit": config.refit,
        "cache": {"key": cache.key, "hits": cache.hits, "misses": cache.misses},
        "reused": {"layer_probes": fits.reused, "layer_probes_fitted": fits.fitted, "aggregations": resumed},
        "model": reader.meta.get("model"),
        "fingerprint_hash": fp_hash,
    }


def _artifact(feats: tuple, stc: dict, label: str, classes: list, reader: RunReader, fp_hash: str) -> Any:
    from ..classifier.artifact import ClassifierArtifact

    site, layer, index, coef, intercept, mean, scale = feats
    return ClassifierArtifact(
        label=label, classes=list(classes), site=stc["site"], pool=stc["pool"], k=stc["k"], eta=stc["eta"],
        C=stc["C"], layers=stc["layers"], n_blocks=stc["n_blocks"],
        coef=coef, intercept=intercept, scaler_mean=mean, scaler_scale=scale,
        feature_site=site, feature_layer=layer, feature_index=index,
        model=reader.meta.get("model") or {}, extract=reader.meta.get("extract") or {}, run=reader.name,
        fingerprint_hash=fp_hash,
        metrics={"val": stc["val"], "test": stc["test"], "macro_f1": stc["macro_f1"]},
    )
