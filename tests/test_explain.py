"""explain: contributions + intercept == logit for every pooling, and equal to an independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _stc_helpers import cli, hand_artifact, reference_contributions, reference_tokens
from stcstore.classifier.predictor import Predictor
from stcstore.explain import explain_text

TEXTS = ["good movie but a boring plot", "awful", "a brilliant, fun story with great music and a long dull scene"]
FEATURES = [("hidden", 0, 3), ("hidden", 1, 5), ("hidden", 1, 17), ("hidden", 2, 9), ("ffn", 0, 11), ("ffn", 1, 40),
            ("ffn", 1, 2), ("hidden", 2, 31)]


@pytest.fixture(scope="module")
def classifiers(tiny_model, tmp_path_factory):
    """Saved hand-built classifiers of the tiny BERT, one per (pooling, classes)."""
    root = tmp_path_factory.mktemp("explain")
    made = {}
    for pool in ("mean", "max", "first", "last"):
        for k in (2, 3):
            art = hand_artifact(tiny_model("bert"), pool, FEATURES, n_classes=k, seed=len(made))
            made[(pool, k)] = (art, art.save(root / f"{pool}-{k}"))
    return made


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("pool", ["mean", "max", "first", "last"])
def test_contributions_sum_to_the_predictor_logit(classifiers, tiny_model, pool, centered):
    art, folder = classifiers[(pool, 2)]
    clf = Predictor.load(folder, device="cpu")
    for text in TEXTS:
        expl = explain_text(clf, text, centered=centered)
        # exact by construction ...
        assert abs(expl.intercept[0] + expl.contributions[:, 0].sum() - expl.logit[0]) < 1e-9
        # ... and the same logit as the predictor's own (batched, pooled in torch) path
        assert abs(expl.logit[0] - clf.decision_function([text])[0]) < 1e-4
        # ... and the same per-token split as a loop over neurons on plain-transformers activations
        ids, acts = reference_tokens(tiny_model("bert"), text, 64)
        assert expl.token_ids == ids
        ref_c, ref_b = reference_contributions(art, acts, centered=centered)
        np.testing.assert_allclose(expl.contributions, ref_c, atol=1e-4)
        np.testing.assert_allclose(expl.intercept, ref_b, atol=1e-6)
        assert expl.label == clf.predict([text])[0]
        for cls in ("neg", "pos"):     # the score of either class decomposes too (neg: the negated logit)
            _, score, intercept, contrib = expl.view(cls)
            assert abs(intercept + contrib.sum() - score) < 1e-9 and score == (1 if cls == "pos" else -1) * expl.logit[0]
        if pool in ("first", "last"):
            other = np.delete(expl.contributions, 0 if pool == "first" else len(ids) - 1, axis=0)
            assert not other.any()


@pytest.mark.parametrize("pool", ["mean", "max", "first", "last"])
def test_multiclass_sums_per_class(classifiers, pool):
    _, folder = classifiers[(pool, 3)]
    clf = Predictor.load(folder, device="cpu")
    for text in TEXTS:
        expl = explain_text(clf, text)
        np.testing.assert_allclose(expl.intercept + expl.contributions.sum(0), expl.logit, atol=1e-9)
        np.testing.assert_allclose(expl.logit, clf.decision_function([text])[0], atol=1e-4)
        doc = expl.to_json()
        assert doc["classes"] == ["c0", "c1", "c2"] and len(doc["logit"]) == 3 and len(doc["intercept"]) == 3
        assert all(len(t["contribution"]) == 3 for t in doc["tokens"])
        for j, c in enumerate(doc["classes"]):
            name, score, intercept, contrib = expl.view(c)
            assert name == c and abs(intercept + contrib.sum() - score) < 1e-9 and score == expl.logit[j]


def test_explain_gpt2_final_norm(tiny_model, tmp_path):
    """A decoder whose last hidden entry is the final norm's output (the hook on ln_f)."""
    art = hand_artifact(tiny_model("gpt2"), "last", [("hidden", 2, 1), ("ffn", 1, 7), ("hidden", 1, 4)])
    clf = Predictor.load(art.save(tmp_path / "clf"), device="cpu")
    expl = explain_text(clf, TEXTS[0])
    _, acts = reference_tokens(tiny_model("gpt2"), TEXTS[0], 64)
    np.testing.assert_allclose(expl.contributions, reference_contributions(art, acts)[0], atol=1e-4)
    assert abs(expl.logit[0] - clf.decision_function([TEXTS[0]])[0]) < 1e-4


def test_cli_explain_json_plot_and_terminal(classifiers, tmp_path):
    _, folder = classifiers[("max", 2)]
    png = tmp_path / "e.png"
    r = cli("explain", "--classifier", str(folder), TEXTS[0], "--json", "--plot", str(png), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)            # stdout is only the JSON document
    assert set(doc) >= {"text", "label", "logit", "intercept", "tokens"}
    assert doc["text"] == TEXTS[0]
    assert abs(doc["intercept"] + sum(t["contribution"] for t in doc["tokens"]) - doc["logit"]) < 1e-9
    assert [t["token"] for t in doc["tokens"]][:3] == ["[CLS]", "good", "movie"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = cli("predict", "--classifier", str(folder), TEXTS[0], "--device", "cpu")
    assert p.stdout.strip() == doc["label"]
    t = cli("explain", "--classifier", str(folder), TEXTS[0], "--device", "cpu")
    assert t.returncode == 0, t.stderr
    # the terminal shows the score of the predicted label: the logit, or its negative for classes[0]
    score = doc["logit"] if doc["label"] == doc["classes"][1] else -doc["logit"]
    assert "boring" in t.stdout and f"score of {doc['label']!r}" in t.stdout and f"= {score:+.4f}" in t.stdout
    other = doc["classes"][0] if doc["label"] == doc["classes"][1] else doc["classes"][1]
    t2 = cli("explain", "--classifier", str(folder), TEXTS[0], "--class", other, "--device", "cpu")
    assert f"score of {other!r}" in t2.stdout and f"= {-score:+.4f}" in t2.stdout


def test_cli_explain_multiclass_class_option(classifiers):
    _, folder = classifiers[("mean", 3)]
    r = cli("explain", "--classifier", str(folder), TEXTS[1], "--class", "c2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "score of 'c2'" in r.stdout
    bad = cli("explain", "--classifier", str(folder), TEXTS[1], "--class", "nope", "--device", "cpu")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1
