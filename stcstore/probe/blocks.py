"""Reading one (site, pool, layer) block out of core, and scoring probes on raw rows.

A block is read a slab of stored chunks at a time, straight into the float32 train matrix
(standardised in place) and the raw val / test rows (store dtype), so no split is ever
held twice. Standardisation statistics come from the run's cache when another experiment
already computed them.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..errors import StoreError
from ..store.reader import RunReader
from .aggregate import SITE_CODES
from ..heap import reuse_heap_while_solving
from .solvers.base import PathStop
from .solvers.lazy import StandardizedColumns, as_matrix
from .splits import SplitPlan
from .standardize import ROW_CHUNK, StatsCache, StreamingScaler, standardize_columns

__all__ = ["Block", "load_block", "read_columns", "labels_from_decision", "val_key", "fit_path", "val_accuracy_raw",
           "val_scores"]

log = logging.getLogger(__name__)

# bytes of raw activations read per zarr call: several stored chunks decode concurrently, yet
# the slab stays small next to a layer block (peak memory must not grow with the split)
_READ_BYTES = 8 << 20


@dataclass
class Block:
    """One layer's rows: train standardised float32, val / test raw, and the train scaler."""

    X_train: np.ndarray
    V: np.ndarray
    T: np.ndarray
    scaler: StreamingScaler


def labels_from_decision(dec: np.ndarray) -> np.ndarray:
    """Labels from decisions (..., n_out): binary decision > 0 is class 1, else argmax."""
    if dec.shape[-1] == 1:
        return (dec[..., 0] > 0).astype(np.int64)
    return dec.argmax(axis=-1).astype(np.int64)


def val_key(val: float, n_features: int) -> tuple:
    """Sort key: best val first, then fewer features."""
    return (-round(val, 12), n_features)


def _to_numpy(a: Any) -> Any:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and not isinstance(a, dict):  # CuPy
        return a.get()
    return a


