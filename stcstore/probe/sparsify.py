"""Sparsify a layer probe: keep the neurons with the largest squared weights up to a share eta.

Importance of neuron j is sum over classes of coef[c, j]^2 (binary probes have one row).
Neurons are ranked by importance, largest first, ties broken by the lower neuron index, and
the smallest prefix whose cumulative share of the total reaches eta is kept. eta = 1.0 keeps
every neuron with a nonzero weight and nothing else. Because the kept sets for growing eta
are nested prefixes of one ranking, a layer is summarised by its ranking and one count per eta.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["importance", "ranking", "keep_counts", "keep_count", "sparsify"]

# cumulative shares are summed in float64; this slack keeps eta = 0.3 from needing one more
# neuron when the exact share is 0.3 but the float sum reads 0.29999999999999993
_TOL = 1e-12


def importance(coef: np.ndarray) -> np.ndarray:
    """Squared weights summed over classes: (n_out, d) or (d,) -> (d,) float64."""
    c = np.asarray(coef, dtype=np.float64)
    if c.ndim == 1:
        return c * c
    return np.einsum("cd,cd->d", c, c)


def ranking(coef: np.ndarray) -> np.ndarray:
    """Neuron indices with nonzero weight, most important first (ties: lower index first)."""
    imp = importance(coef)
    nz = np.flatnonzero(imp > 0)
    # stable sort on -importance keeps ascending index order among equal importances
    return nz[np.argsort(-imp[nz], kind="stable")]


def keep_counts(coef: np.ndarray, etas: Sequence[float]) -> np.ndarray:
    """How many top-ranked neurons each eta keeps (same order as `etas`)."""
    imp = importance(coef)
    order = ranking(coef)
    if len(order) == 0:
        return np.zeros(len(etas), dtype=np.int64)
    share = np.cumsum(imp[order]) / imp[order].sum()
    out = np.empty(len(etas), dtype=np.int64)
    for i, eta in enumerate(etas):
        if not 0 < eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {eta}")
        if eta >= 1:
            out[i] = len(order)
        else:
            # first prefix whose share reaches eta
            out[i] = min(int(np.searchsorted(share, eta - _TOL, side="left")) + 1, len(order))
    return out


def keep_count(coef: np.ndarray, eta: float) -> int:
    """How many top-ranked neurons eta keeps."""
    return int(keep_counts(coef, [eta])[0])


def sparsify(coef: np.ndarray, eta: float) -> np.ndarray:
    """Indices of the neurons kept at share eta, ascending."""
    order = ranking(coef)
    return np.sort(order[: keep_count(coef, eta)])
