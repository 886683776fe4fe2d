"""Predictor: same decisions as sklearn on the stored activations, early exit, model checks, API."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _stc_helpers import POOL_FNS, hand_artifact, model_info, reference_decision, reference_tokens
from stcstore.classifier import ClassifierArtifact
from stcstore.classifier.predictor import Predictor, pooled_features
from stcstore.errors import ClassifierError

TEXTS = [
    "good movie",
    "a long and boring story with a dull actor and awful music " * 3,
    "great",
    "brilliant plot, fun scene, short",
    "bad",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model, review_csv):
    """A float32 store of the tiny BERT over the review csv, written by the library's extract.

    float32 so that the comparison can be tight; test_cli_predict checks the default float16 store."""
    from stcstore.config import ExtractConfig
    from stcstore.extract import extract

    path = tmp_path_factory.mktemp("pred") / "s.zarr"
    extract(ExtractConfig(model=str(tiny_model("bert")), data=str(review_csv), store=str(path), progress=False,
                          batch_size=16, dtype="float32"))
    return path


def _save(art: ClassifierArtifact, folder: Path) -> Path:
    return art.save(folder)


@pytest.mark.parametrize("pool", ["mean", "max", "first", "last"])
def test_matches_sklearn_on_stored_activations(store, tmp_path, review_csv, pool):
    """A classifier fitted by sklearn on the STORED features gives the same labels on raw texts."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from stcstore.store import open_run

    r = open_run(store)
    feats, blocks = [], []
    for site, layer in (("hidden", 1), ("ffn", 0), ("hidden", 2)):
        full = r.read("train", site, pool, layer=layer).astype(np.float32)
        idx = np.sort(np.argsort(-full.std(0))[:12])      # neurons that vary across texts
        feats.append((site, layer, idx))
        blocks.append(full[:, idx])
    X = np.concatenate(blocks, axis=1)
    y = r.column("train", "label")
    mu, sd = X.mean(0), X.std(0) + 1e-3
    lr = LogisticRegression(C=0.5, max_iter=5000).fit((X - mu) / sd, y)
    art = ClassifierArtifact(
        label="label", classes=lr.classes_.tolist(), site="both", pool=pool, k=2, eta=1.0, C=0.5,
        layers={"hidden": [0, 1, 2], "ffn": [0, 1]}, coef=lr.coef_, intercept=lr.intercept_, scaler_mean=mu,
        scaler_scale=sd, feature_site=np.concatenate([np.full(len(i), 0 if s == "hidden" else 1) for s, _, i in feats]),
        feature_layer=np.concatenate([np.full(len(i), l) for _, l, i in feats]),
        feature_index=np.concatenate([i for _, _, i in feats]), model=r.meta["model"], extract=r.meta["extract"],
    )
    clf = Predictor.load(_save(art, tmp_path / "clf"), device="cpu", batch_size=8)
    texts = pd.read_csv(review_csv)["text"].tolist()
    dec = clf.decision_function(texts)
    ref = lr.decision_function((X - mu) / sd)
    # the same numbers up to float32 rounding (batches are padded differently here than in extract)
    np.testing.assert_allclose(dec, ref, atol=2e-4, rtol=1e-4)
    sure = np.abs(ref) > 1e-3
    assert (clf.predict(texts)[sure] == lr.predict((X - mu) / sd)[sure]).all()
    np.testing.assert_allclose(clf.predict_proba(texts), lr.predict_proba((X - mu) / sd), atol=1e-4)
    assert clf.blocks_run_ == 2 and clf.layers_ == {"hidden": [1, 2], "ffn": [0]}


def _count_block_calls(clf: Predictor) -> tuple[list[int], list]:
    from stcstore.models import get_module

    blocks = get_module(clf.loaded_.model, clf.loaded_.arch.blocks)
    calls = [0] * len(blocks)
    hooks = [b.register_forward_hook(lambda m, a, o, _i=i: calls.__setitem__(_i, calls[_i] + 1))
             for i, b in enumerate(blocks)]
    return calls, hooks


