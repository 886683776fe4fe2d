"""Checkpoints of a probe search: finished layer fits and aggregation results, written atomically.

A checkpoint is one safetensors file (arrays) whose metadata holds a JSON document; it is
written to a temporary name and renamed, so a reader sees a whole checkpoint or none. An
unreadable checkpoint is ignored (the work is redone), never trusted.

Layer fits live in a cache shared by every experiment of a run, keyed by what changes a fit
(run fingerprint, label, split rule, C grid, solver): another experiment with another eta grid
or site choice reuses them. Aggregation results live in the experiment's own folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..store.layout import CACHE_GROUP
from ..store.location import Location, open_location

__all__ = ["LayerFit", "save_checkpoint", "load_checkpoint", "LayerFitCache", "layer_fit_key"]

log = logging.getLogger(__name__)

_META_KEY = "stcstore"
LAYER_FIT_SUBDIR = "layer_probes"


def save_checkpoint(path: "Path | Location", arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write arrays and a JSON document as one file, atomically (temp file + rename; one PUT on object storage)."""
    from ..tensorfile import tensor_bytes

    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    open_location(path).write_bytes(tensor_bytes(tensors, metadata={_META_KEY: json.dumps(meta)}))


def load_checkpoint(path: "Path | Location") -> Optional[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """(arrays, document) of a checkpoint, or None when it is missing or unreadable."""
    from ..tensorfile import load_tensors

    loc = open_location(path)
    try:
        data = loc.read_bytes()
    except FileNotFoundError:
        return None
    try:
        arrays, metadata = load_tensors(data)
        meta = json.loads(metadata[_META_KEY])
    except Exception as exc:  # a torn or foreign file is redone, never trusted
        log.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    return arrays, meta


@dataclass
class LayerFit:
    """The part of a layer probe that costs a fit: weights at the val-chosen C and val scores."""

    C: float
    val: float
    n_nonzero: int
    val_by_C: list[float]
    coef: np.ndarray          # (n_out, d) float32
    intercept: np.ndarray     # (n_out,)

    def to_checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and document for `save_checkpoint`."""
        arrays = {"coef": np.asarray(self.coef, np.float32), "intercept": np.asarray(self.intercept, np.float32)}
        return arrays, {"C": self.C, "val": self.val, "n_nonzero": self.n_nonzero, "val_by_C": self.val_by_C}

    @classmethod
    def from_checkpoint(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> "LayerFit":
        """The fit a checkpoint holds."""
        return cls(C=float(meta["C"]), val=float(meta["val"]), n_nonzero=int(meta["n_nonzero"]),
                   val_by_C=[float(v) for v in meta["val_by_C"]], coef=arrays["coef"], intercept=arrays["intercept"])


def layer_fit_key(fields: Mapping[str, Any]) -> str:
    """Key of a set of layer fits: a hash of everything that changes their numbers."""
    blob = json.dumps(dict(fields), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class LayerFitCache:
    """Layer fits under `<run>/_cache/layer_probes/<key>/`, shared by the run's experiments."""

    def __init__(self, run_dir: "Path | Location", key: str, read: bool = True):
        self.dir = open_location(run_dir) / CACHE_GROUP / LAYER_FIT_SUBDIR / key
        self.key = key
        self.read = read
        self.reused = 0
        self.fitted = 0

    def _path(self, site: str, pool: str, layer: int) -> Location:
        return self.dir / f"{site}.{pool}.{layer:04d}.safetensors"

    def load(self, site: str, pool: str, layer: int) -> Optional[LayerFit]:
        """A finished fit of one (site, pool, layer), or None."""
        got = load_checkpoint(self._path(site, pool, layer)) if self.read else None
        if got is None:
            return None
        try:
            fit = LayerFit.from_checkpoint(*got)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed layer checkpoint %s/%s/%d (%s)", site, pool, layer, exc)
            return None
        self.reused += 1
        return fit

    def save(self, site: str, pool: str, layer: int, fit: LayerFit) -> None:
        """Keep one finished fit (a failure to write only costs a refit later)."""
        self.fitted += 1
        try:
            save_checkpoint(self._path(site, pool, layer), *fit.to_checkpoint())
        except OSError as exc:
            log.warning("could not checkpoint layer probe %s/%s/%d (%s): it would be refitted on resume",
                        site, pool, layer, exc)
