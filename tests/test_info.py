"""`stcstore info`: what a store holds, including stored columns and each experiment's scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _stc_helpers import cli


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_model, review_csv) -> Path:
    """A store of the tiny BERT over the review csv with one experiment on `label`."""
    store = tmp_path_factory.mktemp("info") / "s.zarr"
    r = cli("extract", "--model", tiny_model("bert"), "--data", review_csv, "--store", store, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("info", "--store", store)
    assert r.returncode == 0, r.stderr
    assert "experiments: none" in r.stdout
    r = cli("probe", "--store", store, "--label", "label", "--name", "sentiment", "--no-progress", "--no-plots",
            "--c-grid", "0.1,1", "--eta-grid", "0.5,1", "--no-concat-baseline")
    assert r.returncode == 0, r.stderr
    return store


def _report(store: Path) -> dict:
    (path,) = store.glob("*/probes/sentiment/report.json")
    return json.loads(path.read_text())


def test_info_shows_columns_and_experiment_scores(probed):
    r = cli("info", "--store", probed)
    assert r.returncode == 0, r.stderr
    rep = _report(probed)
    assert "columns: label, score" in r.stdout                     # the csv's columns but the text
    row = next(line for line in r.stdout.splitlines() if "sentiment" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:5] == ["sentiment", "label", "neg, pos", f"{100 * rep['stc']['val']:.1f}%",
                         f"{100 * rep['stc']['test']:.1f}%"]


def test_info_json_has_columns_and_experiment_reports(probed):
    r = cli("info", "--store", probed, "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["runs"][0]
    rep = _report(probed)
    assert run["columns"] == {"train": ["label", "score"]}
    assert run["experiments"] == ["sentiment"]
    (exp,) = run["experiment_reports"]
    assert (exp["name"], exp["label"], exp["classes"]) == ("sentiment", "label", ["neg", "pos"])
    assert (exp["val"], exp["test"]) == (rep["stc"]["val"], rep["stc"]["test"])
    assert exp["stc"]["k"] == rep["stc"]["k"] and exp["stc"]["n_features"] == rep["stc"]["n_features"]
