"""Deleting an experiment or a whole run, under the same locks their writers hold."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

from ..errors import StoreNotFoundError
from .layout import LOCK_FILE, PROBE_LOCK_FILE, PROBES_DIR
from .location import Location, open_location
from .lock import WriterLock, break_lock
from .root import check_store_path, open_root, resolve_run

__all__ = ["experiment_lock", "remove"]

log = logging.getLogger(__name__)


def experiment_lock(folder: "Path | Location", name: str) -> WriterLock:
    """The lock of one experiment folder (taken by `probe` and by `rm`)."""
    return WriterLock(folder, name, path=open_location(folder) / PROBE_LOCK_FILE, what=f"experiment {name!r}",
                      fix="wait for that probe to finish, or use another --name")


def remove(store: "str | Path | Location", run: Optional[str] = None, experiment: Optional[str] = None,
           break_locks: bool = False) -> "Path | str":
    """Delete one experiment of a run, or (no experiment) the run itself; returns what was removed.

    Refused while a writer holds the experiment (or, for a run, the run or any of its experiments).
    `break_locks` first removes the locks of writers that died (lock.break_lock).
    """
    path = check_store_path(store, must_exist=True)
    name = resolve_run(open_root(path), run, path)
    run_dir = path / name
    probes = run_dir / PROBES_DIR
    if experiment is not None:
        folder = probes / experiment
        if not (experiment not in (".", "..") and "/" not in experiment and folder.is_dir()):
            have = [n for n in probes.children() if not n.startswith(".") and (probes / n).is_dir()]
            raise StoreNotFoundError(
                f"experiment {experiment!r} not in run {name!r} (experiments: {', '.join(have) or 'none'}): "
                f"check the name with `stcstore info --store {path}`"
            )
        if break_locks:
            log.warning("%s", break_lock(folder / PROBE_LOCK_FILE, f"experiment {experiment!r}"))
        with experiment_lock(folder, experiment):
            folder.remove_tree(keep=_held(folder))
        folder.remove_tree()
        log.info("removed experiment %r of run %r", experiment, name)
        return _shown(folder)
    folders = [probes / n for n in probes.children() if (probes / n).is_dir()]
    if break_locks:
        log.warning("%s", break_lock(run_dir / LOCK_FILE, f"run {name!r}"))
        for folder in folders:
            log.warning("%s", break_lock(folder / PROBE_LOCK_FILE, f"experiment {folder.name!r}"))
    with ExitStack() as locks:
        locks.enter_context(WriterLock(run_dir, name))
        for folder in folders:
            locks.enter_context(experiment_lock(folder, folder.name))
        run_dir.remove_tree(keep=_held(run_dir))
    run_dir.remove_tree()
    log.info("removed run %r", name)
    return _shown(run_dir)


def _held(loc: Location) -> tuple[str, ...]:
    """Lock files to keep while deleting under them: none locally (an flock survives its file's
    deletion), the lock objects on object storage (their heartbeats rewrite them until released)."""
    return () if loc.is_local else (LOCK_FILE, PROBE_LOCK_FILE)


def _shown(loc: Location) -> "Path | str":
    return loc.local_path if loc.is_local else loc.url
