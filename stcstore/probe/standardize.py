"""Streaming standardisation statistics of the train rows, cached in the store for reuse.

Statistics are merged chunk by chunk in float64 (Chan et al.'s parallel update), so no
float64 copy of a block ever exists. They are cached per (site, pool, layer) as small
safetensors files under `<run>/_cache/standardize/<key>/`, `key` hashing the run and the exact
train rows: a second experiment with the same train rows (another label column with a
split column or source splits, another grid) reads them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..store.layout import CACHE_GROUP
from ..store.location import Location, open_location

__all__ = ["StreamingScaler", "StatsCache", "cache_key", "standardize_columns", "standardize_into", "standardize_",
           "host_tensor", "ROW_CHUNK"]

log = logging.getLogger(__name__)

CACHE_SUBDIR = "standardize"
_MERGE_ROWS = 512
# rows standardised per step: bounds temporaries to a few MB whatever the split size
ROW_CHUNK = 1024


def standardize_columns(raw: np.ndarray, cols: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                        out: Optional[np.ndarray] = None) -> np.ndarray:
    """Standardised float32 copy of some columns of raw rows (same arithmetic as `transform_`)."""
    if out is None:
        out = np.empty((raw.shape[0], len(cols)), dtype=np.float32)
    m = np.asarray(mean).astype(np.float32)
    inv = (1.0 / np.asarray(scale)).astype(np.float32)
    for s in range(0, raw.shape[0], ROW_CHUNK):
        standardize_into(raw[s:s + ROW_CHUNK][:, cols], m, inv, out[s:s + ROW_CHUNK])
    return out


def standardize_into(raw: np.ndarray, mean: np.ndarray, inv: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[:] = (raw - mean) * inv in float32, raw in any float dtype (mean, inv: float32); returns out.

    The arithmetic of `transform_` (an exact cast, then a float32 subtract and multiply), done
    by torch: NumPy casts float16 element by element, 8 times slower than the rest of a pass of
    the torch solver over a streamed design.
    """
    o = torch.from_numpy(out)
    o.copy_(host_tensor(raw))
    standardize_(o, mean, inv)
    return out


def standardize_(t: torch.Tensor, mean: np.ndarray, inv: np.ndarray) -> torch.Tensor:
    """t -= mean; t *= inv, in place (float32 t, mean and inv): the arithmetic of `standardize_into`."""
    return t.sub_(torch.from_numpy(mean)).mul_(torch.from_numpy(inv))


