"""Aggregation: which layers a depth k covers per site choice, kept-feature designs, nested masks.

Site choices are `hidden`, `ffn` and `both`. For a single site, depth k covers that site's
entries 0..k-1 (hidden entry l is HF hidden_states[l], the output of l blocks; ffn entry l is
inside block l). For `both`, k is the number of transformer blocks that must run: hidden
entries 0..k and ffn entries 0..k-1. `n_blocks` gives the blocks to run for any choice, which
is what early exit saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from .solvers.lazy import StandardizedColumns

__all__ = [
    "SITE_CODES",
    "LayerProbe",
    "Design",
    "site_choices",
    "k_values",
    "layers_for",
    "n_blocks",
    "build_design",
    "nested_masks",
    "unique_rows",
    "feature_keys",
    "carry_solutions",
]

SITE_CODES: dict[str, int] = {"hidden": 0, "ffn": 1}


@dataclass
class LayerProbe:
    """One (site, pool, layer) probe at its val-chosen C and the kept columns it ranks.

    Columns of the X_* matrices are the raw (store dtype) activations of `order` (most important
    first, every nonzero-weight neuron), so the kept set of any eta is a prefix of them; designs
    standardise them with `mean` / `scale` as they are built.
    """

    site: str
    pool: str
    layer: int
    C: float
    val: float
    n_nonzero: int
    val_by_C: list[float]
    coef: np.ndarray            # (n_out, d) float32, at C
    intercept: np.ndarray       # (n_out,)
    order: np.ndarray           # (m,) neuron indices, ranking of sparsify.ranking
    counts: np.ndarray          # (n_eta,) prefix length kept per eta of the grid
    mean: np.ndarray            # (m,) float64 scaler mean of `order`
    scale: np.ndarray           # (m,) float64 scaler scale of `order`
    X_train: np.ndarray         # (n_train, m) raw, store dtype
    X_val: np.ndarray           # (n_val, m)
    X_test: np.ndarray          # (n_test, m)
    extra: dict = field(default_factory=dict)

    def release_fit_columns(self) -> None:
        """Drop the train and val columns once aggregation no longer needs them (test stays)."""
        self.X_train = self.X_train[:, :0]
        self.X_val = self.X_val[:, :0]

    def release_test_columns(self) -> None:
        """Drop the test columns of a probe that will not be scored on test."""
        self.X_test = self.X_test[:, :0]


@dataclass
class Design:
    """A concatenated kept-feature design (standardised on demand) and what each column is."""

    X_train: StandardizedColumns
    X_val: StandardizedColumns
    X_test: StandardizedColumns
    feature_site: np.ndarray    # (F,) int64: SITE_CODES
    feature_layer: np.ndarray   # (F,) int64
    feature_index: np.ndarray   # (F,) int64 neuron index within the layer
    mean: np.ndarray            # (F,) float64
    scale: np.ndarray           # (F,) float64

    @property
    def n_features(self) -> int:
        """Columns of the design."""
        return int(self.feature_site.shape[0])


def site_choices(sites: Sequence[str]) -> list[str]:
    """The single sites given plus `both` when hidden and ffn are both present."""
    out = [s for s in ("hidden", "ffn") if s in sites]
    if "hidden" in sites and "ffn" in sites:
        out.append("both")
    return out


def k_values(choice: str, n_layers: Mapping[str, int]) -> list[int]:
    """Every depth k searched for a site choice (n_layers: entries per site)."""
    if choice == "both":
        # both needs hidden entries 0..k: at most L = ffn entries (hidden has L+1)
        return list(range(1, min(n_layers["ffn"], n_layers["hidden"] - 1) + 1))
    return list(range(1, n_layers[choice] + 1))


def layers_for(choice: str, k: int) -> dict[str, list[int]]:
    """Layer entries of each site that depth k covers."""
    if choice == "hidden":
        return {"hidden": list(range(k)), "ffn": []}
    if choice == "ffn":
        return {"hidden": [], "ffn": list(range(k))}
    if choice == "both":
        return {"hidden": list(range(k + 1)), "ffn": list(range(k))}
    raise ValueError(f"unknown site choice {choice!r}")


def n_blocks(choice: str, k: int) -> int:
    """Transformer blocks that must run to compute depth k of a site choice."""
    if choice == "hidden":
        return k - 1       # hidden entry k-1 is the output of k-1 blocks
    return k               # ffn entry k-1 lives in block k-1; both: k by definition


def _sites_of(choice: str) -> tuple[str, ...]:
    return ("hidden", "ffn") if choice == "both" else (choice,)


def build_design(
    probes: Mapping[tuple[str, int], LayerProbe],
    choice: str,
    counts: Mapping[tuple[str, int], int],
    layers: Optional[Mapping[str, Sequence[int]]] = None,
) -> Design:
    """Concatenate the first counts[(site, layer)] kept columns of every layer of a site choice.

    Column order is hidden layers ascending, then ffn layers ascending, each layer's columns in
    ranking order. `layers` restricts to some entries (default: every probe of the choice).
    """
    keys = []
    for site in _sites_of(choice):
        ls = sorted(l for (s, l) in probes if s == site) if layers is None else sorted(layers.get(site, []))
        keys += [(site, l) for l in ls]
    picked: list[tuple[LayerProbe, int]] = []
    for key in keys:
        p = probes[key]
        m = int(counts.get(key, 0))
        if m < 0 or m > len(p.order):
            raise ValueError(f"count {m} out of range for {key} (0..{len(p.order)})")
        if m:
            picked.append((p, m))
    any_p = next(iter(probes.values()))

    def standardized(attr: str) -> StandardizedColumns:
        # the raw columns (views) and their scaler: rows are standardised when a pass reads them
        return StandardizedColumns([(getattr(p, attr)[:, :m], p.mean[:m], p.scale[:m]) for p, m in picked],
                                   n_rows=getattr(any_p, attr).shape[0])

    def cat1(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return Design(
        X_train=standardized("X_train"), X_val=standardized("X_val"), X_test=standardized("X_test"),
        feature_site=cat1([np.full(m, SITE_CODES[p.site], dtype=np.int64) for p, m in picked], np.int64),
        feature_layer=cat1([np.full(m, p.layer, dtype=np.int64) for p, m in picked], np.int64),
        feature_index=cat1([p.order[:m] for p, m in picked], np.int64),
        mean=cat1([p.mean[:m] for p, m in picked], np.float64),
        scale=cat1([p.scale[:m] for p, m in picked], np.float64),
    )


def nested_masks(feature_site: np.ndarray, feature_layer: np.ndarray, choice: str, ks: Sequence[int]) -> np.ndarray:
    """(len(ks), F) bool: masks[i] selects the columns that depth ks[i] covers."""
    out = np.zeros((len(ks), len(feature_site)), dtype=bool)
    for i, k in enumerate(ks):
        for site, ls in layers_for(choice, k).items():
            if ls:
                out[i] |= (feature_site == SITE_CODES[site]) & (feature_layer <= max(ls))
    return out


def unique_rows(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-empty masks (first occurrence order) and, per input row, its index or -1 if empty."""
    uniq: list[np.ndarray] = []
    seen: dict[bytes, int] = {}
    index = np.full(len(masks), -1, dtype=np.int64)
    for i, m in enumerate(masks):
        if not m.any():
            continue
        key = np.packbits(m).tobytes()
        if key not in seen:
            seen[key] = len(uniq)
            uniq.append(m)
        index[i] = seen[key]
    arr = np.stack(uniq) if uniq else np.zeros((0, masks.shape[1]), dtype=bool)
    return arr, index


