"""Report metrics against scikit-learn's on the same labels and decisions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from stcstore.probe.metrics import classification_metrics, roc_auc


@pytest.mark.parametrize("k", [2, 3, 5])
def test_metrics_match_sklearn(k):
    rng = np.random.default_rng(k)
    n = 300
    y = rng.integers(0, k, n)
    n_out = 1 if k == 2 else k
    dec = rng.normal(size=(n, n_out)) + (np.eye(k)[y][:, :n_out] if k > 2 else (y[:, None] - 0.5))
    dec = np.round(dec, 1)          # ties in the scores: ROC AUC counts them half
    got = classification_metrics(y, dec, k)
    pred = (dec[:, 0] > 0).astype(int) if k == 2 else dec.argmax(1)
    assert got["test"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    np.testing.assert_allclose(got["precision"], p)
    np.testing.assert_allclose(got["recall"], r)
    np.testing.assert_allclose(got["f1"], f)
    assert got["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(k)).tolist()
    if k == 2:
        want = skm.roc_auc_score(y, dec[:, 0])
    else:
        z = np.exp(dec - dec.max(1, keepdims=True))
        want = skm.roc_auc_score(y, z / z.sum(1, keepdims=True), multi_class="ovr", average="macro")
    assert got["roc_auc"] == pytest.approx(want, abs=1e-12)


def test_roc_auc_undefined_when_a_class_is_absent():
    assert roc_auc(np.zeros(5, int), np.arange(5.0)[:, None]) is None
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([[0.1], [0.4], [0.35], [0.8]])) == pytest.approx(0.75)
