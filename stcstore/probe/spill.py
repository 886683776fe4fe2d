"""Kept columns too large to hold: raw row-major matrices in local scratch files, read a row range at a time.

Aggregation and the refit pass over the kept columns of every layer many times. When those
columns (in the store's dtype) exceed a fixed in-memory allowance they are written once to a
scratch file per layer and each pass reads the rows it needs with `pread`: the operating
system's page cache keeps them close while memory is free, and the process's own memory stays
flat in the row count. Files live under a private temporary folder (TMPDIR decides where)
that `Scratch` removes when the probe ends; folders of probes killed before that are removed
by the next probe that spills.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import ScratchSpaceError, is_no_room
from .memory import format_bytes

__all__ = ["RowFile", "Scratch", "IN_MEMORY_BYTES"]

# kept columns up to this size (all layers of a pool, train and val rows) stay in memory
IN_MEMORY_BYTES = 64 << 20
_PREFIX = "stcstore-probe-"


def _no_room(folder: Path, nbytes: int, why: str) -> ScratchSpaceError:
    """The error of a spill that does not fit: where, how much, and what to do."""
    return ScratchSpaceError(
        f"no room for {format_bytes(nbytes)} of the probe's scratch files in {folder} ({why}): free disk "
        f"space there or set TMPDIR to a folder on a disk with room, then rerun the same command to resume"
    )


def _remove_orphans() -> None:
    """Remove scratch folders of probes that died without cleaning up (kill -9): their pid is gone."""
    for d in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        try:
            pid = int(d.name[len(_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:   # another user's live process
            pass


class RowFile:
    """A read-only (n, m) matrix in a file, row-major; `[a:b]` and `[a:b, :m]` read those rows."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: Any, width: Optional[int] = None):
        self.path = Path(path)
        self._shape = (int(shape[0]), int(shape[1]))     # as stored
        self.dtype = np.dtype(dtype)
        self._width = self._shape[1] if width is None else int(width)
        self._fd: Optional[int] = None
        self._opening = threading.Lock()    # threads may read at once: one descriptor for all

    @classmethod
    def write(cls, path: Path, array: np.ndarray) -> "RowFile":
        """Store `array` (2-D) in a new file and return its reader."""
        a = np.ascontiguousarray(array)
        try:
            with open(path, "wb") as fh:
                if a.size:
                    fh.write(memoryview(a).cast("B"))
        except OSError as exc:
            if is_no_room(exc):
                raise _no_room(Path(path).parent, a.nbytes, exc.strerror) from None
            raise
        return cls(path, a.shape, a.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (self._shape[0], self._width)

    def __getitem__(self, key: Union[slice, tuple]) -> Union[np.ndarray, "RowFile"]:
        rows, cols = (key if isinstance(key, tuple) else (key, slice(None)))
        if rows == slice(None) and isinstance(cols, slice) and cols.start in (None, 0) and cols.step in (None, 1):
            # a column prefix: another reader of the same file (no read yet)
            width = self._width if cols.stop is None else min(int(cols.stop), self._width)
            return RowFile(self.path, self._shape, self.dtype, width)
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise IndexError("a RowFile reads contiguous row ranges only")
        start, stop, _ = rows.indices(self._shape[0])
        out = self._read(start, max(start, stop))[:, :self._width]
        return out[:, cols] if cols != slice(None) else out

    def _read(self, start: int, stop: int) -> np.ndarray:
        m = self._shape[1]
        out = np.empty((stop - start, m), dtype=self.dtype)
        if out.size == 0:
            return out
        fd = self._fd
        if fd is None:
            with self._opening:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
                fd = self._fd
        buf = memoryview(out).cast("B")
        offset, done = start * m * self.dtype.itemsize, 0
        while done < len(buf):
            got = os.preadv(fd, [buf[done:]], offset + done)
            if got <= 0:
                raise OSError(f"scratch file {self.path} is shorter than expected")
            done += got
        return out

    def close(self) -> None:
        """Close the file descriptor (reads reopen it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"RowFile({self.path.name}, shape={self.shape}, dtype={self.dtype})"


class Scratch:
    """A private temporary folder for spilled columns; `hold` keeps small matrices in memory."""

    def __init__(self, in_memory_bytes: Optional[int] = None) -> None:
        self.in_memory_bytes = int(IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes)
        self._dir: Optional[Path] = None
        self._n = 0

    def spills(self, nbytes: int) -> bool:
        """Whether a set of columns of `nbytes` goes to files rather than memory."""
        return nbytes > self.in_memory_bytes

    def file(self, array: np.ndarray, name: str = "cols") -> RowFile:
        """`array` written to a new scratch file."""
        if self._dir is None:
            _remove_orphans()
            self._dir = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        self._n += 1
        # checked first: a search that would fill the disk stops before it writes, with the fix
        free = shutil.disk_usage(self._dir).free
        if array.nbytes > free:
            raise _no_room(self._dir, array.nbytes, f"{format_bytes(free)} free")
        path = self._dir / f"{self._n:05d}.{name}.raw"
        try:
            return RowFile.write(path, array)
        except ScratchSpaceError:
            path.unlink(missing_ok=True)    # what did fit only takes room from the rest of the disk
            raise

    def close(self) -> None:
        """Remove every scratch file."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
