"""The manifest of committed windows: one small JSON file per window, written atomically.

One file per window (rather than one JSON list) means concurrent writers of disjoint windows
(torchrun ranks) never race on a shared file, and any process can read progress by listing.
Completeness comes from these files only, never from chunk existence: zarr reads missing
chunks as the fill value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .layout import PROGRESS_DIR

__all__ = ["commit_window", "uncommit_window", "committed_windows", "window_records", "clear_progress", "atomic_write_text"]


def _split_dir(run_dir: Path, split: str) -> Path:
    return run_dir / PROGRESS_DIR / split


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see either the old content or the new, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def commit_window(run_dir: Path, split: str, window: int, record: dict[str, Any]) -> None:
    """Mark one window of a split as fully written (call after its chunks are on disk)."""
    atomic_write_text(_split_dir(run_dir, split) / f"w{window:08d}.json", json.dumps(record))


def uncommit_window(run_dir: Path, split: str, window: int) -> bool:
    """Forget one committed window (its chunks are damaged): the next extract redoes it."""
    path = _split_dir(run_dir, split) / f"w{window:08d}.json"
    if not path.is_file():
        return False
    path.unlink()
    return True


def committed_windows(run_dir: Path, split: str) -> set[int]:
    """Indices of the committed windows of a split."""
    d = _split_dir(run_dir, split)
    if not d.is_dir():
        return set()
    return {int(p.name[1:9]) for p in d.iterdir() if p.name.startswith("w") and p.name.endswith(".json")}


def window_records(run_dir: Path, split: str) -> dict[int, dict[str, Any]]:
    """The records (rows, tokens, truncated, seconds) of every committed window of a split."""
    d = _split_dir(run_dir, split)
    out: dict[int, dict[str, Any]] = {}
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith("w") and p.name.endswith(".json"):
                out[int(p.name[1:9])] = json.loads(p.read_text(encoding="utf-8"))
    return out


def clear_progress(run_dir: Path) -> None:
    """Forget every committed window (used when a run's arrays are recreated)."""
    root = run_dir / PROGRESS_DIR
    if root.is_dir():
        for split_dir in root.iterdir():
            for p in split_dir.iterdir():
                p.unlink()
