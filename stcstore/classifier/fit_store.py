"""Where `STCClassifier.fit` keeps its texts, activations and labels so that refits reuse them.

A fit writes its texts (and nothing else) to `<cache>/texts/<text hash>.parquet` and extracts
that file into a store run named by the model, the text hash and the extraction settings. The
run's fingerprint holds the file's content hash, so the same texts and settings find the run
complete and the model never runs again. Labels and the train/val/test roles of the rows are
not in that file (other labels on the same texts would change its hash and re-extract): they
are written beside the activations as two stored columns named by a hash of their values,
which `probe` reads like any other label and `--split-column`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ConfigError, LabelError

__all__ = ["TEXT_COLUMN", "FIT_SPLIT", "cache_dir", "texts_hash", "write_texts", "run_name", "clean_labels",
           "assign_roles", "FitColumns", "fit_columns", "write_fit_columns"]

TEXT_COLUMN = "text"
FIT_SPLIT = "train"          # the split name a local data file gets (stcstore.data)
_VERSION = b"stcstore-fit-v1\0"


def cache_dir() -> Path:
    """The per-user cache folder: $STCSTORE_CACHE, else $XDG_CACHE_HOME/stcstore, else ~/.cache/stcstore."""
    if os.environ.get("STCSTORE_CACHE"):
        return Path(os.environ["STCSTORE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "stcstore"
    return Path.home() / ".cache" / "stcstore"


def _framed(h: "hashlib._Hash", raw: bytes) -> None:
    h.update(len(raw).to_bytes(8, "little"))
    h.update(raw)


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 hex of the texts in order (length-framed, so no two lists share one)."""
    h = hashlib.sha256(_VERSION)
    h.update(len(texts).to_bytes(8, "little"))
    for t in texts:
        _framed(h, t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def write_texts(texts: Sequence[str], folder: Path, digest: str) -> Path:
    """`folder/texts/<digest>.parquet` with one column `text` (written once, atomically; reused after)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "texts" / f"{digest}.parquet"
    if path.is_file():
        try:
            if pq.ParquetFile(path).metadata.num_rows == len(texts):
                return path
        except (pa.ArrowException, OSError):
            pass  # a damaged file is written again below
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({TEXT_COLUMN: pa.array(list(texts), type=pa.string())}), tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the fit's texts to {str(path)!r} ({exc}): make the cache folder writable "
                          f"or set STCSTORE_CACHE") from None
    return path


def run_name(model: str, digest: str, settings: dict[str, Any]) -> str:
    """`fit-<model>-<hash of texts and extraction settings>`: one run per texts and settings."""
    import re

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(model).rstrip("/")).name).strip("-.")[:40] or "model"
    h = hashlib.sha256(json.dumps({"texts": digest, **settings}, sort_keys=True, default=str).encode())
    return f"fit-{slug}-{h.hexdigest()[:16]}"


def clean_labels(y: Any, n: int, what: str = "y") -> np.ndarray:
    """Labels as a 1-d int64, bool, float or str array of length n; refuse what the store cannot keep."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ConfigError(f"{what} must be one label per text (1-d), got shape {arr.shape}")
    if len(arr) != n:
        raise ConfigError(f"{what} has {len(arr)} labels for {n} texts: give one label per text")
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr.tolist()}
        if all(issubclass(k, str) for k in kinds):
            arr = arr.astype(str)
        elif all(issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_)) for k in kinds):
            arr = arr.astype(np.int64)
        else:
            names = ", ".join(sorted(k.__name__ for k in kinds))
            raise ConfigError(f"{what} mixes label types ({names}): give all strings or all integers")
    if arr.dtype.kind in "US":
        arr = arr.astype(str)
        blank = np.flatnonzero(np.char.strip(arr) == "")
        if len(blank):
            raise ConfigError(f"{what}[{blank[0]}] is an empty label: give every text a non-empty label")
    elif arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise ConfigError(f"{what}[{bad[0]}] is {arr[bad[0]]}: give every text a finite label")
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind != "b":
        raise ConfigError(f"{what} has labels of dtype {arr.dtype}: give strings, integers, booleans or floats")
    if len(np.unique(arr)) < 2:
        raise LabelError(f"{what} has a single class: a classifier needs at least two")
    return arr


def assign_roles(y: np.ndarray, n_val_given: int, val_size: float, test_size: float, seed: int) -> np.ndarray:
    """Role of each row ('train', 'val', 'test'): the last `n_val_given` rows are val; the rest are
    split stratified and seeded (val carved only when none was given, test always)."""
    from ..probe.splits import stratified_partition

    n_fit = len(y) - n_val_given
    codes = np.unique(y, return_inverse=True)[1]
    roles = np.empty(len(y), dtype="<U5")
    roles[n_fit:] = "val"
    names = ("train", "test") if n_val_given else ("train", "val", "test")
    shares = (1 - test_size, test_size) if n_val_given else (1 - val_size - test_size, val_size, test_size)
    for name, part in zip(names, stratified_partition(codes[:n_fit], shares, seed)):
        roles[part] = name
    return roles


@dataclass(frozen=True)
class FitColumns:
    """The stored columns of one fit's labels and row roles."""

    label: str
    split: str
    digest: str


def fit_columns(y: np.ndarray, roles: np.ndarray) -> FitColumns:
    """Column names keyed by a hash of the labels (with their type) and the roles."""
    h = hashlib.sha256(_VERSION)
    _framed(h, y.dtype.str.encode())
    _framed(h, np.ascontiguousarray(y).tobytes() if y.dtype.kind != "U" else "\0".join(y.tolist()).encode())
    _framed(h, "\0".join(roles.tolist()).encode())
    d = h.hexdigest()[:16]
    return FitColumns(label=f"fit_label_{d}", split=f"fit_split_{d}", digest=d)


def write_fit_columns(store: str | Path, run: str, y: np.ndarray, roles: np.ndarray) -> FitColumns:
    """Store labels and roles as columns of the run's split (kept when already there with these values)."""
    import zarr

    from ..store.layout import column_path
    from ..store.quiet import quiet_zarr

    cols = fit_columns(y, roles)
    with quiet_zarr():
        # a folder or a URL (fsspec), like every store
        where = str(Path(store).expanduser() / run) if "://" not in str(store) else f"{str(store).rstrip('/')}/{run}"
        group = zarr.open_group(where, mode="r+")
        for name, values in ((cols.label, y), (cols.split, roles)):
            _ensure_column(group, column_path(FIT_SPLIT, name), values)
    return cols


def _ensure_column(group: Any, path: str, values: np.ndarray) -> None:
    """Write a column unless it is stored with exactly these values (a torn write is written again)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    try:
        stored: Optional[np.ndarray] = np.asarray(group[path][:])
    except (KeyError, FileNotFoundError, ValueError):
        stored = None
    kind = str if values.dtype.kind == "U" else values.dtype
    # compared as Python values: zarr reads strings back as NumPy's variable-width StringDType
    if stored is not None and stored.shape == values.shape and stored.tolist() == values.tolist():
        return
    arr = group.create_array(path, shape=values.shape, chunks=(max(1, min(len(values), 1 << 16)),), dtype=kind,
                             compressors=(ZstdCodec(level=0), Crc32cCodec()), overwrite=True)
    arr[:] = values
