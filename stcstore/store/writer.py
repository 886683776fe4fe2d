"""Creating a run's arrays up front and writing whole windows of rows into them."""

from __future__ import annotations

import logging
from concurrent.futures import wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from ..errors import FingerprintMismatchError
from .codecs import DirectChunkWriter, pool_checksums
from .fingerprint import fingerprint_diff, fingerprint_hash
from .layout import (
    LOCK_FILE,
    N_TOKENS,
    ROW_ID,
    RUN_ATTR,
    DEFAULT_CODEC,
    array_path,
    column_path,
    compressors,
)
from .location import Location, open_location
from .progress import clear_progress, commit_window

__all__ = ["RunLayout", "RunWriter", "check_fingerprint"]

log = logging.getLogger(__name__)


@dataclass
class RunLayout:
    """Shapes of a run: splits and their rows, sites, pools, layers and widths, dtype, chunks."""

    splits: dict[str, int]
    sites: tuple[str, ...]
    pools: tuple[str, ...]
    n_layers: dict[str, int]      # site -> entries (hidden: L+1, ffn: L)
    width: dict[str, int]         # site -> feature width (d or d_ff)
    dtype: str
    chunk_rows: int
    # codec of the activation arrays (layout.CODECS); recorded in each array's zarr.json too.
    # Not part of the fingerprint: it changes the bytes on disk, never the numbers read back.
    codec: str = DEFAULT_CODEC

    @classmethod
    def from_meta(cls, layout: Mapping[str, Any]) -> "RunLayout":
        """The layout recorded in a run's attributes (runs from before codecs were named used zstd)."""
        lay = {"codec": "zstd", **layout}
        lay["sites"], lay["pools"] = tuple(lay["sites"]), tuple(lay["pools"])
        return cls(**lay)

    def n_windows(self, split: str) -> int:
        """Number of windows (= chunks along rows) of a split."""
        n = self.splits[split]
        return (n + self.chunk_rows - 1) // self.chunk_rows

    def window_bounds(self, split: str, window: int) -> tuple[int, int]:
        """Row range [start, stop) of one window."""
        start = window * self.chunk_rows
        return start, min(start + self.chunk_rows, self.splits[split])


def check_fingerprint(run_group: zarr.Group, run_name: str, fingerprint: dict[str, Any]) -> None:
    """Refuse a run whose stored fingerprint differs from the one given, naming what changed."""
    stored = run_group.attrs.get(RUN_ATTR, {}).get("fingerprint")
    if stored is None:
        return
    diff = fingerprint_diff(stored, fingerprint)
    if diff:
        raise FingerprintMismatchError(
            f"run {run_name!r} was extracted with other settings ({'; '.join(diff)}): "
            f"use the original settings to resume, or a new --run name"
        )


