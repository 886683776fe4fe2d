"""--cv K: folds over train + val, the configuration chosen on fold means, refitted on train + val."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _stc_helpers import cli
from test_probe import C_GRID, ETA_GRID, build_store

from stcstore.probe.crossval import cv_plans
from stcstore.probe.splits import SplitPlan


def _plan() -> SplitPlan:
    rng = np.random.default_rng(0)
    rows = {"train": {"a": np.sort(rng.choice(500, 300, replace=False)), "b": np.arange(0, 100, 2)},
            "val": {"b": np.arange(1, 100, 2)}, "test": {"a": np.array([500, 501])}}
    n = {r: sum(len(v) for v in d.values()) for r, d in rows.items()}
    y = {r: rng.integers(0, 3, n[r]) for r in rows}
    return SplitPlan(rows=rows, y=y, classes=["x", "y", "z"], source="column:fold")


def test_folds_partition_train_and_val_stratified_with_labels_kept():
    plan = _plan()
    label = {}
    for role in ("train", "val"):
        at = 0
        for s, ix in plan.rows[role].items():
            label.update({(s, int(i)): int(c) for i, c in zip(ix, plan.y[role][at:at + len(ix)])})
            at += len(ix)
    folds = cv_plans(plan, 4, seed=3)
    seen = []
    for f in folds:
        val = {(s, int(i)) for s, ix in f.rows["val"].items() for i in ix}
        train = {(s, int(i)) for s, ix in f.rows["train"].items() for i in ix}
        assert not val & train and val | train == set(label)
        seen += list(val)
        # labels follow their rows, in the order the plan lists them
        for role in ("train", "val"):
            got = [label[(s, int(i))] for s, ix in f.rows[role].items() for i in ix]
            assert got == f.y[role].tolist()
            assert all(np.all(np.diff(ix) > 0) for ix in f.rows[role].values())
        assert f.rows["test"] is plan.rows["test"]
        # every class is spread over the folds in proportion (up to rounding)
        counts = np.bincount(f.y["val"], minlength=3)
        total = np.bincount(np.array(list(label.values())), minlength=3)
        assert np.all(np.abs(counts - total / 4) <= 1)
    assert sorted(seen) == sorted(label)           # each row is val in exactly one fold
    # seeded: the same folds again
    again = cv_plans(plan, 4, seed=3)
    for f, g in zip(folds, again):
        for role in ("train", "val"):
            assert f.rows[role].keys() == g.rows[role].keys()
            assert all(np.array_equal(f.rows[role][k], g.rows[role][k]) for k in f.rows[role])


def test_probe_cv_chooses_on_fold_means_and_refits(tmp_path):
    store = build_store(tmp_path / "s.zarr", {"train": 500, "extra": 150})
    args = ["probe", "--store", store, "--label", "sentiment", "--split-column", "fold", "--name", "cv",
            "--c-grid", C_GRID, "--eta-grid", ETA_GRID, "--pools", "mean", "--no-progress", "--no-plots",
            "--no-concat-baseline", "--cv", "3"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    exp = store / "run0" / "probes" / "cv"
    rep = json.loads((exp / "report.json").read_text())
    search = json.loads((exp / "search.json").read_text())
    stc = rep["stc"]
    assert stc["cv"]["k"] == 3 and len(stc["cv"]["val_folds"]) == 3
    assert stc["val"] == pytest.approx(np.mean(stc["cv"]["val_folds"]))
    # the rule recomputed from the fold tables: means over folds, SE from the pooled train + val rows
    table: dict = {}
    for e in search:
        if "fold" in e:
            table.setdefault((e["site"], e["pool"], e["eta"], e["k"], e["C"]), []).append(e)
    rows = [(np.mean([e["val"] for e in es]), es[0]["n_blocks"], np.mean([e["n_features"] for e in es]), key)
            for key, es in table.items() if len(es) == 3]
    best = max(v for v, *_ in rows)
    n = rep["n"]["train"] + rep["n"]["val"]
    se = np.sqrt(best * (1 - best) / n)
    want = min((r for r in rows if r[0] >= best - se - 1e-12), key=lambda r: (r[1], r[2], -r[0]))
    assert (stc["site"], stc["pool"], stc["eta"], stc["k"], stc["C"]) == want[3]
    assert stc["refit"] is True and "no_refit" not in stc
    # the saved classifier uses only neurons of the chosen depth
    cfg = json.loads((exp / "classifier" / "config.json").read_text())
    assert cfg["layers"] == stc["layers"]
    assert 0.7 < stc["test"] <= 1.0
    assert cli(*args[:-1], "1").returncode == 2
    bad = cli(*args, "--no-refit", "--name", "cv2")
    assert bad.returncode == 2 and "--cv refits" in bad.stderr
