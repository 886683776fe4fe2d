"""The metrics a report gives for a model scored on test: accuracy, macro F1, ROC AUC, per-class
precision / recall / F1 and the confusion matrix, from the model's decisions."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .blocks import labels_from_decision

__all__ = ["classification_metrics", "label_metrics", "roc_auc", "confusion_matrix"]


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y, np.int64), np.asarray(pred, np.int64)), 1)
    return cm


def _binary_auc(pos: np.ndarray, score: np.ndarray) -> Optional[float]:
    """Probability that a random positive scores above a random negative (ties count half)."""
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties (1-based), the Mann-Whitney U statistic
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_auc(y: np.ndarray, decision: np.ndarray) -> Optional[float]:
    """ROC AUC: binary on the decision; more classes: macro one-vs-rest on softmax probabilities.

    None when it is undefined (a class absent from y).
    """
    y = np.asarray(y, np.int64)
    decision = np.asarray(decision, np.float64)
    if decision.shape[1] == 1:
        return _binary_auc(y == 1, decision[:, 0])
    z = decision - decision.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    aucs = [_binary_auc(y == k, p[:, k]) for k in range(decision.shape[1])]
    return None if any(a is None for a in aucs) else float(np.mean(aucs))


def label_metrics(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """test accuracy, macro_f1, per-class precision / recall / f1 and the confusion matrix of predicted labels."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    cm = confusion_matrix(y, pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(axis=0) > 0, tp / cm.sum(axis=0), 0.0)
        recall = np.where(cm.sum(axis=1) > 0, tp / cm.sum(axis=1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # macro F1 over the classes present in y or pred (sklearn's average='macro' on those labels)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return {
        "test": float(np.mean(pred == y)) if len(y) else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "confusion_matrix": cm.tolist(),
    }


def classification_metrics(y: np.ndarray, decision: np.ndarray, n_classes: int) -> dict[str, Any]:
    """`label_metrics` of the decisions' labels, plus roc_auc from the decisions themselves."""
    out = label_metrics(y, labels_from_decision(np.asarray(decision)), n_classes)
    out["roc_auc"] = roc_auc(np.asarray(y, np.int64), decision)
    return out