class RunWriter:
    """Writes one run: arrays preallocated at full size, then whole windows at a time."""

    def __init__(self, root: zarr.Group, run_dir: "Path | Location", run_name: str):
        self.root = root
        self.run_dir = open_location(run_dir)  # a local folder or a place on object storage
        # the writer lock (lock.py): on object storage a lock taken over by another writer
        # (this one stalled past the lease) stops the next commit
        self.lock = None
        self.run_name = run_name
        self.group: zarr.Group | None = None
        self.layout: RunLayout | None = None
        self._arrays: dict[tuple[str, str, str], zarr.Array] = {}
        self._ntok: dict[str, zarr.Array] = {}
        self._direct: dict[int, tuple] = {}  # id(array) -> (array, its codecs.DirectChunkWriter)

    def open_existing(self, fingerprint: dict[str, Any]) -> bool:
        """Open a fully created run with this fingerprint; False when there is none to resume."""
        if self.run_name not in self.root or RUN_ATTR not in self.root[self.run_name].attrs:
            return False
        group = self.root[self.run_name]
        check_fingerprint(group, self.run_name, fingerprint)
        meta = group.attrs[RUN_ATTR]
        self.layout = RunLayout.from_meta(meta["layout"])
        self.group = group
        self._bind_arrays()
        return True

    def create(
        self,
        layout: RunLayout,
        fingerprint: dict[str, Any],
        meta: dict[str, Any],
        row_ids: Mapping[str, np.ndarray],
        columns: Mapping[str, Mapping[str, np.ndarray]],
    ) -> None:
        """Create every array at full size and write the per-row source columns.

        The run attribute that marks the run as created is written last, so a crash during
        creation leaves a run that the next call recreates from scratch.
        """
        # A half-created run from a crash has nothing committed: remove it, but keep the lock
        # file we hold (zarr's own delete would remove the whole directory).
        for child in self.run_dir.children():
            if child != LOCK_FILE:
                (self.run_dir / child).remove_tree()
        clear_progress(self.run_dir)
        group = self.root.create_group(self.run_name)
        comp = compressors(layout.codec)
        for split, n in layout.splits.items():
            for site in layout.sites:
                for pool in layout.pools:
                    group.create_array(
                        array_path(split, site, pool),
                        shape=(layout.n_layers[site], n, layout.width[site]),
                        chunks=(1, layout.chunk_rows, layout.width[site]),
                        dtype=layout.dtype,
                        compressors=comp,
                        fill_value=0,
                    )
            rid = group.create_array(f"{split}/{ROW_ID}", shape=(n,), chunks=(layout.chunk_rows,), dtype="int64",
                                     fill_value=-1, compressors=_small_compressors())
            rid[:] = np.asarray(row_ids[split], dtype=np.int64)
            group.create_array(f"{split}/{N_TOKENS}", shape=(n,), chunks=(layout.chunk_rows,), dtype="int32",
                               fill_value=0, compressors=_small_compressors())
            for name, values in columns.get(split, {}).items():
                _write_column(group, column_path(split, name), values, layout.chunk_rows)
        group.attrs[RUN_ATTR] = {
            **meta,
            "fingerprint": fingerprint,
            "fingerprint_hash": fingerprint_hash(fingerprint),
            "layout": asdict(layout),
        }
        self.group, self.layout = group, layout
        self._bind_arrays()

    def _bind_arrays(self) -> None:
        with pool_checksums():
            self._bind_arrays_now()

    def _bind_arrays_now(self) -> None:
        lay = self.layout
        for split in lay.splits:
            for site in lay.sites:
                for pool in lay.pools:
                    # whole windows of real activations are never all zero: skip zarr's
                    # per-chunk "equal to the fill value?" scan (a tenth of the write cost)
                    self._arrays[(split, site, pool)] = self.group[array_path(split, site, pool)].with_config(
                        {"write_empty_chunks": True})
            self._ntok[split] = self.group[f"{split}/{N_TOKENS}"]

    def write_window(
        self,
        split: str,
        window: int,
        pooled: Mapping[tuple[str, str], np.ndarray],
        n_tokens: np.ndarray,
        record: dict[str, Any],
    ) -> None:
        """Write one window's arrays (whole chunks), then commit it in the manifest."""
        self.write_arrays(split, window, pooled)
        self.finish_window(split, window, n_tokens, record)

    def write_arrays(self, split: str, window: int, pooled: Mapping[tuple[str, str], np.ndarray]) -> None:
        """Write some (site, pool) arrays of one window; it stays uncommitted until finish_window."""
        start, stop = self.layout.window_bounds(split, window)
        # one task per chunk (one layer of one array) on codecs.chunk_pool(): each encodes and
        # stores its chunk with the array's own codecs, in the bytes zarr writes, so compression
        # and file writes use every host core and little stays serial
        # (benchmarks/store_ingest.py); stores without synchronous writes go through zarr
        for (site, pool), values in pooled.items():  # all checked before any is written
            want = (self.layout.n_layers[site], stop - start, self.layout.width[site])
            if np.shape(values) != want:  # zarr would cut a too-wide window silently
                raise ValueError(f"{split}/{site}/{pool} window {window} has shape {np.shape(values)}, not {want}")
        tasks = []
        for (site, pool), values in pooled.items():
            arr = self._arrays[(split, site, pool)]
            direct = self._direct.get(id(arr))
            if direct is None or direct[0] is not arr:
                direct = self._direct[id(arr)] = (arr, DirectChunkWriter(arr))
            if not direct[1].ok or direct[1].chunk_shape != (1, self.layout.chunk_rows, arr.shape[2]):
                arr[:, start:stop, :] = values
                continue
            tasks += [direct[1].submit((layer, window, 0), values[layer : layer + 1]) for layer in range(arr.shape[0])]
        wait(tasks)
        for task in tasks:
            task.result()  # the first chunk's error, if any, once every chunk has finished

    def finish_window(self, split: str, window: int, n_tokens: np.ndarray, record: dict[str, Any]) -> None:
        """Write the window's token counts and commit it: only now does resume skip it."""
        start, stop = self.layout.window_bounds(split, window)
        self._ntok[split][start:stop] = n_tokens
        if self.lock is not None:
            self.lock.check()
        commit_window(self.run_dir, split, window, record)


def _small_compressors() -> tuple:
    """zarr's default zstd for the per-row arrays, plus the checksum every stored chunk carries."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0), Crc32cCodec())


def _write_column(group: zarr.Group, path: str, values: np.ndarray, chunk_rows: int) -> None:
    values = np.asarray(values)
    if values.dtype.kind in "OUT":
        arr = group.create_array(path, shape=values.shape, chunks=(chunk_rows,), dtype=str,
                                 compressors=_small_compressors())
        arr[:] = values.astype(str)
    else:
        arr = group.create_array(path, shape=values.shape, chunks=(chunk_rows,), dtype=values.dtype,
                                 compressors=_small_compressors())
        arr[:] = values
