"""Which stored rows are train, val and test, and their labels as class indices 0..K-1.

Order of precedence (DESIGN.md): the values of `--split-column`; else the store's own splits
(train / validation|val / test, a missing validation or test carved from train); else a seeded
stratified 60/20/20 split of every stored row. Carving is always stratified on the label and
seeded, so the same command picks the same rows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import LabelError

__all__ = [
    "ROLES",
    "SPLIT_VALUES",
    "SplitPlan",
    "encode_labels",
    "stratified_partition",
    "resolve_splits",
]

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("train", "val", "test")
# accepted values of --split-column (case-insensitive) and the role each names
SPLIT_VALUES: dict[str, str] = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# store split names understood as each role
_STORE_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("validation", "val", "valid", "dev"),
    "test": ("test",),
}
# share of train rows carved off for a missing val (or test) split
CARVE_FRACTION = 0.2
RANDOM_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class SplitPlan:
    """Rows of each role as (store split -> sorted row indices), labels encoded in that order."""

    rows: dict[str, dict[str, np.ndarray]]   # role -> store split -> row indices (ascending)
    y: dict[str, np.ndarray]                  # role -> int64 class indices, rows in store order
    classes: list[Any]                        # class values, sorted; index = class id
    source: str                               # "column:<name>", "store" or "random"
    notes: list[str] = field(default_factory=list)

    def n(self, role: str) -> int:
        """Number of rows of a role."""
        return int(sum(len(ix) for ix in self.rows[role].values()))

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def store_splits(self) -> list[str]:
        """Store splits that hold any selected row, in first-seen order."""
        out: list[str] = []
        for role in ROLES:
            for split in self.rows[role]:
                if split not in out:
                    out.append(split)
        return out

    def row_roles(self, split: str, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Per stored row of a split: role id (0 train, 1 val, 2 test, -1 unused) and its position in that role."""
        role_of = np.full(n_rows, -1, dtype=np.int8)
        pos = np.zeros(n_rows, dtype=np.int64)
        for r, role in enumerate(ROLES):
            offset = 0
            for s, ix in self.rows[role].items():
                if s == split:
                    role_of[ix] = r
                    pos[ix] = offset + np.arange(len(ix))
                offset += len(ix)
        return role_of, pos

    def selection_hash(self, role: str = "train") -> str:
        """A stable hash of the rows of a role (keys the standardisation cache)."""
        h = hashlib.sha256()
        for split in sorted(self.rows[role]):
            h.update(split.encode() + b"\0")
            h.update(np.ascontiguousarray(self.rows[role][split], dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


# -- labels -------------------------------------------------------------------------------
def _clean_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label values in a comparable dtype and a mask of rows that carry a label."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        ok = np.isfinite(values)
        if np.all(values[ok] == np.round(values[ok])):
            # floats that are whole numbers (a column with NaN for unlabelled rows) are ints
            return np.where(ok, values, 0).astype(np.int64), ok
        return values, ok
    if values.dtype.kind in "OUST":
        values = values.astype(str)
        # the store keeps a missing string as '' (stcstore.data): unlabelled, like NaN above
        return values, np.char.strip(values) != ""
    return values, np.ones(len(values), dtype=bool)


def _py(v: Any) -> Any:
    """A NumPy scalar as the JSON-friendly Python value."""
    return v.item() if isinstance(v, np.generic) else v


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Map label values to 0..K-1 in sorted order of the distinct values; returns (codes, classes)."""
    classes, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [_py(c) for c in classes]


# -- carving ------------------------------------------------------------------------------
def stratified_partition(y: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split positions 0..n-1 into len(fractions) parts, each class spread in proportion; seeded.

    Per class the counts are the floors of n_c * fraction plus the remainders handed out by
    largest fraction, so every part gets its share of every class (up to rounding). Returns
    each part's positions sorted ascending.
    """
    y = np.asarray(y)
    fr = np.asarray(fractions, dtype=np.float64)
    if np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError("fractions must be non-negative with a positive sum")
    fr = fr / fr.sum()
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        members = members[rng.permutation(len(members))]
        exact = fr * len(members)
        counts = np.floor(exact).astype(int)
        rest = len(members) - counts.sum()
        # remainders go to the parts with the largest fractional share (stable on ties)
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:rest]] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for i in range(len(fr)):
            parts[i].append(members[bounds[i]:bounds[i + 1]])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


# -- resolution ---------------------------------------------------------------------------
def _read_column(reader: Any, split: str, name: str, what: str, flag: str) -> np.ndarray:
    cols = reader.columns(split)
    if name not in cols:
        raise LabelError(
            f"{what} column {name!r} is not stored in split {split!r} of run {reader.name!r} "
            f"(columns: {', '.join(cols) or 'none'}): pass one of them with {flag}, or re-extract with --columns"
        )
    return np.asarray(reader.column(split, name))


