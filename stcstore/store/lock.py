"""One writer per run (and per probe experiment).

Local folders: an advisory flock that the kernel releases when the process dies.

Object storage has no advisory locks, so there the lock is an object (`_writer.lock`) created
with a conditional write (S3: `If-None-Match: *`, refused when the object exists) that names its
owner and carries a heartbeat, rewritten by a background thread every `lease / 6` seconds. A
second writer is refused while the heartbeat is younger than the lease (`STCSTORE_LOCK_LEASE`,
default 60 s). A writer killed with -9 stops beating: once its heartbeat is older than the lease
the next writer takes the lock over, replacing the object only if it is still the one it read
(S3: `If-Match: <etag>`), so of two writers racing for a stale lock exactly one wins.
`break_lock` removes a dead writer's lock at once, after checking that its heartbeat no longer
moves. A writer whose lock was taken over (it stalled for longer than the lease) finds out at
its next commit and stops before writing a record.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, StoreLockedError
from .layout import LOCK_FILE
from .location import Location, open_location

__all__ = ["WriterLock", "break_lock", "lease_seconds", "LEASE_ENV", "DEFAULT_LEASE_S"]

log = logging.getLogger(__name__)

LEASE_ENV = "STCSTORE_LOCK_LEASE"
DEFAULT_LEASE_S = 60.0
# heartbeats per lease: a holder that misses a few (a slow request) keeps its lock
BEATS_PER_LEASE = 6


def lease_seconds() -> float:
    """The lease of an object-storage lock: STCSTORE_LOCK_LEASE seconds, default 60."""
    raw = os.environ.get(LEASE_ENV)
    if raw is None:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{LEASE_ENV}={raw!r} is not a number of seconds above 0: e.g. {LEASE_ENV}=60")
    return value


def _conditional(loc: Location) -> bool:
    """True where the store replaces an object only if its ETag still matches (S3 If-Match)."""
    return loc.protocol in ("s3", "s3a")


class WriterLock:
    """Exclusive, non-blocking lock on `<run>/_writer.lock` (or `path`); a second writer is refused."""

    def __init__(self, run_dir: "Path | str | Location", run_name: str, *, path: "Path | str | Location | None" = None,
                 what: str | None = None, fix: str = "wait for it to finish, or use another --run"):
        self.loc = open_location(path) if path is not None else open_location(run_dir) / LOCK_FILE
        self.path = self.loc.local_path if self.loc.is_local else self.loc
        self.run_name = run_name
        # what is locked, as the refusal names it (default: the run)
        self.what = what or f"run {run_name!r}"
        self.fix = fix
        self._fh = None
        # object storage: our token and the lock object's ETag, the heartbeat thread, why it was lost
        self.lease_s = lease_seconds()
        self._token = uuid.uuid4().hex
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._renewing = threading.Lock()   # the heartbeat thread and check() never renew at once
        self._renewed = 0.0                 # monotonic time of the last successful heartbeat
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None

    # -- taking and giving back -----------------------------------------------------------
    def acquire(self) -> "WriterLock":
        """Take the lock or raise StoreLockedError naming the holder."""
        if self.loc.is_local:
            return self._acquire_flock()
        for _ in range(5):  # a lock that vanishes or changes while we look: look again
            try:
                self._etag = _etag_of(self.loc, self.loc.create_exclusive(self._body()))
                break
            except FileExistsError:
                pass
            held = read_lock(self.loc)
            if held is None:
                continue
            age = time.time() - held["heartbeat"]
            lease = float(held.get("lease_s") or self.lease_s)  # the holder's own lease
            if age < lease:
                raise StoreLockedError(
                    f"{self.what} is being written by {_owner(held)} (heartbeat {age:.0f} s ago, lease "
                    f"{lease:.0f} s): {self.fix}; a writer that died is taken over after the lease, "
                    f"or at once with --break-lock")
            if self._take_over(held):
                log.warning("%s: took over the lock of %s, whose heartbeat stopped %.0f s ago (lease %.0f s)",
                            self.what, _owner(held), age, lease)
                break
        else:
            raise StoreLockedError(f"{self.what}: its lock at {self.loc} keeps changing: {self.fix}")
        self._renewed = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="stcstore-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Release the lock (a flock is also released by the kernel if the process dies)."""
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.lost is None:
                held = read_lock(self.loc)
                if held is not None and held.get("token") == self._token:
                    self.loc.remove()

    def check(self) -> None:
        """Raise StoreLockedError when another writer has taken this lock over (we stalled past the lease).

        Called before every commit. When the last heartbeat is older than half the lease (this
        process was stopped or starved, and its heartbeat thread with it), the lock is renewed
        here first, so a writer that lost its lock finds out before it writes a record.
        """
        if self._thread is not None and self.lost is None and time.monotonic() - self._renewed > self.lease_s / 2:
            self._refresh()
        if self.lost is not None:
            raise StoreLockedError(f"{self.what}: {self.lost}: stopped before committing more; rerun to resume")

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- local ----------------------------------------------------------------------------
    def _acquire_flock(self) -> "WriterLock":
        import fcntl

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

    # -- object storage -------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self._token,
                           "heartbeat": time.time(), "lease_s": self.lease_s}).encode()

    def _take_over(self, held: dict[str, Any]) -> bool:
        """Replace a stale lock, only if it is still the one we read; False when someone else was first."""
        try:
            if _conditional(self.loc):
                self._etag = _etag_of(self.loc, self.loc.replace_if_unchanged(self._body(), held["_etag"]))
            else:
                # no conditional replace here: delete, then create (a racing writer's create fails)
                self.loc.remove()
                self._etag = _etag_of(self.loc, self.loc.create_exclusive(self._body()))
            return True
        except (FileExistsError, FileNotFoundError):  # another writer was first
            return False

    def _refresh(self) -> None:
        """Rewrite the heartbeat, only while the lock is still ours."""
        with self._renewing:
            if self.lost is None:
                self._refresh_now()
                if self.lost is None:
                    self._renewed = time.monotonic()

    def _refresh_now(self) -> None:
        if _conditional(self.loc):
            try:
                self._etag = _etag_of(self.loc, self.loc.replace_if_unchanged(self._body(), self._etag))
            except (FileExistsError, FileNotFoundError):  # replaced (taken over) or removed (--break-lock)
                self.lost = self._lost_message()
            return
        held = read_lock(self.loc)
        if held is None or held.get("token") != self._token:
            self.lost = self._lost_message(held)
            return
        self.loc.write_bytes(self._body())

    def _lost_message(self, held: Optional[dict] = None) -> str:
        held = held if held is not None else read_lock(self.loc)
        who = f"it is now held by {_owner(held)}" if held else "it was removed (--break-lock?)"
        return f"lost the lock at {self.loc}: {who}"

    def _beat(self) -> None:
        interval = self.lease_s / BEATS_PER_LEASE
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                self._refresh()
                last_ok = time.monotonic()
            except Exception as exc:  # a failed request: try again next beat, until the lease is gone
                if time.monotonic() - last_ok > self.lease_s:
                    self.lost = f"could not renew the lock at {self.loc} for {self.lease_s:.0f} s ({exc})"
                log.debug("lock heartbeat failed: %s", exc)
            if self.lost is not None:
                log.error("%s: %s", self.what, self.lost)
                return


