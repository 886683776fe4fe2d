"""Splits and labels: split column, source splits, carving (stratified, seeded), label encoding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from stcstore.errors import LabelError
from stcstore.probe.splits import SplitPlan, resolve_splits, stratified_partition


class FakeReader:
    """The slice of RunReader that split resolution reads: split names and stored columns."""

    def __init__(self, columns: dict[str, dict[str, np.ndarray]], name: str = "r0"):
        self._cols = columns
        self.name = name

    @property
    def splits(self) -> list[str]:
        return list(self._cols)

    def columns(self, split: str) -> list[str]:
        return sorted(self._cols[split])

    def column(self, split: str, name: str) -> np.ndarray:
        return np.asarray(self._cols[split][name])


def _rows(plan: SplitPlan, role: str) -> set[tuple[str, int]]:
    return {(s, int(i)) for s, ix in plan.rows[role].items() for i in ix}


def _check_partition(plan: SplitPlan, universe: set[tuple[str, int]]) -> None:
    parts = [_rows(plan, r) for r in ("train", "val", "test")]
    assert set().union(*parts) == universe
    assert sum(len(p) for p in parts) == len(universe)       # disjoint


# -- stratified_partition ---------------------------------------------------------------------
def test_stratified_partition_counts_by_hand():
    y = np.array([0] * 50 + [1] * 30 + [2] * 7)
    tr, va, te = stratified_partition(y, (0.6, 0.2, 0.2), seed=3)
    # class 0: 30/10/10; class 1: 18/6/6; class 2: 7 * (.6, .2, .2) = 4.2/1.4/1.4 -> floors 4/1/1,
    # the one left over goes to the largest remainder (.4 ties: the first of val and test)
    assert [Counter(y[p].tolist()) for p in (tr, va, te)] == [
        {0: 30, 1: 18, 2: 4}, {0: 10, 1: 6, 2: 2}, {0: 10, 1: 6, 2: 1}]
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(y)))


def test_stratified_partition_is_seeded():
    y = np.arange(200) % 3
    a = stratified_partition(y, (0.8, 0.2), seed=1)
    b = stratified_partition(y, (0.8, 0.2), seed=1)
    c = stratified_partition(y, (0.8, 0.2), seed=2)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not np.array_equal(a[1], c[1])


# -- resolution -------------------------------------------------------------------------------
def test_source_splits_used_as_they_are():
    r = FakeReader({
        "train": {"label": np.array(["b", "a", "b", "c", "a", "b"])},
        "validation": {"label": np.array(["a", "c", "b"])},
        "test": {"label": np.array(["c", "b"])},
        "unsupervised": {"label": np.array(["a"])},
    })
    plan = resolve_splits(r, "label")
    assert plan.source == "store"
    assert plan.classes == ["a", "b", "c"]
    assert {role: dict((s, ix.tolist()) for s, ix in plan.rows[role].items()) for role in plan.rows} == {
        "train": {"train": [0, 1, 2, 3, 4, 5]}, "val": {"validation": [0, 1, 2]}, "test": {"test": [0, 1]}}
    assert plan.y["train"].tolist() == [1, 0, 1, 2, 0, 1]
    assert plan.y["val"].tolist() == [0, 2, 1] and plan.y["test"].tolist() == [2, 1]
    assert any("unsupervised" in n for n in plan.notes)


def test_validation_carved_from_train_stratified_and_seeded():
    y_train = np.array([0] * 60 + [1] * 40)
    r = FakeReader({"train": {"label": y_train}, "test": {"label": np.array([0, 1, 1])}})
    plan = resolve_splits(r, "label", seed=7)
    assert list(plan.rows["test"]) == ["test"] and plan.rows["test"]["test"].tolist() == [0, 1, 2]
    # 20% of train, per class: 12 of class 0, 8 of class 1
    assert Counter(plan.y["val"].tolist()) == {0: 12, 1: 8}
    assert Counter(plan.y["train"].tolist()) == {0: 48, 1: 32}
    _check_partition(plan, {("train", i) for i in range(100)} | {("test", i) for i in range(3)})
    again = resolve_splits(r, "label", seed=7)
    other = resolve_splits(r, "label", seed=8)
    assert np.array_equal(plan.rows["val"]["train"], again.rows["val"]["train"])
    assert not np.array_equal(plan.rows["val"]["train"], other.rows["val"]["train"])
    # labels follow their rows
    assert np.array_equal(plan.y["val"], y_train[plan.rows["val"]["train"]])


def test_single_split_gets_60_20_20():
    y = np.array([True] * 50 + [False] * 25)
    plan = resolve_splits(FakeReader({"all": {"label": y}}), "label", seed=0)
    assert plan.source == "random"
    assert plan.classes == [False, True]
    assert [Counter(plan.y[r].tolist()) for r in ("train", "val", "test")] == [
        {1: 30, 0: 15}, {1: 10, 0: 5}, {1: 10, 0: 5}]
    _check_partition(plan, {("all", i) for i in range(75)})


def test_split_column_case_insensitive_across_store_splits():
    r = FakeReader({
        "a": {"label": np.array([0, 1, 0, 1]), "fold": np.array(["train", "Validation", "test", "train"])},
        "b": {"label": np.array([1, 0, 1]), "fold": np.array(["val", "TRAIN", " test "])},
    })
    plan = resolve_splits(r, "label", split_column="fold")
    assert plan.source == "column:fold"
    assert _rows(plan, "train") == {("a", 0), ("a", 3), ("b", 1)}
    assert _rows(plan, "val") == {("a", 1), ("b", 0)}
    assert _rows(plan, "test") == {("a", 2), ("b", 2)}
    assert plan.y["train"].tolist() == [0, 1, 0]


def test_split_column_errors():
    good = np.array([0, 1, 0, 1])
    bad = FakeReader({"train": {"label": good, "fold": np.array(["train", "dev", "test", "x"])}})
    with pytest.raises(LabelError, match=r"other than train/val/validation/test \('dev', 'x'\)"):
        resolve_splits(bad, "label", split_column="fold")
    with pytest.raises(LabelError, match="split column 'nope' is not stored"):
        resolve_splits(FakeReader({"train": {"label": good}}), "label", split_column="nope")
    no_train = FakeReader({"train": {"label": good, "fold": np.array(["val", "test", "val", "test"])}})
    with pytest.raises(LabelError, match="no labelled row as 'train'"):
        resolve_splits(no_train, "label", split_column="fold")


def test_split_column_without_val_carves_it():
    y = np.array([0, 1] * 20)
    fold = np.array(["train"] * 30 + ["test"] * 10)
    plan = resolve_splits(FakeReader({"s": {"label": y, "fold": fold}}), "label", split_column="fold")
    assert len(plan.y["val"]) == 6 and len(plan.y["train"]) == 24 and len(plan.y["test"]) == 10
    assert _rows(plan, "test") == {("s", i) for i in range(30, 40)}


def test_label_errors():
    with pytest.raises(LabelError, match="label column 'y' is not stored.*columns: label"):
        resolve_splits(FakeReader({"train": {"label": np.array([0, 1])}}), "y")
    with pytest.raises(LabelError, match="single class"):
        resolve_splits(FakeReader({"train": {"label": np.array(["x"] * 10)}}), "label")
    with pytest.raises(LabelError, match="no rows"):
        resolve_splits(FakeReader({"train": {"label": np.array([0, 1])}}), "label")
    only_test = FakeReader({"s": {"label": np.array([0, 1, 0, 1, 2, 2]),
                                  "fold": np.array(["train", "train", "val", "val", "test", "test"])}})
    with pytest.raises(LabelError, match="class.*2.*no train rows"):
        resolve_splits(only_test, "label", split_column="fold")


def test_float_labels_with_missing_values():
    y = np.array([1.0, 0.0, np.nan, 1.0, 0.0] * 10)
    plan = resolve_splits(FakeReader({"train": {"label": y}}), "label")
    assert plan.classes == [0, 1] and isinstance(plan.classes[0], int)
    assert plan.n("train") + plan.n("val") + plan.n("test") == 40          # NaN rows left out
    assert all(i % 5 != 2 for role in ("train", "val", "test") for i in plan.rows[role]["train"])


def test_row_roles_and_selection_hash():
    plan = resolve_splits(FakeReader({"train": {"label": np.array([0, 1] * 10)}}), "label", seed=0)
    role_of, pos = plan.row_roles("train", 20)
    for r, role in enumerate(("train", "val", "test")):
        ix = plan.rows[role]["train"]
        assert (role_of[ix] == r).all() and pos[ix].tolist() == list(range(len(ix)))
    assert plan.selection_hash() == resolve_splits(
        FakeReader({"train": {"label": np.array([0, 1] * 10)}}), "label", seed=0).selection_hash()
    assert plan.selection_hash() != resolve_splits(
        FakeReader({"train": {"label": np.array([0, 1] * 10)}}), "label", seed=1).selection_hash()


def test_empty_string_labels_are_unlabelled():
    y = np.array(["pos", "neg", "", "pos", "  "] * 10, dtype=object)
    plan = resolve_splits(FakeReader({"train": {"label": y}}), "label")
    assert plan.classes == ["neg", "pos"]                                   # no class ''
    assert plan.n("train") + plan.n("val") + plan.n("test") == 30
    assert all(i % 5 in (0, 1, 3) for role in ("train", "val", "test") for i in plan.rows[role]["train"])


def test_empty_csv_label_cells_are_unlabelled(tmp_path):
    from stcstore.data import load_source

    path = tmp_path / "d.csv"
    rows = ["text,label"] + [f"t{i},{['pos', 'neg', ''][i % 3]}" for i in range(30)]
    path.write_text("\n".join(rows) + "\n")
    col = load_source(str(path)).splits["train"].column("label")          # what extract stores
    plan = resolve_splits(FakeReader({"train": {"label": col}}), "label")
    assert plan.classes == ["neg", "pos"]
    assert plan.n("train") + plan.n("val") + plan.n("test") == 20
