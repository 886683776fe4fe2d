"""The classifier folder: round trip, decisions recomputed in NumPy, and one-line load errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from stcstore.classifier import CONFIG_NAME, WEIGHTS_NAME, ClassifierArtifact
from stcstore.errors import ClassifierError


def _artifact(n_classes: int = 3, seed: int = 0) -> ClassifierArtifact:
    rng = np.random.default_rng(seed)
    F = 5
    n_out = 1 if n_classes == 2 else n_classes
    return ClassifierArtifact(
        label="topic", classes=["a", "b", "c"][:n_classes], site="both", pool="mean", k=2, eta=0.8, C=0.1,
        layers={"hidden": [0, 1, 2], "ffn": [0, 1]}, n_blocks=2,
        coef=rng.standard_normal((n_out, F)), intercept=rng.standard_normal(n_out),
        scaler_mean=rng.standard_normal(F), scaler_scale=rng.random(F) + 0.5,
        feature_site=[0, 0, 1, 1, 0], feature_layer=[2, 0, 1, 1, 2], feature_index=[3, 1, 0, 7, 0],
        model={"spec": "minilm", "weight_hash": "abc", "revision": "r1"}, extract={"max_length": 64, "dtype": "float16"},
        run="run0", fingerprint_hash="f00d",
    )


def _features(n: int, seed: int = 1) -> dict[tuple[str, int], np.ndarray]:
    rng = np.random.default_rng(seed)
    return {("hidden", 0): rng.standard_normal((n, 4)), ("hidden", 2): rng.standard_normal((n, 4)),
            ("ffn", 1): rng.standard_normal((n, 8)), ("hidden", 1): rng.standard_normal((n, 4))}


def test_round_trip_and_numpy_decision(tmp_path):
    art = _artifact()
    path = art.save(tmp_path / "classifier")
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    cfg = json.loads((path / CONFIG_NAME).read_text())
    assert cfg["model"]["revision"] == "r1" and cfg["extract"]["max_length"] == 64
    assert cfg["layers"] == {"hidden": [0, 1, 2], "ffn": [0, 1]} and cfg["n_features"] == 5
    t = load_file(str(path / WEIGHTS_NAME))
    assert t["coef"].dtype == np.float32 and t["feature_index"].dtype == np.int64
    back = ClassifierArtifact.load(path)
    assert back.classes == ["a", "b", "c"] and back.site == "both" and back.n_blocks == 2
    np.testing.assert_array_equal(back.coef, art.coef)
    assert back.required_layers() == {"hidden": [0, 2], "ffn": [1]}

    feats = _features(6)
    # independent: pick columns by hand, standardise, dot product
    X = np.stack([feats[("hidden", 2)][:, 3], feats[("hidden", 0)][:, 1], feats[("ffn", 1)][:, 0],
                  feats[("ffn", 1)][:, 7], feats[("hidden", 2)][:, 0]], axis=1)
    want = ((X - t["scaler_mean"]) / t["scaler_scale"]) @ t["coef"].T + t["intercept"]
    np.testing.assert_allclose(back.decision_from_features(feats), want, rtol=1e-5, atol=1e-5)
    assert back.predict_from_features(feats) == [["a", "b", "c"][i] for i in want.argmax(1)]


def test_binary_decision_sign(tmp_path):
    art = ClassifierArtifact.load(_artifact(n_classes=2).save(tmp_path / "c"))
    feats = _features(20)
    dec = art.decision_from_features(feats)
    assert dec.shape == (20, 1)
    assert art.predict_from_features(feats) == ["b" if d > 0 else "a" for d in dec[:, 0]]


def test_missing_layer_is_named():
    feats = _features(3)
    del feats[("ffn", 1)]
    with pytest.raises(ClassifierError, match=r"ffn\[1\]"):
        _artifact().decision_from_features(feats)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ClassifierError) as e:
        ClassifierArtifact.load(tmp_path / "nope")
    assert "does not exist" in _one_line(e) and "stcstore probe" in str(e.value)

    good = _artifact().save(tmp_path / "good")

    def broken(name: str) -> Path:
        d = tmp_path / name
        _artifact().save(d)
        return d

    d = broken("no-config")
    (d / CONFIG_NAME).unlink()
    with pytest.raises(ClassifierError, match=f"{CONFIG_NAME}' is missing") as e:
        ClassifierArtifact.load(d)
    _one_line(e)

    d = broken("no-weights")
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(ClassifierError, match=f"{WEIGHTS_NAME}' is missing"):
        ClassifierArtifact.load(d)

    d = broken("bad-json")
    (d / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ClassifierError, match=f"{CONFIG_NAME}' is not valid JSON") as e:
        ClassifierArtifact.load(d)
    _one_line(e)

    d = broken("torn-weights")
    blob = (d / WEIGHTS_NAME).read_bytes()
    (d / WEIGHTS_NAME).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ClassifierError, match=f"{WEIGHTS_NAME}' is damaged") as e:
        ClassifierArtifact.load(d)
    _one_line(e)

    d = broken("bad-shape")
    t = load_file(str(d / WEIGHTS_NAME))
    t["scaler_mean"] = t["scaler_mean"][:3]
    save_file(t, str(d / WEIGHTS_NAME))
    with pytest.raises(ClassifierError, match=r"scaler_mean shape \(3,\) != \(5,\)") as e:
        ClassifierArtifact.load(d)
    assert WEIGHTS_NAME in _one_line(e)

    d = broken("wrong-classes")
    cfg = json.loads((d / CONFIG_NAME).read_text())
    cfg["classes"] = ["a", "b"]           # binary needs one coef row, the weights have three
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ClassifierError, match="3 rows for 2 classes"):
        ClassifierArtifact.load(d)

    d = broken("missing-tensor")
    t = load_file(str(d / WEIGHTS_NAME))
    del t["feature_index"]
    save_file(t, str(d / WEIGHTS_NAME))
    with pytest.raises(ClassifierError, match="lacks feature_index"):
        ClassifierArtifact.load(d)

    d = broken("future")
    cfg = json.loads((d / CONFIG_NAME).read_text())
    cfg["format_version"] = 99
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ClassifierError, match="upgrade stcstore"):
        ClassifierArtifact.load(d)

    assert ClassifierArtifact.load(good).n_features == 5