def host_tensor(a: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing a's memory (a read-only array is copied: torch would warn)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class StreamingScaler:
    """StandardScaler fitted chunk by chunk: float64 accumulators, zero variance -> scale 1."""

    def __init__(self) -> None:
        self.n_samples_seen_: int = 0
        self.mean_: Optional[np.ndarray] = None
        self._m2: Optional[np.ndarray] = None

    def partial_fit(self, X: np.ndarray) -> "StreamingScaler":
        """Merge one chunk of rows (n, d) into the running mean and sum of squared deviations."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-d chunk, got shape {X.shape}")
        # float64 temporaries stay a few MB however many rows come in
        for start in range(0, X.shape[0], _MERGE_ROWS):
            self._merge(X[start:start + _MERGE_ROWS])
        return self

    def _merge(self, X: np.ndarray) -> None:
        n = X.shape[0]
        if n == 0:
            return
        chunk = X.astype(np.float64)
        c_mean = chunk.mean(axis=0)
        c_m2 = ((chunk - c_mean) ** 2).sum(axis=0)
        if self.mean_ is None:
            self.mean_, self._m2, self.n_samples_seen_ = c_mean, c_m2, n
            return
        if X.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"chunk width {X.shape[1]} != {self.mean_.shape[0]}")
        tot = self.n_samples_seen_ + n
        delta = c_mean - self.mean_
        self.mean_ = self.mean_ + delta * (n / tot)
        self._m2 = self._m2 + c_m2 + delta * delta * (self.n_samples_seen_ * n / tot)
        self.n_samples_seen_ = tot

    @property
    def var_(self) -> np.ndarray:
        """Population variance (ddof 0, as sklearn's StandardScaler)."""
        if self._m2 is None:
            raise ValueError("StreamingScaler has seen no rows")
        return self._m2 / max(self.n_samples_seen_, 1)

    @property
    def scale_(self) -> np.ndarray:
        """Standard deviation, 1 where a feature is constant (so it standardises to 0).

        "Constant" allows float rounding: a spread below 1e-7 of the feature's magnitude is
        noise of the accumulation, and dividing by it would blow the feature up.
        """
        s = np.sqrt(self.var_)
        tiny = 1e-7 * np.maximum(np.abs(self.mean_), 1.0)
        return np.where(s > tiny, s, 1.0)

    @classmethod
    def from_stats(cls, mean: np.ndarray, var: np.ndarray, n: int) -> "StreamingScaler":
        """A fitted scaler from stored statistics."""
        sc = cls()
        sc.mean_ = np.asarray(mean, dtype=np.float64)
        sc._m2 = np.asarray(var, dtype=np.float64) * n
        sc.n_samples_seen_ = int(n)
        return sc

    def transform_(self, X: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
        """Standardise a float32 array in place, a chunk of rows at a time; returns it."""
        mean = self.mean_.astype(np.float32)
        inv = (1.0 / self.scale_).astype(np.float32)
        for start in range(0, X.shape[0], chunk_rows):
            block = X[start:start + chunk_rows]
            block -= mean
            block *= inv
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardised float32 copy of X."""
        out = np.asarray(X, dtype=np.float32).copy()
        return self.transform_(out)


def cache_key(fingerprint_hash: str, dtype: str, selection_hash: str) -> str:
    """Key of a run's statistics over one selection of train rows."""
    blob = f"{fingerprint_hash}|{dtype}|{selection_hash}".encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class StatsCache:
    """Per-layer statistics as safetensors under `<run>/_cache/standardize/<key>/`, written atomically."""

    def __init__(self, run_dir: "str | Path | Location", key: str, enabled: bool = True):
        self.dir = open_location(run_dir) / CACHE_GROUP / CACHE_SUBDIR / key
        self.key = key
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, site: str, pool: str, layer: int) -> Location:
        return self.dir / f"{site}.{pool}.{layer:04d}.safetensors"

    def load(self, site: str, pool: str, layer: int) -> Optional[StreamingScaler]:
        """The cached scaler of one block, or None (missing or unreadable: recomputed)."""
        if not self.enabled:
            return None
        path = self._path(site, pool, layer)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        from ..tensorfile import load_tensors

        try:
            t, _ = load_tensors(data)
            sc = StreamingScaler.from_stats(t["mean"], t["var"], int(t["count"][0]))
        except Exception as exc:  # a torn or foreign file is recomputed, never trusted
            log.warning("ignoring unreadable statistics cache %s (%s)", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return sc

    def save(self, site: str, pool: str, layer: int, scaler: StreamingScaler) -> None:
        """Store one block's scaler; a read-only store only logs a warning."""
        if not self.enabled:
            return
        from ..tensorfile import tensor_bytes

        try:
            # temp file + rename locally, one PUT on object storage: readers see whole files only
            self._path(site, pool, layer).write_bytes(tensor_bytes(
                {
                    "mean": np.ascontiguousarray(scaler.mean_, dtype=np.float64),
                    "var": np.ascontiguousarray(scaler.var_, dtype=np.float64),
                    "count": np.array([scaler.n_samples_seen_], dtype=np.int64),
                },
                metadata={"site": site, "pool": pool, "layer": str(layer), "key": self.key},
            ))
        except OSError as exc:
            log.warning("could not cache statistics in %s (%s); they will be recomputed next time", self.dir, exc)
