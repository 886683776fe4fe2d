"""Deleting an experiment or a whole run, under the same locks their writers hold."""

from __future__ import annotations

import logging
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

from ..errors import StoreNotFoundError
from .layout import PROBE_LOCK_FILE, PROBES_DIR
from .lock import WriterLock
from .root import check_store_path, open_root, resolve_run

__all__ = ["experiment_lock", "remove"]

log = logging.getLogger(__name__)


def experiment_lock(folder: Path, name: str) -> WriterLock:
    """The lock of one experiment folder (taken by `probe` and by `rm`)."""
    return WriterLock(folder, name, path=Path(folder) / PROBE_LOCK_FILE, what=f"experiment {name!r}",
                      fix="wait for that probe to finish, or use another --name")


def remove(store: str | Path, run: Optional[str] = None, experiment: Optional[str] = None) -> Path:
    """Delete one experiment of a run, or (no experiment) the run itself; returns what was removed.

    Refused while a writer holds the experiment (or, for a run, the run or any of its experiments).
    """
    path = check_store_path(store, must_exist=True)
    name = resolve_run(open_root(path), run, path)
    run_dir = path / name
    if experiment is not None:
        folder = run_dir / PROBES_DIR / experiment
        if not (folder.is_dir() and experiment not in (".", "..") and "/" not in experiment):
            have = sorted(p.name for p in (run_dir / PROBES_DIR).iterdir() if p.is_dir() and not p.name.startswith(".")) \
                if (run_dir / PROBES_DIR).is_dir() else []
            raise StoreNotFoundError(
                f"experiment {experiment!r} not in run {name!r} (experiments: {', '.join(have) or 'none'}): "
                f"check the name with `stcstore info --store {path}`"
            )
        with experiment_lock(folder, experiment):
            shutil.rmtree(folder)
        log.info("removed experiment %r of run %r", experiment, name)
        return folder
    with ExitStack() as locks:
        locks.enter_context(WriterLock(run_dir, name))
        probes = run_dir / PROBES_DIR
        for folder in sorted(probes.iterdir()) if probes.is_dir() else []:
            if folder.is_dir():
                locks.enter_context(experiment_lock(folder, folder.name))
        shutil.rmtree(run_dir)
    log.info("removed run %r", name)
    return run_dir
