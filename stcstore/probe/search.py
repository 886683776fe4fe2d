"""The probe search: per-layer L1 probes, sparsification, aggregation over depths, baselines.

Out of core: one (site, pool, layer) block is read at a time, a slab of stored chunks at a
time, straight into the float32 train matrix (standardised in place) and the raw val / test
rows; only each layer's nonzero-weight columns are kept afterwards. The aggregation then
builds, per (site choice, pool, eta), one kept-feature matrix and fits every depth k and every
C in one batched `fit_path` call (nested masks). Selection uses the validation split only; the
test split is scored once, at the end, for the winner and the baselines.

Memory: one layer block at a time (train rows as float32, val/test rows in the stored dtype),
plus the kept columns of one pool's layers while that pool is aggregated (they grow with the
number of nonzero probe weights, i.e. with C), plus the solver's state. The all-layers-concat
baseline is the exception by definition (every layer of one site/pool at once); turn it off
with `concat_baseline=False` (`--no-concat-baseline`) for stores larger than memory.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
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
from .report import BASELINE_NAMES, accuracy, macro_f1, write_json
from .sparsify import keep_counts, ranking
from .splits import SplitPlan, resolve_splits
from .standardize import StatsCache, StreamingScaler, cache_key

__all__ = ["ProbeResult", "run_probe", "REPORT_NAME", "SEARCH_NAME", "CLASSIFIER_DIR"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"
SEARCH_NAME = "search.json"
CLASSIFIER_DIR = "classifier"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}$")
# rows standardised / scored per step: bounds temporaries to a few MB whatever the split size
_ROW_CHUNK = 1024
# bytes of raw activations read per zarr call: several stored chunks decode concurrently, yet
# the slab stays small next to a layer block (peak memory must not grow with the split)
_READ_BYTES = 8 << 20


@dataclass
class ProbeResult:
    """What `run_probe` produced: the report, where it was written, the classifier, every config scored."""

    report: dict[str, Any]
    name: str
    path: Path                       # <store>/<run>/probes/<name>
    out: Optional[Path]              # the --out copy, if asked for
    classifier: Any                  # ClassifierArtifact
    search: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stc(self) -> dict[str, Any]:
        """The winning configuration's report entry."""
        return self.report["stc"]


@dataclass
class _Candidate:
    """The best aggregated config so far, with what the test scoring and artifact need."""

    key: tuple
    entry: dict[str, Any]
    coef: np.ndarray          # (n_out, F_nz)
    intercept: np.ndarray     # (n_out,)
    X_test: np.ndarray        # (n_test, F_nz)
    site: np.ndarray
    layer: np.ndarray
    index: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    kept_site: np.ndarray     # the mask's columns (features fed to the final probe)
    kept_layer: np.ndarray


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


# -- small helpers --------------------------------------------------------------------------
def _predict(dec: np.ndarray) -> np.ndarray:
    """Labels from decisions (..., n_out): binary decision > 0 is class 1, else argmax."""
    if dec.shape[-1] == 1:
        return (dec[..., 0] > 0).astype(np.int64)
    return dec.argmax(axis=-1).astype(np.int64)


def _val_key(val: float, n_features: int) -> tuple:
    """Sort key: best val first, then fewer features."""
    return (-round(val, 12), n_features)


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
    return get_solver(backend=config.backend, device=config.device)