def feature_keys(design: Design) -> np.ndarray:
    """One int64 per column naming its (site, layer, neuron), comparable across designs."""
    return (design.feature_site << 42) | (design.feature_layer << 21) | design.feature_index


def carry_solutions(keys_from: np.ndarray, index_from: np.ndarray, coef: np.ndarray, icpt: np.ndarray,
                    keys_to: np.ndarray, index_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solutions of one design, moved onto another's columns and unique masks, depth by depth.

    coef (U, n_C, n_out, F_from) and icpt (U, n_C, n_out) are indexed by unique mask; index_*
    give each depth k's unique-mask row (-1: empty). A column the source design lacks starts
    at zero, and so does a mask whose depth had no source fit.
    """
    U = int(index_to.max()) + 1 if len(index_to) else 0
    _, nC, n_out, _ = coef.shape
    out = np.zeros((U, nC, n_out, len(keys_to)), np.float32)
    out_b = np.zeros((U, nC, n_out), np.float32)
    if len(keys_from) == 0 or U == 0:
        return out, out_b
    srt = np.argsort(keys_from)
    pos = srt[np.searchsorted(keys_from, keys_to, sorter=srt).clip(max=len(srt) - 1)]
    found = keys_from[pos] == keys_to
    done = np.zeros(U, bool)
    for u, p in zip(index_to, index_from):
        if u < 0 or p < 0 or done[u]:
            continue
        done[u] = True
        out[u][..., found] = coef[p][..., pos[found]]
        out_b[u] = icpt[p]
    return out, out_b
