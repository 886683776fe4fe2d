"""The Zarr feature store: layout, writing whole windows, resumable progress, reading."""

from .layout import FORMAT_VERSION, array_path, chunk_rows_for, column_path
from .lock import WriterLock
from .progress import commit_window, committed_windows
from .reader import RunReader, open_run
from .root import check_store_path, list_runs, open_root, resolve_run
from .writer import RunLayout, RunWriter, check_fingerprint

__all__ = [
    "FORMAT_VERSION",
    "RunLayout",
    "RunReader",
    "RunWriter",
    "WriterLock",
    "array_path",
    "check_fingerprint",
    "check_store_path",
    "chunk_rows_for",
    "column_path",
    "commit_window",
    "committed_windows",
    "list_runs",
    "open_root",
    "open_run",
    "resolve_run",
]