def _etag_of(loc: Location, put_response: Any) -> Optional[str]:
    """The ETag a PUT returned (s3fs returns botocore's response), else the object's current one."""
    if isinstance(put_response, dict) and put_response.get("ETag"):
        return put_response["ETag"]
    if not _conditional(loc):
        return None
    return loc.fs.info(loc.path).get("ETag")


def _owner(held: dict[str, Any]) -> str:
    return f"pid {held.get('pid', '?')} on {held.get('host', '?')}"


def read_lock(loc: Location) -> Optional[dict[str, Any]]:
    """The lock object's owner, heartbeat and ETag (`_etag`), or None when there is no lock."""
    try:
        etag = loc.fs.info(loc.path).get("ETag") if _conditional(loc) else None
        held = json.loads(loc.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:  # not ours or torn (cannot happen with one PUT): treat as long dead
        held = {"pid": "?", "host": "?", "heartbeat": 0.0}
    if not isinstance(held, dict):
        held = {"heartbeat": 0.0}
    held.setdefault("heartbeat", 0.0)
    held["_etag"] = etag
    return held


def break_lock(lock_loc: "Location | Path | str", what: str) -> str:
    """Remove the lock of a writer that died; refuse while its holder is alive. Says what it removed."""
    loc = open_location(lock_loc)
    if loc.is_local:
        probe = WriterLock(loc.parent, what, path=loc, what=what,
                           fix="it is alive (a local lock is released when its process dies): stop it first")
        probe.acquire().release()  # raises StoreLockedError while a live process holds the flock
        return f"{what}: no lock to break (a local lock ends with its process)"
    held = read_lock(loc)
    if held is None:
        return f"{what}: no lock to break at {loc}"
    lease = float(held.get("lease_s") or lease_seconds())
    interval = lease / BEATS_PER_LEASE
    age = time.time() - held["heartbeat"]
    if age < 2 * interval:
        # its heartbeat is recent: watch it for one more beat; a live holder rewrites it
        time.sleep(max(0.0, 2 * interval - age) + 0.2)
        now = read_lock(loc)
        if now is not None and now.get("heartbeat") != held.get("heartbeat"):
            raise StoreLockedError(
                f"{what} is being written by {_owner(now)}, alive (its heartbeat moved {time.time() - now['heartbeat']:.0f} s "
                f"ago): stop that writer first; --break-lock only removes the lock of a writer that died")
        if now is None:
            return f"{what}: no lock to break at {loc}"
        held = now
    loc.remove()
    age = time.time() - held["heartbeat"]
    return f"{what}: removed the lock of {_owner(held)} at {loc} (last heartbeat {age:.0f} s ago)"