@pytest.mark.parametrize(
    "features, blocks",
    [
        ([("hidden", 0, 3), ("hidden", 0, 7)], 0),          # embeddings only: no block runs
        ([("ffn", 0, 5), ("hidden", 1, 2)], 1),             # inside / after block 0: block 1 never runs
        ([("hidden", 2, 4), ("ffn", 1, 9)], 2),             # the final entry: every block
    ],
)
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_early_exit_skips_blocks_and_matches_full_forward(tiny_model, tmp_path, features, blocks, family):
    model_dir = tiny_model(family)
    art = hand_artifact(model_dir, "mean", features)
    clf = Predictor.load(_save(art, tmp_path / "clf"), device="cpu", batch_size=2)
    assert clf.blocks_run_ == blocks
    calls, hooks = _count_block_calls(clf)
    try:
        dec = clf.decision_function(TEXTS)
    finally:
        for h in hooks:
            h.remove()
    n_batches = (len(TEXTS) + 1) // 2
    assert calls == [n_batches] * blocks + [0] * (clf.n_layers_ - blocks)
    # the same numbers as a full forward of plain transformers (one text at a time, no padding)
    ref = np.array([reference_decision(art, reference_tokens(model_dir, t, 64)[1])[0] for t in TEXTS])
    assert np.allclose(dec, ref, atol=1e-4, rtol=1e-5)


def test_pooled_features_match_reference_with_padding_and_truncation(tiny_model):
    from stcstore.models import load_model, resolve_model

    model_dir = tiny_model("bert")
    loaded = load_model(resolve_model(str(model_dir)))
    layers = {"hidden": [0, 2], "ffn": [1]}
    out = pooled_features(loaded, TEXTS, layers=layers, pools=("mean", "max", "first", "last"), max_length=12,
                          batch_size=3)
    for row, text in enumerate(TEXTS):
        _, acts = reference_tokens(model_dir, text, 12)   # truncated right to 12 tokens, like extract
        for site, ls in layers.items():
            for pos, layer in enumerate(ls):
                for pool, fn in POOL_FNS.items():
                    np.testing.assert_allclose(out[(site, pool)][pos, row], fn(acts[(site, layer)]), atol=1e-5, rtol=1e-5)


def test_sklearn_conventions_binary(tiny_model, tmp_path):
    art = hand_artifact(tiny_model("bert"), "max", [("hidden", 1, i) for i in range(10)])
    clf = Predictor.load(_save(art, tmp_path / "clf"), device="cpu")
    assert clf.classes_.tolist() == ["neg", "pos"]
    labels = clf.predict(TEXTS)
    assert isinstance(labels, np.ndarray) and labels.shape == (len(TEXTS),)
    proba = clf.predict_proba(TEXTS)
    dec = clf.decision_function(TEXTS)
    assert proba.shape == (len(TEXTS), 2) and dec.shape == (len(TEXTS),)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-dec.astype(np.float64))), rtol=1e-6)
    assert labels.tolist() == np.where(dec > 0, "pos", "neg").tolist()
    # a single string is one text, not a list of characters
    assert clf.predict("good movie").tolist() == clf.predict(["good movie"]).tolist()
    assert clf.predict([]).shape == (0,)
    assert clf.transform(TEXTS).shape == (len(TEXTS), 10)
    # row order does not depend on batching (length-sorted inside)
    clf.batch_size = 1
    np.testing.assert_allclose(clf.decision_function(TEXTS[::-1])[::-1], dec, atol=1e-5)


def test_sklearn_conventions_multiclass(tiny_model, tmp_path):
    art = hand_artifact(tiny_model("bert"), "mean", [("ffn", 0, i) for i in range(12)], n_classes=3)
    clf = Predictor.load(_save(art, tmp_path / "clf"), device="cpu")
    dec = clf.decision_function(TEXTS)
    proba = clf.predict_proba(TEXTS)
    assert dec.shape == (len(TEXTS), 3) and proba.shape == (len(TEXTS), 3)
    e = np.exp(dec - dec.max(1, keepdims=True))
    np.testing.assert_allclose(proba, e / e.sum(1, keepdims=True), rtol=1e-5)
    assert clf.predict(TEXTS).tolist() == [f"c{i}" for i in dec.argmax(1)]