def _fit_path(solver: Any, X: np.ndarray, y: np.ndarray, n_classes: int, Cs: Sequence[float],
              masks: Optional[np.ndarray], init: Optional[tuple[np.ndarray, np.ndarray]] = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """fit_path as NumPy (n_masks, n_C, n_out, d) coef and (n_masks, n_C, n_out) intercept."""
    fit = solver.fit_path(np.ascontiguousarray(X, dtype=np.float32), y, n_classes, list(Cs), masks=masks, init=init)
    coef = np.asarray(_to_numpy(fit.coef), dtype=np.float32)
    icpt = np.asarray(_to_numpy(fit.intercept), dtype=np.float32)
    if coef.ndim == 3:  # a solver that drops the mask axis when masks is None
        coef, icpt = coef[None], icpt[None]
    if masks is not None:
        # features outside a mask must not count, whatever the solver leaves there
        coef = coef * masks[:, None, None, :]
    return coef, icpt


def _to_numpy(a: Any) -> Any:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and not isinstance(a, dict):  # CuPy
        return a.get()
    return a


# -- reading one block ----------------------------------------------------------------------
@dataclass
class _Block:
    X_train: np.ndarray      # standardised float32
    V: np.ndarray            # raw (store dtype)
    T: np.ndarray            # raw
    scaler: StreamingScaler


def _load_block(reader: RunReader, plan: SplitPlan, row_maps: dict, site: str, pool: str, layer: int,
                cache: StatsCache) -> _Block:
    """Read one (site, pool, layer) block slab by slab into train (float32) and raw val/test rows."""
    d = reader.width(site)
    raw_dtype = np.dtype(reader.layout.dtype)
    X = np.empty((plan.n("train"), d), dtype=np.float32)
    V = np.empty((plan.n("val"), d), dtype=raw_dtype)
    T = np.empty((plan.n("test"), d), dtype=raw_dtype)
    outs = (X, V, T)
    scaler = cache.load(site, pool, layer)
    fresh = scaler is None
    if fresh:
        scaler = StreamingScaler()
    chunk = reader.layout.chunk_rows
    slab = chunk * max(1, _READ_BYTES // max(1, chunk * d * raw_dtype.itemsize))
    for split in plan.store_splits():
        role_of, pos = row_maps[split]
        n = len(role_of)
        for start in range(0, n, slab):
            stop = min(start + slab, n)
            r = role_of[start:stop]
            if not np.any(r >= 0):
                continue
            block = reader.read(split, site, pool, layer, rows=slice(start, stop))
            p = pos[start:stop]
            for role_id, out in enumerate(outs):
                sel = r == role_id
                if np.any(sel):
                    rows = block[sel]
                    out[p[sel]] = rows
                    if role_id == 0 and fresh:
                        scaler.partial_fit(rows)
            del block
    if fresh:
        cache.save(site, pool, layer, scaler)
    if not np.all(np.isfinite(scaler.mean_)):
        raise StoreError(
            f"non-finite activations in {site}/{pool} layer {layer}: re-extract with --dtype float32"
        )
    scaler.transform_(X, _ROW_CHUNK)
    return _Block(X, V, T, scaler)


def _standardize_cols(raw: np.ndarray, cols: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Standardised float32 copy of some columns of raw rows (same arithmetic as the train matrix)."""
    out = np.empty((raw.shape[0], len(cols)), dtype=np.float32)
    m = mean.astype(np.float32)
    inv = (1.0 / scale).astype(np.float32)
    for s in range(0, raw.shape[0], _ROW_CHUNK):
        block = raw[s:s + _ROW_CHUNK][:, cols].astype(np.float32)
        block -= m
        block *= inv
        out[s:s + _ROW_CHUNK] = block
    return out


def _val_accuracy_raw(V: np.ndarray, scaler: StreamingScaler, coef: np.ndarray, icpt: np.ndarray,
                      y: np.ndarray) -> np.ndarray:
    """Accuracy of M models (coef (M, n_out, d)) on raw rows, reading only columns some model uses."""
    cols = np.flatnonzero(np.any(coef != 0, axis=(0, 1)))
    M, n_out = coef.shape[:2]
    W = coef[:, :, cols].reshape(M * n_out, len(cols)).T
    b = icpt.reshape(M * n_out)
    correct = np.zeros(M, dtype=np.int64)
    for s in range(0, V.shape[0], _ROW_CHUNK):
        Z = _standardize_cols(V[s:s + _ROW_CHUNK], cols, scaler.mean_[cols], scaler.scale_[cols])
        dec = (Z @ W + b).reshape(Z.shape[0], M, n_out)
        correct += (_predict(dec) == y[s:s + _ROW_CHUNK, None]).sum(axis=0)
    return correct / max(len(y), 1)


# -- the search -----------------------------------------------------------------------------
_MMAP_THRESHOLD = 256 << 10


def _return_freed_blocks_to_os() -> None:
    """Pin glibc's mmap threshold so freed slabs and blocks go back to the OS at once.

    glibc raises its threshold each time a large mmapped buffer is freed, after which equal
    buffers (read slabs, float64 statistics temporaries) come from the heap and stay resident,
    fragmented, between layers: peak RSS then grew by about twice a block's size from N to 4N
    rows. A fixed threshold keeps the peak at one block plus the solver. Process-wide and
    harmless elsewhere; a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(_MMAP_THRESHOLD))   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        log.debug("mallopt unavailable; heap retention not tuned")


def run_probe(config: ProbeConfig, *, concat_baseline: Optional[bool] = None, solver: Any = None) -> ProbeResult:
    """Probe every layer, sparsify, aggregate, pick the winner on val, score test once, write outputs.

    `concat_baseline` overrides `config.concat_baseline` (default True): the all-layers-concat
    baseline holds every layer of one site/pool in memory. `solver` replaces the one
    `config.backend` picks (any `Solver`).
    """
    timer = _Timer()
    t_start = time.perf_counter()
    config.validate()
    _return_freed_blocks_to_os()
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
    K = plan.n_classes
    Cs = tuple(config.c_grid)
    etas = tuple(config.eta_grid)
    y_tr, y_va, y_te = plan.y["train"], plan.y["val"], plan.y["test"]
    log.info(
        "probing %r of run %r: %d classes, train %d / val %d / test %d rows (%s splits), backend %s on %s",
        config.label, reader.name, K, len(y_tr), len(y_va), len(y_te), plan.source,
        getattr(solver, "name", "?"), getattr(solver, "device", "?"),
    )
    fp_hash = reader.meta.get("fingerprint_hash") or fingerprint_hash(reader.fingerprint)
    cache = StatsCache(reader.run_dir, cache_key(fp_hash, reader.layout.dtype, plan.selection_hash("train")))
    row_maps = {s: plan.row_roles(s, reader.n_rows(s)) for s in plan.store_splits()}
    n_layers = {s: reader.n_layers(s) for s in sites}

    # -- 1+2. per pool: layer probes, then aggregation over that pool's kept columns ----------
    # Going pool by pool bounds the kept-column memory to one pool's layers (both sites);
    # afterwards only each probe's test columns stay, for the baselines' single test scoring.
    probes: dict[tuple[str, str, int], LayerProbe] = {}
    search: list[dict[str, Any]] = []
    best: Optional[_Candidate] = None
    choices = [c for c in site_choices(sites) if c != "both" or _both_ok(n_layers)]
    progress = _progress(config.progress)
    with progress:
        task = progress.add_task("layer probes", total=sum(n_layers[s] for s in sites) * len(pools))
        task2 = progress.add_task("aggregate", total=len(choices) * len(pools) * len(etas))
        for pi, pool in enumerate(pools):
            for site in sites:
                for layer in range(n_layers[site]):
                    progress.update(task, description=f"probe {site}/{pool}/{layer}")
                    with timer("load"):
                        blk = _load_block(reader, plan, row_maps, site, pool, layer, cache)
                    with timer("probes"):
                        probes[(site, pool, layer)] = _layer_probe(solver, blk, site, pool, layer, y_tr, y_va, K, Cs, etas)
                    del blk
                    progress.advance(task)
            with timer("aggregate"):
                for ci, choice in enumerate(choices):
                    best = _aggregate(solver, probes, choice, ci, pool, pi, n_layers, etas, Cs, y_tr, y_va, K,
                                      search, best, progress, task2)
            for site in sites:
                for layer in range(n_layers[site]):
                    probes[(site, pool, layer)].release_fit_columns()
            _release_test_columns(probes, sites, pools, n_layers)
    if best is None:
        raise StoreError("no probe kept any neuron (every layer probe is all zeros): try a larger --c-grid")

    # -- 3. baselines, then the test split, once ------------------------------------------------
    with timer("baselines"):
        baselines = _baselines(probes, sites, pools, n_layers)
    concat = None
    if want_concat:
        with timer("concat_baseline"):
            b = baselines["best_layer"]
            concat = _concat_baseline(solver, reader, plan, row_maps, cache, b["_site"], b["_pool"],
                                      n_layers[b["_site"]], y_tr, y_va, y_te, K, Cs)
    stc = dict(best.entry)
    dec_test = best.X_test @ best.coef.T + best.intercept
    pred = _predict(dec_test)
    stc["test"], stc["macro_f1"] = accuracy(y_te, pred), macro_f1(y_te, pred)
    scored = ["stc"]
    for bname in ("last_layer", "best_layer"):
        b = baselines[bname]
        p = b.pop("_probe")
        b.pop("_site"), b.pop("_pool")
        m = len(p.order)
        dec = p.X_test[:, :m] @ p.coef[:, p.order].T + p.intercept
        pr = _predict(dec)
        b["test"], b["macro_f1"] = accuracy(y_te, pr), macro_f1(y_te, pr)
        scored.append(bname)
    baselines["all_layers_concat"] = concat
    if concat is not None:
        scored.append("all_layers_concat")
    stc["features_per_layer"] = _features_per_layer(best)

    # -- 4. report, classifier, plots --------------------------------------------------------
    timings = dict(timer.t)
    timings["total"] = time.perf_counter() - t_start
    for k in ("load", "probes", "aggregate"):
        timings.setdefault(k, 0.0)
    report = {
        "label": config.label,
        "classes": plan.classes,
        "n": {"train": len(y_tr), "val": len(y_va), "test": len(y_te)},
        "metric": "accuracy",
        "backend": getattr(solver, "name", str(solver)),
        "device": str(getattr(solver, "device", "cpu")),
        "stc": stc,
        "baselines": {k: baselines.get(k) for k in BASELINE_NAMES},
        "layers": [_layer_entry(probes[(s, p, l)]) for s in sites for p in pools for l in range(n_layers[s])],
        "timing_s": timings,
        "run": reader.name,
        "store": str(reader.store_path),
        "name": name,
        "split_source": plan.source,
        "split_notes": plan.notes,
        "seed": config.seed,
        "sites": list(sites),
        "pools": list(pools),
        "c_grid": list(Cs),
        "eta_grid": list(etas),
        "n_configs": len(search),
        "test_scored": scored,
        "cache": {"key": cache.key, "hits": cache.hits, "misses": cache.misses},
        "model": reader.meta.get("model"),
        "fingerprint_hash": fp_hash,
    }
    artifact = _artifact(best, stc, config.label, plan.classes, reader, fp_hash)
    exp_dir = _write_outputs(reader, name, report, search, artifact, config.plots, timings, t_start)
    out_copy = None
    if out_extra is not None:
        out_copy = _copy_out(exp_dir, out_extra)
    log.info("STC %s/%s eta %g k %d C %g: val %.4f test %.4f (%d features); wrote %s",
             stc["site"], stc["pool"], stc["eta"], stc["k"], stc["C"], stc["val"], stc["test"],
             stc["n_features"], exp_dir)
    return ProbeResult(report=report, name=name, path=exp_dir, out=out_copy, classifier=artifact, search=search)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True, disable=not enabled)


def _both_ok(n_layers: dict[str, int]) -> bool:
    ok = n_layers["hidden"] == n_layers["ffn"] + 1
    if not ok:
        log.warning("skipping site 'both': hidden has %d entries, ffn %d (expected L+1 and L)",
                    n_layers["hidden"], n_layers["ffn"])
    return ok


def _layer_probe(solver: Any, blk: _Block, site: str, pool: str, layer: int, y_tr: np.ndarray,
                 y_va: np.ndarray, K: int, Cs: Sequence[float], etas: Sequence[float]) -> LayerProbe:
    """Fit every C on one block, choose C on val, rank neurons and keep their columns."""
    coef, icpt = _fit_path(solver, blk.X_train, y_tr, K, Cs, None)
    coef, icpt = coef[0], icpt[0]                          # (n_C, n_out, d), (n_C, n_out)
    val = _val_accuracy_raw(blk.V, blk.scaler, coef, icpt, y_va)
    nnz = np.array([int(np.count_nonzero(np.any(c != 0, axis=0))) for c in coef])
    # best val, then fewer nonzero weights, then the smaller C
    ci = min(range(len(Cs)), key=lambda i: (_val_key(val[i], nnz[i]), Cs[i]))
    w = coef[ci]
    order = ranking(w)
    counts = keep_counts(w, etas)
    mean, scale = blk.scaler.mean_[order], blk.scaler.scale_[order]
    return LayerProbe(
        site=site, pool=pool, layer=layer, C=float(Cs[ci]), val=float(val[ci]), n_nonzero=int(nnz[ci]),
        val_by_C=[float(v) for v in val], coef=w.copy(), intercept=icpt[ci].copy(), order=order,
        counts=counts, mean=mean, scale=scale,
        X_train=np.ascontiguousarray(blk.X_train[:, order]),
        X_val=_standardize_cols(blk.V, order, mean, scale),
        X_test=_standardize_cols(blk.T, order, mean, scale),
    )


def _aggregate(solver: Any, probes: dict, choice: str, ci: int, pool: str, pi: int, n_layers: dict[str, int],
               etas: Sequence[float], Cs: Sequence[float], y_tr: np.ndarray, y_va: np.ndarray, K: int,
               search: list, best: Optional[_Candidate], progress: Any, task: Any) -> Optional[_Candidate]:
    """Every eta (deduplicated) of one (site choice, pool): one batched fit over all k and C each."""
    sites = ("hidden", "ffn") if choice == "both" else (choice,)
    layer_probes = {(s, l): probes[(s, pool, l)] for s in sites for l in range(n_layers[s])}
    ks = k_values(choice, n_layers)
    seen: set[tuple[int, ...]] = set()
    prev: Optional[tuple] = None        # (feature keys, mask index, coef, intercept) of the last eta
    for ei, eta in enumerate(etas):
        progress.advance(task)
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
        coef, icpt = _fit_path(solver, design.X_train, y_tr, K, Cs, umasks, init)
        if solver.uses_init:
            # the next eta's design holds these columns and more: these solutions start its fits
            prev = (keys, index, coef, icpt)
        U, nC, n_out, F = coef.shape
        dec = design.X_val @ coef.reshape(U * nC * n_out, F).T + icpt.reshape(-1)
        pred = _predict(dec.reshape(len(y_va), U, nC, n_out))
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
                search.append(entry)
                key = (*_val_key(val[u, c], int(nnz[u, c])), nb, ci, pi, eta, C)
                if best is None or key < best.key:
                    best = _candidate(key, entry, design, umasks[u], coef[u, c], icpt[u, c], choice, k)
    return best


def _candidate(key: tuple, entry: dict, design: Design, mask: np.ndarray, coef: np.ndarray, icpt: np.ndarray,
               choice: str, k: int) -> _Candidate:
    """Keep only the winner-so-far's nonzero columns (the design itself is dropped after the fit)."""
    nz = np.flatnonzero(np.any(coef != 0, axis=0))
    entry = dict(entry)
    entry["layers"] = layers_for(choice, k)
    return _Candidate(
        key=key, entry=entry, coef=coef[:, nz].copy(), intercept=icpt.copy(),
        X_test=np.ascontiguousarray(design.X_test[:, nz]),
        site=design.feature_site[nz], layer=design.feature_layer[nz], index=design.feature_index[nz],
        mean=design.mean[nz], scale=design.scale[nz],
        kept_site=design.feature_site[mask], kept_layer=design.feature_layer[mask],
    )


def _features_per_layer(best: _Candidate) -> list[dict[str, Any]]:
    rows = []
    for site_name, ls in best.entry["layers"].items():
        code = SITE_CODES[site_name]
        for l in ls:
            rows.append({
                "site": site_name, "layer": int(l),
                "kept": int(np.sum((best.kept_site == code) & (best.kept_layer == l))),
                "nonzero": int(np.sum((best.site == code) & (best.layer == l))),
            })
    return rows


def _layer_entry(p: LayerProbe) -> dict[str, Any]:
    # test stays null: the test split is scored only for the winner and the baselines
    return {"site": p.site, "pool": p.pool, "layer": p.layer, "C": p.C, "val": p.val, "test": None,
            "n_nonzero": p.n_nonzero, "val_by_C": p.val_by_C}


def _baseline_picks(probes: dict, sites: Sequence[str], pools: Sequence[str],
                    n_layers: dict[str, int]) -> tuple[LayerProbe, LayerProbe]:
    """The last_layer probe (final hidden entry, best pool on val) and the best single probe on val."""
    last_site = "hidden" if "hidden" in sites else sites[-1]
    last = [probes[k] for k in ((last_site, pool, n_layers[last_site] - 1) for pool in pools) if k in probes]
    # ties: fewer nonzero weights, then the order sites / pools / layers were given in
    def rank(p: LayerProbe) -> tuple:
        return (*_val_key(p.val, p.n_nonzero), sites.index(p.site), pools.index(p.pool), p.layer)

    return min(last, key=rank), min(probes.values(), key=rank)


def _release_test_columns(probes: dict, sites: Sequence[str], pools: Sequence[str], n_layers: dict[str, int]) -> None:
    """Keep test columns only for probes that can still become a baseline."""
    last_site = "hidden" if "hidden" in sites else sites[-1]
    _, best_p = _baseline_picks(probes, sites, pools, n_layers)
    for (site, pool, layer), p in probes.items():
        if p is not best_p and not (site == last_site and layer == n_layers[site] - 1):
            p.release_test_columns()


def _baselines(probes: dict, sites: Sequence[str], pools: Sequence[str],
               n_layers: dict[str, int]) -> dict[str, dict[str, Any]]:
    """last_layer (final hidden entry, best pool on val) and best_layer (best single probe on val)."""
    last_p, best_p = _baseline_picks(probes, sites, pools, n_layers)

    def entry(p: LayerProbe) -> dict[str, Any]:
        return {"site": p.site, "pool": p.pool, "layer": p.layer, "C": p.C, "n_features": p.n_nonzero,
                "val": p.val, "test": None, "macro_f1": None, "_probe": p, "_site": p.site, "_pool": p.pool}

    return {"last_layer": entry(last_p), "best_layer": entry(best_p)}


def _concat_baseline(solver: Any, reader: RunReader, plan: SplitPlan, row_maps: dict, cache: StatsCache,
                     site: str, pool: str, L: int, y_tr: np.ndarray, y_va: np.ndarray, y_te: np.ndarray,
                     K: int, Cs: Sequence[float]) -> dict[str, Any]:
    """Every layer of one site/pool side by side (memory grows with the number of layers, by definition)."""
    d = reader.width(site)
    Xs = np.empty((plan.n("train"), L * d), dtype=np.float32)
    Vs = np.empty((plan.n("val"), L * d), dtype=np.float32)
    Ts = np.empty((plan.n("test"), L * d), dtype=np.float32)
    all_cols = np.arange(d)
    for layer in range(L):
        blk = _load_block(reader, plan, row_maps, site, pool, layer, cache)
        sl = slice(layer * d, (layer + 1) * d)
        Xs[:, sl] = blk.X_train
        Vs[:, sl] = _standardize_cols(blk.V, all_cols, blk.scaler.mean_, blk.scaler.scale_)
        Ts[:, sl] = _standardize_cols(blk.T, all_cols, blk.scaler.mean_, blk.scaler.scale_)
        del blk
    coef, icpt = _fit_path(solver, Xs, y_tr, K, Cs, None)
    del Xs
    coef, icpt = coef[0], icpt[0]
    n_out = coef.shape[1]
    dec = Vs @ coef.reshape(len(Cs) * n_out, -1).T + icpt.reshape(-1)
    val = (_predict(dec.reshape(len(y_va), len(Cs), n_out)) == y_va[:, None]).mean(axis=0)
    nnz = [int(np.count_nonzero(np.any(c != 0, axis=0))) for c in coef]
    ci = min(range(len(Cs)), key=lambda i: (_val_key(val[i], nnz[i]), Cs[i]))
    pred = _predict(Ts @ coef[ci].T + icpt[ci])
    return {"site": site, "pool": pool, "layers": {site: list(range(L))}, "C": float(Cs[ci]),
            "n_features": nnz[ci], "val": float(val[ci]), "test": accuracy(y_te, pred),
            "macro_f1": macro_f1(y_te, pred)}


def _artifact(best: _Candidate, stc: dict, label: str, classes: list, reader: RunReader, fp_hash: str) -> Any:
    from ..classifier.artifact import ClassifierArtifact

    return ClassifierArtifact(
        label=label, classes=list(classes), site=stc["site"], pool=stc["pool"], k=stc["k"], eta=stc["eta"],
        C=stc["C"], layers=stc["layers"], n_blocks=stc["n_blocks"],
        coef=best.coef, intercept=best.intercept, scaler_mean=best.mean, scaler_scale=best.scale,
        feature_site=best.site, feature_layer=best.layer, feature_index=best.index,
        model=reader.meta.get("model") or {}, extract=reader.meta.get("extract") or {}, run=reader.name,
        fingerprint_hash=fp_hash,
        metrics={"val": stc["val"], "test": stc["test"], "macro_f1": stc["macro_f1"]},
    )


def _write_outputs(reader: RunReader, name: str, report: dict, search: list, artifact: Any, plots: bool,
                   timings: dict, t_start: float) -> Path:
    """Build the experiment folder beside its final place, then swap it in (never half-written)."""
    probes_dir = reader.probes_dir()
    final = probes_dir / name
    tmp = probes_dir / f".{name}.{os.getpid()}.tmp"
    try:
        probes_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        artifact.save(tmp / CLASSIFIER_DIR)
        write_json(search, tmp / SEARCH_NAME)
        if plots:
            from .plots import write_plots

            write_plots(report, tmp)
        timings["total"] = time.perf_counter() - t_start
        write_json(report, tmp / REPORT_NAME)
        if final.exists():
            log.info("replacing experiment %r", name)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"cannot write the experiment into {str(probes_dir)!r} ({exc}): make the store writable") from None
    return final


def _copy_out(src: Path, out: Path) -> Path:
    """Copy an experiment folder's files into --out (created if needed; our files replaced)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            dest = out / child.name
            if child.is_dir():
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(child, dest)
            else:
                shutil.copy2(child, dest)
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {str(out)!r} ({exc}): give a writable folder") from None
    return out