def _roles_from_store(splits: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for role, names in _STORE_NAMES.items():
        for name in names:
            if name in splits:
                found[role] = name
                break
    return found


def resolve_splits(reader: Any, label: str, split_column: str | None = None, seed: int = 0) -> SplitPlan:
    """Decide train/val/test rows and encode labels; raise LabelError naming the problem and the fix."""
    splits = list(reader.splits)
    if not splits:
        raise LabelError(f"run {reader.name!r} has no splits: re-extract it")
    raw = {s: _read_column(reader, s, label, "label", "--label") for s in splits}
    labelled: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    for s in splits:
        v, ok = _clean_values(raw[s])
        labelled[s], values[s] = ok, v
    # one encoding over every labelled row, so a class seen only in test still has an index
    all_vals = np.concatenate([values[s][labelled[s]] for s in splits])
    if len(all_vals) == 0:
        raise LabelError(f"label column {label!r} has no labelled rows: pick another --label")
    try:
        class_values = np.unique(all_vals)
    except TypeError as exc:  # mixed types that do not sort
        raise LabelError(f"label column {label!r} mixes value types ({exc}): store one type per column") from None
    classes = [_py(c) for c in class_values]
    if len(classes) < 2:
        raise LabelError(
            f"label column {label!r} has a single class ({classes[0]!r}): probing needs at least two; pick another --label"
        )
    # unlabelled rows get some code here; they are never selected below
    codes = {s: np.clip(np.searchsorted(class_values, values[s]), 0, len(classes) - 1).astype(np.int64)
             for s in splits}
    notes: list[str] = []

    # role -> split -> indices
    rows: dict[str, dict[str, np.ndarray]] = {r: {} for r in ROLES}
    if split_column is not None:
        source = f"column:{split_column}"
        for s in splits:
            col = _read_column(reader, s, split_column, "split", "--split-column")
            names = np.char.lower(np.char.strip(col.astype(str)))
            bad = sorted(set(str(v) for v in np.unique(names)) - set(SPLIT_VALUES))
            if bad:
                shown = ", ".join(repr(b) for b in bad[:5])
                raise LabelError(
                    f"split column {split_column!r} has values other than train/val/validation/test "
                    f"({shown}): fix the column or drop --split-column"
                )
            for value, role in SPLIT_VALUES.items():
                ix = np.flatnonzero((names == value) & labelled[s])
                if len(ix):
                    prev = rows[role].get(s)
                    rows[role][s] = ix if prev is None else np.union1d(prev, ix)
        if not rows["train"]:
            raise LabelError(f"split column {split_column!r} marks no labelled row as 'train': mark some rows train")
    else:
        found = _roles_from_store(splits)
        if "train" in found:
            source = "store"
            for role, s in found.items():
                rows[role][s] = np.flatnonzero(labelled[s])
            ignored = [s for s in splits if s not in found.values()]
            if ignored:
                notes.append(f"store splits not used: {', '.join(ignored)}")
        else:
            source = "random"
            for s in splits:
                rows["train"][s] = np.flatnonzero(labelled[s])

    if source == "store" and not rows["val"] and not rows["test"]:
        source = "random"   # a lone train split: the 60/20/20 fallback
    _carve_missing(rows, codes, seed, notes)
    for role in ROLES:
        if sum(len(ix) for ix in rows[role].values()) == 0:
            raise LabelError(
                f"the {role} split has no rows (label {label!r}): give more labelled rows or a --split-column"
            )
    y = {role: np.concatenate([codes[s][ix] for s, ix in rows[role].items()]) for role in ROLES}
    train_classes = np.unique(y["train"])
    if len(train_classes) < 2:
        raise LabelError(
            f"the train split has a single class of label {label!r}: probing needs at least two in train"
        )
    missing = sorted(set(range(len(classes))) - set(train_classes.tolist()))
    if missing:
        # a probe cannot learn a class it never sees (its intercept would go to -inf)
        shown = ", ".join(repr(classes[i]) for i in missing[:5])
        raise LabelError(
            f"class(es) {shown} of label {label!r} have no train rows: mark some of them train, or drop those rows"
        )
    for note in notes:
        log.info(note)
    return SplitPlan(rows=rows, y=y, classes=classes, source=source, notes=notes)


def _carve_missing(rows: dict[str, dict[str, np.ndarray]], codes: dict[str, np.ndarray], seed: int,
                   notes: list[str]) -> None:
    """Carve a missing val and/or test out of train, stratified on the label, seeded."""
    need = [r for r in ("val", "test") if not rows[r]]
    if not need:
        return
    splits = list(rows["train"])
    y = np.concatenate([codes[s][rows["train"][s]] for s in splits])
    owner = np.concatenate([np.full(len(rows["train"][s]), i) for i, s in enumerate(splits)])
    pos = np.concatenate([rows["train"][s] for s in splits])
    if len(need) == 2:
        fractions = RANDOM_FRACTIONS
    else:
        fractions = (1 - CARVE_FRACTION, CARVE_FRACTION)
    parts = stratified_partition(y, fractions, seed)
    roles = ["train", *need]
    for role, part in zip(roles, parts):
        rows[role] = {s: pos[part[owner[part] == i]] for i, s in enumerate(splits) if np.any(owner[part] == i)}
    shares = "/".join(f"{int(round(100 * f))}" for f in fractions)
    notes.append(f"carved {' and '.join(need)} from train ({shares}, stratified, seed {seed})")
