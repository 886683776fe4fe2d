"""The predictor computes in the precision the classifier's features were extracted in.

A tiny BERT is extracted with `--dtype bfloat16` on the CPU (where `auto` would mean float32);
a classifier over its features must predict from bf16 features by default, and from another
precision only when asked, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _stc_helpers import cli, hand_artifact
from stcstore.classifier import ClassifierArtifact
from stcstore.classifier.predictor import resolve_predict_dtype
from stcstore.errors import ClassifierError, ConfigError
from stcstore.store import open_run

ROWS = 40
FEATURES = [("hidden", 1, 3), ("hidden", 2, 5), ("ffn", 0, 7), ("ffn", 1, 2), ("hidden", 2, 11)]


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, tiny_model, review_csv):
    """(store, classifier folder, csv of the extracted texts): bf16 extraction, one window, batches of 8."""
    from stcstore.config import ExtractConfig
    from stcstore.extract import extract

    root = tmp_path_factory.mktemp("bf16")
    texts = root / "texts.csv"
    pd.read_csv(review_csv).head(ROWS).to_csv(texts, index=False)
    store = root / "s.zarr"
    extract(ExtractConfig(model=str(tiny_model("bert")), data=str(texts), store=str(store), device="cpu",
                          dtype="bfloat16", pools=("mean",), max_length=32, batch_size=8, chunk_rows=ROWS,
                          progress=False))
    meta = open_run(store).meta
    assert meta["extract"]["compute_dtype"] == "bfloat16"
    # what probe writes: the run's meta["extract"] verbatim; the artifact takes the dtype from it
    art = dataclasses.replace(hand_artifact(tiny_model("bert"), "mean", FEATURES, info=meta["model"]),
                              extract=dict(meta["extract"]), compute_dtype="")
    return store, art.save(root / "clf"), texts


def _stored_decision(store: Path, art: ClassifierArtifact) -> tuple[np.ndarray, np.ndarray]:
    """The classifier on the stored (float16) features, and how far float16 rounding alone moves it."""
    r = open_run(store)
    X = np.stack([r.read("train", s, "mean", layer=l)[:, i].astype(np.float64) for s, l, i in FEATURES], axis=1)
    dec = ((X - art.scaler_mean) / art.scaler_scale) @ art.coef.T.astype(np.float64) + art.intercept
    w = np.abs(art.coef.astype(np.float64)).max(0) / art.scaler_scale
    return dec[:, 0], (np.abs(X) * 2.0**-11 + 2.0**-24) @ w + 1e-5


def _cli_decisions(clf: Path, texts: Path, *extra: str):
    r = cli("predict", "--classifier", clf, "--data", texts, "--device", "cpu", "--batch-size", "8", "--json",
            "--no-progress", *extra)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    return np.array([p["decision"] for p in doc["predictions"]]), r.stderr


def test_artifact_records_the_compute_dtype_and_reads_old_folders(bf16_run, tmp_path):
    clf = Path(shutil.copytree(bf16_run[1], tmp_path / "clf"))
    cfg = json.loads((clf / "config.json").read_text())
    assert cfg["compute_dtype"] == "bfloat16"
    assert ClassifierArtifact.load(clf).compute_dtype == "bfloat16"
    # a folder written before the field existed: the dtype comes from the run's extract record
    del cfg["compute_dtype"]
    (clf / "config.json").write_text(json.dumps(cfg))
    assert ClassifierArtifact.load(clf).compute_dtype == "bfloat16"
    # older still (no compute dtype anywhere): loads, and follows the run's --dtype rule on this device
    del cfg["extract"]["compute_dtype"]
    cfg["extract"]["dtype"] = "auto"
    (clf / "config.json").write_text(json.dumps(cfg))
    old = ClassifierArtifact.load(clf)
    assert old.compute_dtype == ""
    assert resolve_predict_dtype(old, None, torch.device("cpu")) == torch.float32


def test_resolve_predict_dtype_default_and_override(bf16_run, caplog):
    art = ClassifierArtifact.load(bf16_run[1])
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="stcstore"):
        assert resolve_predict_dtype(art, None, cpu) == torch.bfloat16     # not auto's float32 on CPU
        assert resolve_predict_dtype(art, "bfloat16", cpu) == torch.bfloat16
        assert not caplog.records
        assert resolve_predict_dtype(art, "float32", cpu) == torch.float32
        assert resolve_predict_dtype(art, "auto", cpu) == torch.float32
    assert len(caplog.records) == 2 and all("bfloat16" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="float8"):
        resolve_predict_dtype(art, "float8", cpu)
    with pytest.raises(ClassifierError, match="float8"):
        resolve_predict_dtype(dataclasses.replace(art, compute_dtype="float8"), None, cpu)


def test_predict_uses_the_extract_precision_and_warns_on_another(bf16_run):
    """Same texts, same batches: predict's bf16 features are the stored ones up to float16 rounding;
    float32 features (what `auto` re-resolved on the CPU used to give) are not."""
    store, clf, texts = bf16_run
    art = ClassifierArtifact.load(clf)
    want, tol = _stored_decision(store, art)
    got, err = _cli_decisions(clf, texts)
    assert "bfloat16" not in err
    assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()
    f32, err = _cli_decisions(clf, texts, "--dtype", "float32")
    assert "float32" in err and "bfloat16" in err                        # the warning names both
    assert np.any(np.abs(f32 - want) > tol)                               # the precision shows


def test_explain_uses_the_same_precision_as_predict(bf16_run):
    """explain keeps per-token activations through the same hooks, in the same dtype: its logit is predict's."""
    _, clf, texts = bf16_run
    text = pd.read_csv(texts)["text"][3]
    r = cli("predict", text, "--classifier", clf, "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    dec = json.loads(r.stdout)["predictions"][0]["decision"]
    e = cli("explain", text, "--classifier", clf, "--device", "cpu", "--json")
    assert e.returncode == 0, e.stderr
    doc = json.loads(e.stdout)
    assert doc["logit"] == pytest.approx(dec, rel=1e-5, abs=1e-5)
    assert doc["intercept"] + sum(t["contribution"] for t in doc["tokens"]) == pytest.approx(doc["logit"], abs=1e-9)
    e32 = cli("explain", text, "--classifier", clf, "--device", "cpu", "--json", "--dtype", "float32")
    assert e32.returncode == 0 and "bfloat16" in e32.stderr
    assert json.loads(e32.stdout)["logit"] != pytest.approx(dec, rel=1e-5, abs=1e-5)
