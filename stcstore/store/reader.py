"""Reading a run: one (split, site, pool) array as zarr or NumPy, columns, progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import IncompleteRunError, StoreNotFoundError
from .codecs import pool_checksums
from .layout import N_TOKENS, PROBES_DIR, ROW_ID, RUN_ATTR, array_path, column_path
from .progress import committed_windows, window_records
from .quiet import quiet_zarr
from .location import Location, open_location
from .root import open_root, resolve_run
from .writer import RunLayout

__all__ = ["RunReader", "open_run"]


class RunReader:
    """Read-only view of one extraction run of a store."""

    def __init__(self, store: "str | Path | Location", run: str | None = None):
        # where the store lives: a local folder or an object-storage URL (location.py)
        self.location = open_location(store)
        with quiet_zarr():
            self.root = open_root(self.location)
            self.name = resolve_run(self.root, run, self.location)
            self.group: zarr.Group = self.root[self.name]
        self.meta: dict[str, Any] = self.group.attrs[RUN_ATTR]
        self.layout = RunLayout.from_meta(self.meta["layout"])
        self.run_loc = self.location / self.name

    @property
    def store_path(self) -> "Path | str":
        """The store's local folder, or its URL on object storage."""
        return self.location.local_path if self.location.is_local else self.location.url

    @property
    def run_dir(self) -> "Path | Location":
        """The run's local folder (a Location on object storage)."""
        return self.run_loc.local_path if self.run_loc.is_local else self.run_loc

    # -- shape of the run ----------------------------------------------------------------
    @property
    def splits(self) -> list[str]:
        """Split names in source order."""
        return list(self.layout.splits)

    @property
    def sites(self) -> tuple[str, ...]:
        return self.layout.sites

    @property
    def pools(self) -> tuple[str, ...]:
        return self.layout.pools

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta["fingerprint"]

    @property
    def model(self) -> dict[str, Any]:
        """What the run recorded of its model: id, weight hash, revision, architecture."""
        return self.meta["model"]

    @property
    def dataset(self) -> dict[str, Any]:
        return self.meta["dataset"]

    def n_rows(self, split: str) -> int:
        """Rows of a split."""
        self._check_split(split)
        return self.layout.splits[split]

    def n_layers(self, site: str) -> int:
        """Entries along the layer axis of a site (hidden: L+1, ffn: L)."""
        self._check_site(site)
        return self.layout.n_layers[site]

    def width(self, site: str) -> int:
        """Feature width of a site."""
        self._check_site(site)
        return self.layout.width[site]

    # -- progress -------------------------------------------------------------------------
    def completion(self) -> dict[str, tuple[int, int]]:
        """Committed and total windows per split."""
        return {s: (len(committed_windows(self.run_loc, s)), self.layout.n_windows(s)) for s in self.splits}

    def is_complete(self) -> bool:
        """True when every window of every split is committed."""
        return all(done == total for done, total in self.completion().values())

    def require_complete(self) -> None:
        """Raise IncompleteRunError when the extraction is unfinished, DamagedRunError when a
        committed window's chunk file is missing (it would read as zeros)."""
        if not self.is_complete():
            done = sum(d for d, _ in self.completion().values())
            total = sum(t for _, t in self.completion().values())
            raise IncompleteRunError(
                f"run {self.name!r} is not fully extracted ({done}/{total} windows, "
                f"{100 * done / max(total, 1):.0f}%): rerun the same `stcstore extract` command to finish it"
            )
        from .verify import require_chunks  # verify imports this module

        require_chunks(self)

    def window_records(self, split: str) -> dict[int, dict[str, Any]]:
        """Per-window records (rows, tokens, truncated, seconds) of a split."""
        return window_records(self.run_loc, split)

    # -- data -----------------------------------------------------------------------------
    def array(self, split: str, site: str, pool: str) -> zarr.Array:
        """The zarr array (n_layers, rows, width) of one split, site and pool."""
        self._check_split(split)
        self._check_site(site)
        if pool not in self.pools:
            raise StoreNotFoundError(f"pool {pool!r} not in run {self.name!r} (pools: {','.join(self.pools)})")
        with pool_checksums():  # checksums of a read's chunks verified in parallel
            return self.group[array_path(split, site, pool)]

    def read(self, split: str, site: str, pool: str, layer: int | None = None, rows: Any = slice(None)) -> np.ndarray:
        """One array as NumPy: every layer, or one layer's (rows, width) block."""
        arr = self.array(split, site, pool)
        if layer is None:
            return arr[:, rows, :]
        if not -arr.shape[0] <= layer < arr.shape[0]:
            raise StoreNotFoundError(f"layer {layer} out of range for {site} (0..{arr.shape[0] - 1})")
        return arr[layer, rows, :]

    def row_ids(self, split: str) -> np.ndarray:
        """Position of every stored row in its source split."""
        self._check_split(split)
        return self.group[f"{split}/{ROW_ID}"][:]

    def n_tokens(self, split: str) -> np.ndarray:
        """Token count of every row (after truncation)."""
        self._check_split(split)
        return self.group[f"{split}/{N_TOKENS}"][:]

    def columns(self, split: str) -> list[str]:
        """Names of the source columns stored for a split."""
        self._check_split(split)
        with quiet_zarr():
            g = self.group[split]
            return sorted(g["columns"].array_keys()) if "columns" in g else []

    def column(self, split: str, name: str) -> np.ndarray:
        """One stored source column of a split."""
        if name not in self.columns(split):
            raise StoreNotFoundError(
                f"column {name!r} not stored in run {self.name!r} (columns: {', '.join(self.columns(split)) or 'none'})"
            )
        values = self.group[column_path(split, name)][:]
        # zarr returns variable-width StringDType; callers get plain fixed-width str arrays
        return values.astype(object).astype(str) if values.dtype.kind == "T" else values

    def probes_dir(self) -> Path:
        """Folder of this run's probe experiments."""
        return self.run_dir / PROBES_DIR

    def experiments(self) -> list[str]:
        """Names of the probe experiments stored in this run."""
        d = self.run_loc / PROBES_DIR
        return sorted(n for n in d.children() if not n.startswith(".") and (d / n / "report.json").is_file())

    # -- checks ---------------------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        if split not in self.layout.splits:
            raise StoreNotFoundError(f"split {split!r} not in run {self.name!r} (splits: {', '.join(self.splits)})")

    def _check_site(self, site: str) -> None:
        if site not in self.layout.sites:
            raise StoreNotFoundError(f"site {site!r} not in run {self.name!r} (sites: {','.join(self.sites)})")


def open_run(store: "str | Path | Location", run: str | None = None) -> RunReader:
    """Open one run of a store for reading (the store's only run when `run` is None)."""
    return RunReader(store, run)
