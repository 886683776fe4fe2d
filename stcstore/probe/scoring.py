"""The chosen configuration scored once on test, refitted on train + val unless --no-refit, and
turned into the classifier artifact."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ProbeConfig
from ..store.reader import RunReader
from .aggregate import SITE_CODES
from .blocks import labels_from_decision, read_features
from .candidates import Candidate
from .metrics import classification_metrics
from .refit import refit
from .splits import SplitPlan
from .standardize import standardize_columns

__all__ = ["score_stc", "public_entry"]


def public_entry(entry: dict) -> dict:
    return {k: entry[k] for k in ("site", "pool", "eta", "k", "C", "n_blocks", "n_features", "val") if k in entry}


def score_stc(best: Candidate, config: ProbeConfig, reader: RunReader, plan: SplitPlan, row_maps: dict,
              solver: Any, fp_hash: str, preds: dict) -> tuple[dict[str, Any], Any]:
    """The chosen config's report entry and classifier: the train fit scored on test, and (unless
    --no-refit) the refit on train + val, which becomes the classifier and the quoted test score.

    Each model's test predictions go into `preds` (name -> class indices)."""
    K, y_te = plan.n_classes, plan.y["test"]
    pool = best.entry["pool"]
    stc = dict(best.entry)
    trained, feats = None, None
    if best.coef is not None:       # chosen by cross-validation there is no train-only fit to score
        _, _, te = read_features(reader, plan, row_maps, pool, best.site, best.layer, best.index, roles=(2,))
        dec = standardize_columns(te, np.arange(te.shape[1]), best.mean, best.scale) @ best.coef.T + best.intercept
        trained = classification_metrics(y_te, dec, K)
        preds["stc_no_refit" if config.refit else "stc"] = labels_from_decision(dec)
        feats = (best.site, best.layer, best.index, best.coef, best.intercept, best.mean, best.scale)
    if config.refit:
        r = refit(solver, reader, plan, row_maps, pool, best.kept_site, best.kept_layer, best.kept_index,
                  best.entry["C"])
        stc.update(classification_metrics(y_te, r.test_decision, K))
        preds["stc"] = labels_from_decision(r.test_decision)
        stc["n_features"] = int(len(r.cols))
        if trained is not None:
            stc["no_refit"] = {"n_features": best.entry["n_features"], **trained}
        c = r.cols
        feats = (best.kept_site[c], best.kept_layer[c], best.kept_index[c], r.coef, r.intercept, r.mean, r.scale)
    else:
        stc.update(trained)
    stc["refit"] = bool(config.refit)
    stc["features_per_layer"] = features_per_layer(stc["layers"], best.kept_site, best.kept_layer, feats[0], feats[1])
    return stc, _artifact(feats, stc, config.label, plan.classes, reader, fp_hash)


def features_per_layer(layers: dict, kept_site: np.ndarray, kept_layer: np.ndarray, site: np.ndarray,
                        layer: np.ndarray) -> list[dict[str, Any]]:
    """Per layer entry of the chosen depth: neurons kept by eta, and nonzero in the classifier."""
    rows = []
    for site_name, ls in layers.items():
        code = SITE_CODES[site_name]
        for l in ls:
            rows.append({
                "site": site_name, "layer": int(l),
                "kept": int(np.sum((kept_site == code) & (kept_layer == l))),
                "nonzero": int(np.sum((site == code) & (layer == l))),
            })
    return rows


def _artifact(feats: tuple, stc: dict, label: str, classes: list, reader: RunReader, fp_hash: str) -> Any:
    from ..classifier.artifact import ClassifierArtifact

    site, layer, index, coef, intercept, mean, scale = feats
    return ClassifierArtifact(
        label=label, classes=list(classes), site=stc["site"], pool=stc["pool"], k=stc["k"], eta=stc["eta"],
        C=stc["C"], layers=stc["layers"], n_blocks=stc["n_blocks"],
        coef=coef, intercept=intercept, scaler_mean=mean, scaler_scale=scale,
        feature_site=site, feature_layer=layer, feature_index=index,
        model=reader.meta.get("model") or {}, extract=reader.meta.get("extract") or {}, run=reader.name,
        fingerprint_hash=fp_hash,
        metrics={"val": stc["val"], "test": stc["test"], "macro_f1": stc["macro_f1"]},
    )
