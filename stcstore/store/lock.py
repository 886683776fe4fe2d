"""One writer per run: an advisory flock that the kernel releases when the process dies."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from ..errors import StoreLockedError
from .layout import LOCK_FILE

__all__ = ["WriterLock"]


class WriterLock:
    """Exclusive, non-blocking lock on `<run>/_writer.lock` (or `path`); a second writer is refused."""

    def __init__(self, run_dir: Path, run_name: str, *, path: Path | None = None, what: str | None = None,
                 fix: str = "wait for it to finish, or use another --run"):
        self.path = Path(path) if path is not None else Path(run_dir) / LOCK_FILE
        self.run_name = run_name
        # what is locked, as the refusal names it (default: the run)
        self.what = what or f"run {run_name!r}"
        self.fix = fix
        self._fh = None

    def acquire(self) -> "WriterLock":
        """Take the lock or raise StoreLockedError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StoreLockedError(f"{self.what} is being written by {holder}: {self.fix}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        """Release the lock (also released by the kernel if the process dies)."""
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
