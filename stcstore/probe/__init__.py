"""Probing: per-layer L1 probes, sparsification, aggregation and the STC search over a store.

Names are imported lazily so `import stcstore.probe` works before the solvers are installed.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["run_probe", "ProbeResult", "SplitPlan", "resolve_splits", "keep_counts", "ranking"]

_LAZY = {
    "run_probe": ".search",
    "ProbeResult": ".search",
    "SplitPlan": ".splits",
    "resolve_splits": ".splits",
    "keep_counts": ".sparsify",
    "ranking": ".sparsify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