def fit_path(solver: Any, X: np.ndarray, y: np.ndarray, n_classes: int, Cs: Sequence[float],
             masks: Optional[np.ndarray], init: Optional[tuple[np.ndarray, np.ndarray]] = None,
             stop: Optional[PathStop] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A solver's fit_path as NumPy (n_masks, n_C, n_out, d) coef, (n_masks, n_C, n_out) intercept and
    (n_masks, n_C) fitted (False where `stop` ended a mask's path before that C)."""
    # a solver that streams a built design gets it as it is; the others get the float32 matrix
    streams = isinstance(X, StandardizedColumns) and getattr(solver, "streams_designs", False)
    kwargs = {"stop": stop} if stop is not None and _takes_stop(solver) else {}
    with reuse_heap_while_solving():
        fit = solver.fit_path(X if streams else as_matrix(X), y, n_classes, list(Cs), masks=masks, init=init,
                              **kwargs)
    coef = np.asarray(_to_numpy(fit.coef), dtype=np.float32)
    icpt = np.asarray(_to_numpy(fit.intercept), dtype=np.float32)
    if coef.ndim == 3:  # a solver that drops the mask axis when masks is None
        coef, icpt = coef[None], icpt[None]
    if masks is not None:
        # features outside a mask must not count, whatever the solver leaves there
        coef = coef * masks[:, None, None, :]
    fitted = getattr(fit, "fitted", None)
    fitted = np.ones(coef.shape[:2], dtype=bool) if fitted is None else np.asarray(fitted, dtype=bool)
    return coef, icpt, fitted


def _takes_stop(solver: Any) -> bool:
    """Whether a solver's fit_path takes `stop` (a solver of one's own given to run_probe may not: it fits every C)."""
    try:
        params = inspect.signature(solver.fit_path).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "stop" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def decision_rows(X: StandardizedColumns, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X W^T + b for M models (W (M, F)), a row chunk at a time and only the columns some model uses."""
    cols = np.flatnonzero(np.any(W != 0, axis=0))
    Wt = np.ascontiguousarray(W[:, cols].T, dtype=np.float32)
    out = np.empty((X.shape[0], W.shape[0]), dtype=np.float32)
    for s in range(0, X.shape[0], ROW_CHUNK):
        e = min(s + ROW_CHUNK, X.shape[0])
        np.matmul(X.rows(s, e, cols), Wt, out=out[s:e])
    return out + b


def val_scores(X: StandardizedColumns, coef: np.ndarray, icpt: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Accuracy on rows X of every model in coef (..., n_out, F) with intercepts (..., n_out)."""
    lead, (n_out, F) = coef.shape[:-2], coef.shape[-2:]
    dec = decision_rows(X, coef.reshape(-1, F), icpt.reshape(-1))
    pred = labels_from_decision(dec.reshape(len(y), -1, n_out))
    return (pred == np.asarray(y)[:, None]).mean(axis=0).reshape(lead)


def _slabs(reader: RunReader, plan: SplitPlan, row_maps: dict, site: str, pool: str, layer: int,
           want: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, role ids, positions within the role) of one block, a slab of stored chunks at a time."""
    d = reader.width(site)
    chunk = reader.layout.chunk_rows
    slab = chunk * max(1, _READ_BYTES // max(1, chunk * d * np.dtype(reader.layout.dtype).itemsize))
    for split in plan.store_splits():
        role_of, pos = row_maps[split]
        for start in range(0, len(role_of), slab):
            stop = min(start + slab, len(role_of))
            r = role_of[start:stop]
            if np.any(np.isin(r, want)):
                yield reader.read(split, site, pool, layer, rows=slice(start, stop)), r, pos[start:stop]


def load_block(reader: RunReader, plan: SplitPlan, row_maps: dict, site: str, pool: str, layer: int,
               cache: StatsCache, roles: Sequence[int] = (0, 1, 2)) -> Block:
    """Read one block slab by slab into train (float32, standardised) and raw val/test rows.

    `roles` limits what is filled (0 train, 1 val, 2 test); the train statistics are always known.
    """
    d = reader.width(site)
    raw_dtype = np.dtype(reader.layout.dtype)
    scaler = cache.load(site, pool, layer)
    fresh = scaler is None
    want = sorted(set(roles) | ({0} if fresh else set()))
    X = np.empty((plan.n("train") if 0 in want else 0, d), dtype=np.float32)
    V = np.empty((plan.n("val") if 1 in want else 0, d), dtype=raw_dtype)
    T = np.empty((plan.n("test") if 2 in want else 0, d), dtype=raw_dtype)
    outs = (X, V, T)
    if fresh:
        scaler = StreamingScaler()
    for block, r, p in _slabs(reader, plan, row_maps, site, pool, layer, want):
        for role_id in want:
            sel = r == role_id
            if np.any(sel):
                rows = block[sel]
                outs[role_id][p[sel]] = rows
                if role_id == 0 and fresh:
                    scaler.partial_fit(rows)
    if fresh:
        cache.save(site, pool, layer, scaler)
        # the same numbers a later read of the cache gives, so a resumed search is bitwise the same
        scaler = StreamingScaler.from_stats(scaler.mean_, scaler.var_, scaler.n_samples_seen_)
    if not np.all(np.isfinite(scaler.mean_)):
        raise StoreError(
            f"non-finite activations in {site}/{pool} layer {layer}: re-extract with --dtype float32"
        )
    scaler.transform_(X, ROW_CHUNK)
    return Block(X, V, T, scaler)


def read_columns(reader: RunReader, plan: SplitPlan, row_maps: dict, site: str, pool: str, layer: int,
                 cols: np.ndarray, out: Optional[tuple] = None, roles: Sequence[int] = (0, 1, 2)
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Some columns of one block's train, val and test rows, raw values, in one pass.

    Into `out` (three arrays, any float dtype) when given, else new arrays of the store's dtype;
    a role not in `roles` (0 train, 1 val, 2 test) comes back with no rows.
    """
    raw_dtype = np.dtype(reader.layout.dtype)
    outs = out or tuple(np.empty((plan.n(role) if i in roles else 0, len(cols)), dtype=raw_dtype)
                        for i, role in enumerate(("train", "val", "test")))
    for block, r, p in _slabs(reader, plan, row_maps, site, pool, layer, roles):
        for role_id, out in enumerate(outs):
            if role_id not in roles:
                continue
            sel = r == role_id
            if np.any(sel):
                out[p[sel]] = block[sel][:, cols]
    return outs


def val_accuracy_raw(V: np.ndarray, scaler: StreamingScaler, coef: np.ndarray, icpt: np.ndarray,
                     y: np.ndarray) -> np.ndarray:
    """Accuracy of M models (coef (M, n_out, d)) on raw rows, reading only columns some model uses."""
    cols = np.flatnonzero(np.any(coef != 0, axis=(0, 1)))
    M, n_out = coef.shape[:2]
    W = coef[:, :, cols].reshape(M * n_out, len(cols)).T
    b = icpt.reshape(M * n_out)
    correct = np.zeros(M, dtype=np.int64)
    for s in range(0, V.shape[0], ROW_CHUNK):
        Z = standardize_columns(V[s:s + ROW_CHUNK], cols, scaler.mean_[cols], scaler.scale_[cols])
        dec = (Z @ W + b).reshape(Z.shape[0], M, n_out)
        correct += (labels_from_decision(dec) == y[s:s + ROW_CHUNK, None]).sum(axis=0)
    return correct / max(len(y), 1)


def read_features(reader: RunReader, plan: SplitPlan, row_maps: dict, pool: str, site: np.ndarray,
                  layer: np.ndarray, index: np.ndarray, roles: Sequence[int] = (0, 1, 2)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw train, val and test columns of features (site code, layer entry, neuron) of one pool, in order.

    A role not in `roles` (0 train, 1 val, 2 test) comes back with no rows.
    """
    names = {code: name for name, code in SITE_CODES.items()}
    raw_dtype = np.dtype(reader.layout.dtype)
    outs = tuple(np.empty((plan.n(role) if i in roles else 0, len(index)), dtype=raw_dtype)
                 for i, role in enumerate(("train", "val", "test")))
    for s, l in sorted(set(zip(np.asarray(site).tolist(), np.asarray(layer).tolist()))):
        sel = (site == s) & (layer == l)
        parts = read_columns(reader, plan, row_maps, names[s], pool, l, np.asarray(index)[sel], roles=roles)
        for out, part in zip(outs, parts):
            out[:, sel] = part
    return outs