def test_intercept_only_classifier_runs_no_forward(tiny_model, tmp_path):
    art = hand_artifact(tiny_model("bert"), "mean", [])
    clf = Predictor.load(_save(art, tmp_path / "clf"), device="cpu")
    assert clf.blocks_run_ == 0
    dec = clf.decision_function(TEXTS)
    np.testing.assert_allclose(dec, np.full(len(TEXTS), art.intercept[0]))


def test_classifier_of_another_model_is_refused(tiny_model, tmp_path):
    import transformers as T

    src = tiny_model("bert")
    moved = tmp_path / "model"
    shutil.copytree(src, moved)
    art = hand_artifact(moved, "mean", [("hidden", 1, 0)])
    folder = _save(art, tmp_path / "clf")
    Predictor.load(folder, device="cpu")            # the right weights load
    want = art.model["weight_hash"]
    # the folder now holds different weights (same architecture and tokenizer)
    torch.manual_seed(1)
    T.AutoModel.from_config(T.AutoConfig.from_pretrained(moved)).save_pretrained(moved)
    got = model_info(moved)["weight_hash"]
    assert got != want
    with pytest.raises(ClassifierError) as exc:
        Predictor.load(folder, device="cpu")
    assert want in str(exc.value) and got in str(exc.value)
    # an explicit --model with other weights is refused too; with the same weights it is taken
    with pytest.raises(ClassifierError):
        Predictor.load(folder, device="cpu", model=str(tiny_model("roberta")))
    clf = Predictor.load(_save(hand_artifact(src, "mean", [("hidden", 1, 0)]), tmp_path / "clf2"),
                             device="cpu", model=str(shutil.copytree(src, tmp_path / "copy")))
    assert clf.model_info_["weight_hash"] == model_info(src)["weight_hash"]


def test_model_found_by_recorded_path_when_spec_is_gone(tiny_model, tmp_path, monkeypatch):
    info = dict(model_info(tiny_model("bert")))
    info["spec"] = "./models/tiny-bert-that-was-moved"       # relative to a directory we are not in
    art = hand_artifact(tiny_model("bert"), "mean", [("hidden", 1, 0)], info=info)
    folder = _save(art, tmp_path / "clf")
    monkeypatch.chdir(tmp_path)
    clf = Predictor.load(folder, device="cpu")
    assert clf.loaded_.source.path == info["path"]
    info["path"] = str(tmp_path / "nowhere")
    art2 = hand_artifact(tiny_model("bert"), "mean", [("hidden", 1, 0)], info=info)
    with pytest.raises(ClassifierError, match="--model"):
        Predictor.load(_save(art2, tmp_path / "clf2"), device="cpu")


def test_classifier_reading_beyond_the_model_is_refused(tiny_model, tmp_path):
    art = hand_artifact(tiny_model("bert"), "mean", [("ffn", 0, 64)])   # d_ff is 64: neuron 64 does not exist
    with pytest.raises(ClassifierError, match="width"):
        Predictor.load(_save(art, tmp_path / "clf"), device="cpu")


def test_public_import_paths_name_the_estimator_and_the_predictor():
    import sklearn.base

    import stcstore
    import stcstore.classifier as pkg
    from stcstore.classifier.estimator import STCClassifier

    # STCClassifier is the scikit-learn estimator everywhere; the artifact-backed class is Predictor
    assert pkg.STCClassifier is STCClassifier and stcstore.STCClassifier is STCClassifier
    assert sklearn.base.is_classifier(STCClassifier())
    assert pkg.Predictor is Predictor and not issubclass(Predictor, sklearn.base.BaseEstimator)
    assert pkg.pooled_features is pooled_features
    with pytest.raises(AttributeError):
        pkg.NoSuchThing  # noqa: B018
