"""`stcstore predict` end to end: extract -> probe -> predict equals the classifier on the stored activations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _stc_helpers import cli, hand_artifact
from conftest import run_cli
from stcstore.classifier import ClassifierArtifact
from stcstore.store import open_run


def _stored_features(store: Path, art: ClassifierArtifact, split: str = "train") -> np.ndarray:
    """(n, F) the classifier's input features read from the store (float16 by default)."""
    r = open_run(store)
    n = r.n_rows(split)
    X = np.empty((n, art.n_features), dtype=np.float64)
    for f in range(art.n_features):
        site = "hidden" if art.feature_site[f] == 0 else "ffn"
        X[:, f] = r.read(split, site, art.pool, layer=int(art.feature_layer[f]))[:, int(art.feature_index[f])]
    return X


def _stored_decision(store: Path, art: ClassifierArtifact, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The classifier applied to the stored activations (independently of predict), and per row how far
    float16 storage alone can move it: each feature is rounded by at most 2^-11 of its value (+ subnormals)."""
    X = _stored_features(store, art, split)
    Z = (X - art.scaler_mean) / art.scaler_scale
    dec = Z @ art.coef.T.astype(np.float64) + art.intercept
    w = np.abs(art.coef.astype(np.float64)).max(0) / art.scaler_scale
    tol = (np.abs(X) * 2.0**-11 + 2.0**-24) @ w + 1e-4
    return dec, tol


def _proba(dec: np.ndarray) -> np.ndarray:
    if dec.shape[1] == 1:
        p = 1 / (1 + np.exp(-dec[:, 0]))
        return np.stack([1 - p, p], 1)
    e = np.exp(dec - dec.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_model, review_csv):
    """extract + probe through the command line on the tiny BERT; returns (store, classifier folder)."""
    root = tmp_path_factory.mktemp("cli-predict")
    store = root / "s.zarr"
    r = cli("extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--store", str(store),
                "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("probe", "--store", str(store), "--label", "label", "--out", str(root / "exp"), "--no-progress",
                "--no-plots", "--c-grid", "0.1,1", "--eta-grid", "0.5,1")
    assert r.returncode == 0, r.stderr
    return store, root / "exp" / "classifier"


def test_predict_data_matches_stored_activations(probed, review_csv, tmp_path):
    store, clf_dir = probed
    art = ClassifierArtifact.load(clf_dir)
    ref, tol = _stored_decision(store, art)
    out = tmp_path / "preds.jsonl"
    r = cli("predict", "--classifier", str(clf_dir), "--data", str(review_csv), "--out", str(out), "--proba",
            "--device", "cpu", "--batch-size", "7")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""                               # results went to the file
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["split"], x["row"]) for x in recs] == [("train", i) for i in range(len(ref))]
    proba = np.array([x["proba"] for x in recs])
    # float32 forward from raw text vs float16 store: within what the float16 rounding explains
    assert (np.abs(proba - _proba(ref)) <= tol[:, None] / 4 + 1e-5).all()
    margin = np.abs(ref[:, 0]) if ref.shape[1] == 1 else np.abs(np.diff(np.sort(ref, 1)[:, -2:], axis=1)[:, 0])
    sure = margin > 2 * tol
    labels = np.array([x["label"] for x in recs])
    ref_labels = np.array(art.classes)[art.predict_indices(ref)]
    assert (labels[sure] == ref_labels[sure]).all() and sure.mean() > 0.5


def test_features_round_to_the_stored_float16(probed, review_csv):
    """Stronger than any tolerance: predict's float32 features, rounded to float16, are the stored values
    (to one float16 step: batches are padded differently, so float32 sums may differ in the last bit)."""
    import pandas as pd

    from stcstore.classifier.predictor import Predictor

    store, clf_dir = probed
    clf = Predictor.load(clf_dir, device="cpu", batch_size=5)
    X = clf.transform(pd.read_csv(review_csv)["text"].tolist())
    S = _stored_features(store, clf.artifact_)
    step = np.abs(np.spacing(S.astype(np.float16))).astype(np.float64)
    assert (np.abs(X.astype(np.float16).astype(np.float64) - S) <= step).all()
    assert np.mean(X.astype(np.float16).astype(np.float64) == S) > 0.99


def test_predict_texts_stdout_is_only_labels(probed, review_csv):
    import pandas as pd

    _, clf_dir = probed
    texts = pd.read_csv(review_csv)["text"].tolist()[:6]
    r = cli("predict", "--classifier", str(clf_dir), *texts, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    art = ClassifierArtifact.load(clf_dir)
    assert len(lines) == 6 and set(lines) <= {str(c) for c in art.classes}

    rp = cli("predict", "--classifier", str(clf_dir), *texts, "--proba", "--device", "cpu")
    rows = [line.split("\t") for line in rp.stdout.splitlines()]
    assert [row[0] for row in rows] == lines
    assert all(len(row) == 1 + len(art.classes) and abs(sum(map(float, row[1:])) - 1) < 1e-5 for row in rows)

    rj = cli("predict", "--classifier", str(clf_dir), *texts, "--json", "--device", "cpu")
    doc = json.loads(rj.stdout)
    assert doc["classes"] == art.classes and doc["n"] == 6
    assert [p["label"] for p in doc["predictions"]] == lines and doc["predictions"][0]["text"] == texts[0]


def test_predict_data_stdout_and_csv(probed, review_csv, tmp_path):
    _, clf_dir = probed
    # a real process: whatever libraries print at start-up, stdout holds only the labels
    r = run_cli("predict", "--classifier", str(clf_dir), "--data", str(review_csv), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 150                     # progress bar and summary stay on stderr
    assert "predict train" in r.stderr
    out = tmp_path / "p.csv"
    r2 = cli("predict", "--classifier", str(clf_dir), "--data", str(review_csv), "--out", str(out), "--proba",
                 "--no-progress", "--device", "cpu")
    assert r2.returncode == 0, r2.stderr
    import pandas as pd

    df = pd.read_csv(out)
    assert list(df.columns[:3]) == ["split", "row", "label"] and len(df) == 150
    assert df["label"].astype(str).tolist() == lines


def test_other_model_refused_on_the_command_line(tiny_model, tmp_path):
    art = hand_artifact(tiny_model("bert"), "mean", [("hidden", 1, 0)])
    folder = art.save(tmp_path / "clf")
    other = tiny_model("roberta")
    for cmd in ("predict", "explain"):
        r = cli(cmd, "--classifier", str(folder), "--model", str(other), "good", "--device", "cpu")
        assert r.returncode == 2 and r.stdout == ""
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and "weight hash" in err[0] and art.model["weight_hash"] in err[0]


def _damage(folder: Path, how: str) -> None:
    if how == "missing-weights":
        (folder / "weights.safetensors").unlink()
    elif how == "missing-config":
        (folder / "config.json").unlink()
    elif how == "corrupt-json":
        (folder / "config.json").write_text('{"format_version": 1, "classes": [')
    elif how == "truncated-weights":
        data = (folder / "weights.safetensors").read_bytes()
        (folder / "weights.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "missing-folder":
        shutil.rmtree(folder)


@pytest.mark.parametrize("how", ["missing-folder", "missing-weights", "missing-config", "corrupt-json", "truncated-weights"])
def test_damaged_classifier_is_one_line_exit_2(tiny_model, tmp_path, how):
    folder = hand_artifact(tiny_model("bert"), "mean", [("hidden", 1, 0)]).save(tmp_path / "clf")
    _damage(folder, how)
    for args in (("predict", "good"), ("explain", "good")):
        r = cli(args[0], "--classifier", str(folder), args[1], "--device", "cpu")
        assert r.returncode == 2, r.stderr
        assert r.stdout == ""
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), r.stderr


def test_damaged_classifier_in_a_real_process(tiny_model, tmp_path):
    folder = hand_artifact(tiny_model("bert"), "mean", [("hidden", 1, 0)]).save(tmp_path / "clf")
    _damage(folder, "truncated-weights")
    r = run_cli("predict", "--classifier", str(folder), "good")
    assert r.returncode == 2 and r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "weights.safetensors" in err[0] and "damaged" in err[0], r.stderr


def test_usage_errors(tiny_model, tmp_path, review_csv):
    folder = hand_artifact(tiny_model("bert"), "mean", [("hidden", 1, 0)]).save(tmp_path / "clf")
    for args in ((), ("good", "--data", str(review_csv)), ("good", "--out", str(tmp_path / "x.xlsx")),
                 ("--data", str(review_csv), "--text-column", "nope")):
        r = cli("predict", "--classifier", str(folder), *args, "--device", "cpu")
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


@pytest.mark.slow
def test_minilm_end_to_end(tmp_path):
    """The bundled MiniLM on 240 Rotten Tomatoes reviews: predict from raw text == classifier on stored rows."""
    import pandas as pd

    from stcstore.data import load_source

    store = tmp_path / "s.zarr"
    r = cli("extract", "--model", "minilm", "--data", "rotten_tomatoes", "--store", str(store), "--limit", "240",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("probe", "--store", str(store), "--label", "label", "--out", str(tmp_path / "exp"), "--no-progress",
                "--no-plots", "--pools", "mean,max", "--c-grid", "0.1,1", "--eta-grid", "0.5,1")
    assert r.returncode == 0, r.stderr
    clf_dir = tmp_path / "exp" / "classifier"
    split = load_source("rotten_tomatoes", limit=240).splits["train"]
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"review": split.texts(0, 240)}).to_csv(csv, index=False)
    out = tmp_path / "p.jsonl"
    r = cli("predict", "--classifier", str(clf_dir), "--data", str(csv), "--text-column", "review", "--out",
                str(out), "--proba", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    art = ClassifierArtifact.load(clf_dir)
    ref, tol = _stored_decision(store, art)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert (np.abs(np.array([x["proba"] for x in recs]) - _proba(ref)) <= tol[:, None] / 4 + 1e-5).all()
    sure = np.abs(ref[:, 0]) > 2 * tol
    labels = np.array([x["label"] for x in recs])
    assert (labels[sure] == np.array(art.classes)[art.predict_indices(ref)][sure]).all()
    e = cli("explain", "--classifier", str(clf_dir), split.texts(0, 1)[0], "--json", "--device", "cpu")
    doc = json.loads(e.stdout)
    assert abs(doc["intercept"] + sum(t["contribution"] for t in doc["tokens"]) - doc["logit"]) < 1e-6
    assert abs(doc["logit"] - ref[0, 0]) <= tol[0]


def test_demo_config_and_examples():
    from stcstore.demo import DEFAULT_ROWS, DemoConfig, demo_examples
    from stcstore.errors import ConfigError

    cfg = DemoConfig(out="somewhere").validate()
    assert cfg.n_rows == DEFAULT_ROWS and cfg.run_name.endswith(f"__{DEFAULT_ROWS}")
    assert str(cfg.store_path) == "somewhere/store.zarr"
    assert DemoConfig(full=True).validate().run_name.endswith("__full")
    for bad in (DemoConfig(rows=10), DemoConfig(rows=100, full=True)):
        with pytest.raises(ConfigError):
            bad.validate()
    # the example reviews come from rows the demo did not extract, one per class
    ex = demo_examples(DEFAULT_ROWS)
    assert [label for _, label in ex] == ["fresh", "rotten"]
    from stcstore.data import load_source

    split = load_source("rotten_tomatoes").splits["train"]
    first = set(split.texts(0, DEFAULT_ROWS))
    assert all(text not in first for text, _ in ex)


def test_predict_data_reads_the_recorded_text_column(tmp_path, tiny_model, review_csv):
    # a classifier whose run was extracted from the column "review": predict --data reads it by default
    model = tiny_model("bert")
    art = hand_artifact(model, "mean", [("hidden", 1, 3), ("ffn", 0, 5)])
    art.extract["text_column"] = "review"
    clf_dir = art.save(tmp_path / "classifier")
    data = tmp_path / "reviews.csv"
    lines = review_csv.read_text().splitlines()
    data.write_text("\n".join(["review,label,score", *lines[1:21]]) + "\n")   # 20 rows, text under "review"
    r = cli("predict", "--classifier", clf_dir, "--data", data, "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    explicit = cli("predict", "--classifier", clf_dir, "--data", data, "--text-column", "review", "--device", "cpu",
                   "--no-progress")
    assert explicit.returncode == 0, explicit.stderr
    assert r.stdout == explicit.stdout and len(r.stdout.splitlines()) == 20
    # the same texts as arguments give the same labels
    texts = [line.rsplit(",", 2)[0].strip('"') for line in lines[1:21]]
    assert cli("predict", "--classifier", clf_dir, *texts, "--device", "cpu").stdout == r.stdout
