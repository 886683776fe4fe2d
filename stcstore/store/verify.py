"""Proving a run is whole: every committed window's chunks exist and decode.

Zarr reads a missing chunk as the fill value, so a deleted file would pass for a window of
zeros; completeness comes from the progress records (`progress.py`), and this module checks
that the chunks those records promise are really there (`missing_chunks`, a directory listing,
cheap enough for every `probe`) and really decode (`verify_run`, reads everything: blosc's
stream checks, the crc32c checksum new stores carry after compression, and finiteness, since
extract never commits a non-finite value). `drop_windows` forgets damaged windows so that
rerunning the same extract command redoes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from ..errors import DamagedRunError
from .codecs import pool_checksums
from .layout import N_TOKENS, ROW_ID, array_path
from .lock import WriterLock
from .progress import committed_windows, uncommit_window
from .quiet import quiet_zarr
from .reader import RunReader

__all__ = ["Damage", "VerifyResult", "missing_chunks", "require_chunks", "verify_run", "drop_windows", "damage_message", "verify_units"]


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: which array, window (= chunk along rows) and layer, and what is wrong."""

    array: str               # path inside the run, e.g. "train/ffn/mean"
    split: str
    window: int
    rows: tuple[int, int]    # [start, stop) of the window
    layer: Optional[int]     # None for the per-row arrays (row_id, n_tokens)
    problem: str             # "missing", "does not decode (...)", "non-finite values"

    def describe(self) -> str:
        """'train/ffn/mean window 2 (rows 128-191, layer 3): missing'."""
        where = f"rows {self.rows[0]}-{self.rows[1] - 1}" + ("" if self.layer is None else f", layer {self.layer}")
        return f"{self.array} window {self.window} ({where}): {self.problem}"


@dataclass
class VerifyResult:
    """What `verify_run` found in one run."""

    run: str
    windows_committed: int
    windows_total: int
    chunks_checked: int
    checksummed: bool        # True when the activation arrays carry a crc32c codec
    damage: list[Damage]

    @property
    def ok(self) -> bool:
        return not self.damage

    @property
    def damaged_windows(self) -> list[tuple[str, int]]:
        """(split, window) of every damaged window, each once, in order."""
        return sorted({(d.split, d.window) for d in self.damage})


def _targets(reader: RunReader) -> list[tuple[str, str, bool]]:
    """(split, array path, has a layer axis) of every array a window writes."""
    out = []
    for split in reader.splits:
        for site in reader.sites:
            for pool in reader.pools:
                out.append((split, array_path(split, site, pool), True))
        out += [(split, f"{split}/{ROW_ID}", False), (split, f"{split}/{N_TOKENS}", False)]
    return out


def missing_chunks(reader: RunReader) -> list[Damage]:
    """Chunks of committed windows that have no file (a listing per array; reads no data)."""
    lay = reader.layout
    committed = {s: sorted(committed_windows(reader.run_loc, s)) for s in reader.splits}
    out: list[Damage] = []
    with quiet_zarr():
        for split, path, layered in _targets(reader):
            if not committed[split]:
                continue
            arr = reader.group[path]
            files = set((reader.run_loc / path).files())
            n_layers = arr.shape[0] if layered else 1
            for w in committed[split]:
                for layer in range(n_layers):
                    coords = (layer, w, 0) if layered else (w,)
                    if arr.metadata.encode_chunk_key(coords) not in files:
                        out.append(Damage(path, split, w, lay.window_bounds(split, w), layer if layered else None, "missing"))
    return out


def damage_message(run: str, store: str | Path, damage: list[Damage]) -> str:
    """One line naming the first damaged array and window, how many there are, and the fix."""
    windows = len({(d.split, d.window) for d in damage})
    count = f"{len(damage)} chunks in {windows} window{'s' if windows > 1 else ''}, first " if len(damage) > 1 else ""
    return (
        f"run {run!r} is damaged: {count}{damage[0].describe()}: run `stcstore verify --store {store} --run {run} "
        f"--repair`, then the same `stcstore extract` command to re-extract those windows"
    )


def require_chunks(reader: RunReader) -> None:
    """Raise DamagedRunError when a committed window lacks a chunk file (it would read as zeros)."""
    damage = missing_chunks(reader)
    if damage:
        raise DamagedRunError(damage_message(reader.name, reader.store_path, damage))


def _is_checksummed(arr: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in arr.compressors)


def _decode_problem(read: Callable[[], np.ndarray], check_finite: bool) -> Optional[str]:
    """None when the chunk(s) decode (and are finite), else what went wrong."""
    try:
        values = read()
    except Exception as exc:  # any codec error (checksum, blosc stream, short file) is damage
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"does not decode ({type(exc).__name__}: {msg[:80]})"
    if check_finite and not np.isfinite(values).all():
        return "non-finite values (extract never stores them)"
    return None


def verify_run(reader: RunReader, progress: Optional[Callable[[int], None]] = None) -> VerifyResult:
    """Check that every committed window's chunks exist and decode; report every damaged chunk."""
    lay = reader.layout
    damage = missing_chunks(reader)
    missing = {(d.array, d.window, d.layer) for d in damage}
    committed = {s: sorted(committed_windows(reader.run_loc, s)) for s in reader.splits}
    checked = 0
    checksummed = True
    with quiet_zarr():
        for split, path, layered in _targets(reader):
            with pool_checksums():
                arr = reader.group[path]
            checksummed &= _is_checksummed(arr) or not layered
            finite = layered  # activations: extract refuses non-finite values before committing
            for w in committed[split]:
                start, stop = lay.window_bounds(split, w)
                if layered:
                    # one read per window (all layers' chunks at once); per layer only to name a bad one
                    whole = _decode_problem(lambda: arr[:, start:stop, :], finite)
                    for layer in range(arr.shape[0]):
                        if (path, w, layer) in missing:
                            continue
                        problem = whole and _decode_problem(lambda: arr[layer, start:stop, :], finite)
                        if problem:
                            damage.append(Damage(path, split, w, (start, stop), layer, problem))
                    checked += arr.shape[0]
                else:
                    if (path, w, None) not in missing:
                        problem = _decode_problem(lambda: arr[start:stop], False)
                        if problem:
                            damage.append(Damage(path, split, w, (start, stop), None, problem))
                    checked += 1
                if progress is not None and layered:
                    progress(1)
    done = sum(len(v) for v in committed.values())
    total = sum(lay.n_windows(s) for s in reader.splits)
    damage.sort(key=lambda d: (reader.splits.index(d.split), d.window, d.array, -1 if d.layer is None else d.layer))
    return VerifyResult(reader.name, done, total, checked, checksummed, damage)


def verify_units(reader: RunReader) -> int:
    """How many progress steps `verify_run` reports (one per activation array and committed window)."""
    n_arrays = len(reader.sites) * len(reader.pools)
    return sum(len(committed_windows(reader.run_loc, s)) * n_arrays for s in reader.splits)


def drop_windows(reader: RunReader, windows: Iterable[tuple[str, int]]) -> int:
    """Forget the commit records of these windows (under the writer lock); return how many."""
    dropped = 0
    with WriterLock(reader.run_loc, reader.name):
        for split, w in windows:
            dropped += uncommit_window(reader.run_loc, split, w)
    return dropped
