"""The manifest of committed windows: one small JSON file per window, written atomically.

One file per window (rather than one JSON list) means concurrent writers of disjoint windows
(torchrun ranks) never race on a shared file, and any process can read progress by listing.
Completeness comes from these files only, never from chunk existence: zarr reads missing
chunks as the fill value.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .layout import PROGRESS_DIR
from .location import Location, open_location

__all__ = ["commit_window", "uncommit_window", "committed_windows", "window_records", "clear_progress", "atomic_write_text"]

RunDir = "Path | str | Location"
log = logging.getLogger(__name__)


def _split_dir(run_dir: RunDir, split: str) -> Location:
    return open_location(run_dir) / PROGRESS_DIR / split


def _record_name(window: int) -> str:
    return f"w{window:08d}.json"


def _is_record(name: str) -> bool:
    return name.startswith("w") and name.endswith(".json") and name[1:9].isdigit()


def atomic_write_text(path: "Path | str | Location", text: str) -> None:
    """Write a file so readers see either the old content or the new, never a torn one.

    Local: temp file + rename; object storage: one PUT (atomic there).
    """
    open_location(path).write_text(text)


def commit_window(run_dir: RunDir, split: str, window: int, record: dict[str, Any]) -> None:
    """Mark one window of a split as fully written (call after its chunks are stored).

    On object storage the record is created only if none exists (If-None-Match): a writer that
    stalled with a request in flight, and lost its lock meanwhile, cannot replace the record of
    the writer that took over (a window already committed stays as it was).
    """
    loc = _split_dir(run_dir, split) / _record_name(window)
    if loc.is_local:
        loc.write_text(json.dumps(record))
        return
    try:
        loc.create_exclusive(json.dumps(record).encode())
    except FileExistsError:
        log.warning("window %d of split %r was already committed by another writer: kept as it is", window, split)


def uncommit_window(run_dir: RunDir, split: str, window: int) -> bool:
    """Forget one committed window (its chunks are damaged): the next extract redoes it."""
    return (_split_dir(run_dir, split) / _record_name(window)).remove()


def committed_windows(run_dir: RunDir, split: str) -> set[int]:
    """Indices of the committed windows of a split."""
    return {int(n[1:9]) for n in _split_dir(run_dir, split).children() if _is_record(n)}


def window_records(run_dir: RunDir, split: str) -> dict[int, dict[str, Any]]:
    """The records (rows, tokens, truncated, seconds) of every committed window of a split."""
    d = _split_dir(run_dir, split)
    return {int(n[1:9]): json.loads((d / n).read_text()) for n in d.children() if _is_record(n)}


def clear_progress(run_dir: RunDir) -> None:
    """Forget every committed window (used when a run's arrays are recreated)."""
    root = open_location(run_dir) / PROGRESS_DIR
    for split in root.children():
        for name in (root / split).children():
            (root / split / name).remove()
