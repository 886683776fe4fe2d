"""One probe experiment's folder: its settings, its writer lock, and what may replace it.

`<run>/probes/<name>/` holds `experiment.json` (the settings that change the result), the lock
`_probe.lock` (one writer per experiment; the kernel drops it when the process dies),
`_checkpoints/` (finished aggregations, for resume), and the outputs (report.json last: an
experiment is finished when its report exists). Reopening a name with the same settings resumes
or returns the finished result; other settings are refused unless `overwrite`; `fresh` starts over.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import ConfigError
from ..store.layout import PROBE_LOCK_FILE
from ..store.location import Location, open_location
from ..store.lock import WriterLock
from ..store.remove import experiment_lock
from ..store.progress import atomic_write_text

__all__ = [
    "SETTINGS_NAME",
    "LOCK_NAME",
    "CHECKPOINT_DIR",
    "REPORT_NAME",
    "Experiment",
    "settings_diff",
    "experiment_lock",
]

log = logging.getLogger(__name__)

SETTINGS_NAME = "experiment.json"
LOCK_NAME = PROBE_LOCK_FILE
CHECKPOINT_DIR = "_checkpoints"
REPORT_NAME = "report.json"
_SETTINGS_VERSION = 1


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for every setting that differs."""
    keys = [k for k in new if k in old] + [k for k in new if k not in old] + [k for k in old if k not in new]
    return [f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}" for k in keys if old.get(k) != new.get(k)]


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return repr(v) if isinstance(v, str) else str(v)


class Experiment:
    """An experiment folder held by this process: settings checked, lock taken."""

    def __init__(self, probes_dir: "Path | Location", name: str):
        self.name = name
        # a local folder, or a place in a bucket (store.location): the same operations on both
        self.loc = open_location(probes_dir) / name
        self.path: "Path | Location" = self.loc.local_path if self.loc.is_local else self.loc
        self._lock: Optional[WriterLock] = None

    # -- opening -------------------------------------------------------------------------------
    def open(self, settings: Mapping[str, Any], *, fresh: bool = False, overwrite: bool = False) -> "Experiment":
        """Take the lock, then resume, refuse or start over according to the stored settings."""
        self.loc.mkdir()
        self._lock = experiment_lock(self.loc, self.name).acquire()
        try:
            old = self.stored_settings()
            if old is not None and old != dict(settings) and not (fresh or overwrite):
                diff = "; ".join(settings_diff(old, settings)) or "settings of an older stcstore version"
                raise ConfigError(
                    f"experiment {self.name!r} exists with other settings ({diff}): rerun with those settings "
                    f"to resume it, pick another --name, or pass --overwrite to replace it"
                )
            if old is None and self._has_outputs():
                if not (fresh or overwrite):
                    raise ConfigError(
                        f"experiment {self.name!r} was written by an older stcstore and records no settings: "
                        f"pass --overwrite to replace it, or pick another --name"
                    )
            if fresh or overwrite or old != dict(settings):
                if old is not None or self._has_outputs():
                    log.info("starting experiment %r over", self.name)
                self._clear()
                atomic_write_text(self.loc / SETTINGS_NAME,
                                  json.dumps({"version": _SETTINGS_VERSION, "settings": dict(settings)}, indent=2))
        except BaseException:
            self.close()
            raise
        return self

    def stored_settings(self) -> Optional[dict[str, Any]]:
        """The settings this folder was started with, or None (new or pre-settings folder)."""
        try:
            text = (self.loc / SETTINGS_NAME).read_text()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(text)
            return dict(doc["settings"])
        except (ValueError, KeyError, TypeError):
            return {}   # unreadable: treated as other settings, so never silently mixed

    def _has_outputs(self) -> bool:
        return any(c not in (LOCK_NAME, SETTINGS_NAME) for c in self.loc.children())

    def _clear(self) -> None:
        for child in self.loc.children():
            if child != LOCK_NAME:
                (self.loc / child).remove_tree()

    # -- state ----------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once the report is written (it is written last) with nothing pending."""
        try:
            return not json.loads((self.loc / REPORT_NAME).read_text()).get("pending")
        except (FileNotFoundError, ValueError):
            return False

    @property
    def checkpoints(self) -> "Path | Location":
        """Folder of this experiment's aggregation checkpoints."""
        return self.path / CHECKPOINT_DIR

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
