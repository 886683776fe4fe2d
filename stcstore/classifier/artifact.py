"""The saved STC classifier: `config.json` + `weights.safetensors` in one folder, no pickle.

Layout (format_version 1)::

    classifier/
      config.json          label, classes, site, pool, k, eta, C, layers {"hidden": [...], "ffn": [...]},
                           n_blocks, n_features, n_out, model (the run's meta["model"] verbatim),
                           extract (the run's meta["extract"] verbatim), compute_dtype (the forward's
                           precision at extract time: predict/explain default to it; absent in
                           older folders, then read from extract), run, fingerprint_hash, metrics
      weights.safetensors  coef (n_out, F) f32, intercept (n_out,) f32, scaler_mean (F,) f32,
                           scaler_scale (F,) f32, feature_site (F,) i64 (0 hidden, 1 ffn),
                           feature_layer (F,) i64, feature_index (F,) i64

Feature f is neuron `feature_index[f]` of layer entry `feature_layer[f]` of site
`feature_site[f]`, pooled with `pool`. The decision is ((x - scaler_mean) / scaler_scale) @ coef.T
+ intercept; binary classifiers have n_out = 1 (decision > 0 means classes[1]), multiclass
ones n_out = K (argmax).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from ..errors import ClassifierError

if TYPE_CHECKING:
    from ..store.location import Location

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_VERSION",
    "SITE_NAMES",
    "ClassifierArtifact",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT_VERSION = 1
SITE_NAMES: tuple[str, ...] = ("hidden", "ffn")   # index = feature_site code
_FLOAT_KEYS = ("coef", "intercept", "scaler_mean", "scaler_scale")
_INT_KEYS = ("feature_site", "feature_layer", "feature_index")


@dataclass
class ClassifierArtifact:
    """An STC classifier over pooled activations of the first layers of a model."""

    label: str
    classes: list[Any]
    site: str                          # "hidden", "ffn" or "both"
    pool: str
    k: int
    eta: float
    C: float
    layers: dict[str, list[int]]       # layer entries of each site the search depth covers
    coef: np.ndarray                   # (n_out, F)
    intercept: np.ndarray              # (n_out,)
    scaler_mean: np.ndarray            # (F,)
    scaler_scale: np.ndarray           # (F,)
    feature_site: np.ndarray           # (F,) 0 hidden, 1 ffn
    feature_layer: np.ndarray          # (F,)
    feature_index: np.ndarray          # (F,)
    model: dict[str, Any] = field(default_factory=dict)
    extract: dict[str, Any] = field(default_factory=dict)
    run: str = ""
    fingerprint_hash: str = ""
    n_blocks: Optional[int] = None     # transformer blocks that must run (early exit)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    compute_dtype: str = ""            # float32 | bfloat16 | float16; "" when unknown (very old runs)

    def __post_init__(self) -> None:
        if not self.compute_dtype:
            self.compute_dtype = str((self.extract or {}).get("compute_dtype") or "")
        self.coef = np.asarray(self.coef, dtype=np.float32)
        self.intercept = np.asarray(self.intercept, dtype=np.float32).reshape(-1)
        self.scaler_mean = np.asarray(self.scaler_mean, dtype=np.float32).reshape(-1)
        self.scaler_scale = np.asarray(self.scaler_scale, dtype=np.float32).reshape(-1)
        for key in _INT_KEYS:
            setattr(self, key, np.asarray(getattr(self, key), dtype=np.int64).reshape(-1))
        self._check_shapes(where="ClassifierArtifact")

    # -- shape -----------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """Number of input features F."""
        return int(self.coef.shape[1])

    @property
    def n_out(self) -> int:
        """Decision columns: 1 for binary, K for multiclass."""
        return int(self.coef.shape[0])

    def required_layers(self) -> dict[str, list[int]]:
        """Layer entries per site that carry at least one feature (what extraction must compute)."""
        return {
            name: sorted(set(self.feature_layer[self.feature_site == code].tolist()))
            for code, name in enumerate(SITE_NAMES)
        }

    def _check_shapes(self, where: str) -> None:
        if self.coef.ndim != 2:
            raise ClassifierError(f"{where}: coef must be 2-d (n_out, F), got shape {self.coef.shape}: re-run `stcstore probe`")
        n_out, F = self.coef.shape
        k = len(self.classes)
        want_out = 1 if k == 2 else k
        if k < 2 or n_out != want_out:
            raise ClassifierError(
                f"{where}: coef has {n_out} rows for {k} classes (expected {want_out}): re-run `stcstore probe`"
            )
        if self.intercept.shape != (n_out,):
            raise ClassifierError(f"{where}: intercept shape {self.intercept.shape} != ({n_out},): re-run `stcstore probe`")
        for key in ("scaler_mean", "scaler_scale", *_INT_KEYS):
            if getattr(self, key).shape != (F,):
                raise ClassifierError(
                    f"{where}: {key} shape {getattr(self, key).shape} != ({F},): re-run `stcstore probe`"
                )
        if F and (self.feature_site.min() < 0 or self.feature_site.max() >= len(SITE_NAMES)):
            raise ClassifierError(f"{where}: feature_site must be 0 (hidden) or 1 (ffn): re-run `stcstore probe`")
        if F and (self.feature_layer.min() < 0 or self.feature_index.min() < 0):
            raise ClassifierError(f"{where}: negative feature_layer or feature_index: re-run `stcstore probe`")
        if F and not np.all(self.scaler_scale > 0):
            raise ClassifierError(f"{where}: scaler_scale must be positive: re-run `stcstore probe`")

    # -- applying --------------------------------------------------------------------------
    def gather(self, features: Mapping[tuple[str, int], np.ndarray]) -> np.ndarray:
        """Pick the F input features out of pooled activations.

        `features[(site, layer)]` is the (n, width) pooled activation (this artifact's `pool`)
        of layer entry `layer` of `site` ("hidden" or "ffn"); only `required_layers()` are read.
        Returns (n, F) float32, unscaled.
        """
        need = [(SITE_NAMES[s], int(l)) for s, l in sorted(set(zip(self.feature_site.tolist(), self.feature_layer.tolist())))]
        missing = [key for key in need if key not in features]
        if missing:
            shown = ", ".join(f"{s}[{l}]" for s, l in missing[:6])
            raise ClassifierError(f"features for {shown} are missing: pass every layer of required_layers()")
        # rows from any block given (an intercept-only classifier needs none but still has rows)
        first = next(iter(features.values()), None) if not need else features[need[0]]
        n = 0 if first is None else np.asarray(first).shape[0]
        out = np.empty((n, self.n_features), dtype=np.float32)
        for s_name, layer in need:
            block = np.asarray(features[(s_name, layer)])
            sel = np.flatnonzero((self.feature_site == SITE_NAMES.index(s_name)) & (self.feature_layer == layer))
            idx = self.feature_index[sel]
            if block.ndim != 2 or block.shape[0] != out.shape[0] or idx.max() >= block.shape[1]:
                raise ClassifierError(
                    f"features for {s_name}[{layer}] have shape {block.shape}, need ({out.shape[0]}, >{int(idx.max())}): "
                    f"pass pooled activations of the model this classifier was trained on"
                )
            out[:, sel] = block[:, idx]
        return out

    def decision_from_gathered(self, X: np.ndarray) -> np.ndarray:
        """Decision values (n, n_out) from gathered, unscaled features (n, F)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ClassifierError(f"expected features of shape (n, {self.n_features}), got {X.shape}")
        Z = (X - self.scaler_mean) / self.scaler_scale
        return Z @ self.coef.T + self.intercept

    def decision_from_features(self, features: Mapping[tuple[str, int], np.ndarray]) -> np.ndarray:
        """Decision values (n, n_out) from pooled activations keyed by (site, layer); see `gather`."""
        return self.decision_from_gathered(self.gather(features))

    def predict_indices(self, decision: np.ndarray) -> np.ndarray:
        """Class indices from decision values (binary: decision > 0 is class 1)."""
        decision = np.asarray(decision)
        if decision.shape[1] == 1:
            return (decision[:, 0] > 0).astype(np.int64)
        return decision.argmax(axis=1).astype(np.int64)

    def predict_from_features(self, features: Mapping[tuple[str, int], np.ndarray]) -> list[Any]:
        """Class values (as in `classes`) from pooled activations keyed by (site, layer)."""
        return [self.classes[i] for i in self.predict_indices(self.decision_from_features(features))]

    # -- files -----------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The JSON half of the artifact."""
        return {
            "format_version": self.format_version,
            "label": self.label,
            "classes": list(self.classes),
            "site": self.site,
            "pool": self.pool,
            "k": int(self.k),
            "eta": float(self.eta),
            "C": float(self.C),
            "layers": {s: [int(l) for l in self.layers.get(s, [])] for s in SITE_NAMES},
            "n_blocks": None if self.n_blocks is None else int(self.n_blocks),
            "n_features": self.n_features,
            "n_out": self.n_out,
            "model": self.model,
            "extract": self.extract,
            "compute_dtype": self.compute_dtype,
            "run": self.run,
            "fingerprint_hash": self.fingerprint_hash,
            "metrics": self.metrics,
        }

    def save(self, path: "str | Path | Location") -> "Path | Location":
        """Write the folder (replacing an existing one); files land together via a temp folder.

        In a bucket (a Location on object storage) each file is one PUT, the weights first.
        """
        from ..store.location import Location
        from ..tensorfile import save_tensors, tensor_bytes

        if isinstance(path, Location) and not path.is_local:
            tensors = {key: np.ascontiguousarray(getattr(self, key), dtype=np.float32) for key in _FLOAT_KEYS}
            tensors.update({key: np.ascontiguousarray(getattr(self, key), dtype=np.int64) for key in _INT_KEYS})
            (path / WEIGHTS_NAME).write_bytes(tensor_bytes(tensors, {"format_version": str(self.format_version)}))
            (path / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2, default=_json_default) + "\n")
            return path
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        tensors = {key: np.ascontiguousarray(getattr(self, key), dtype=np.float32) for key in _FLOAT_KEYS}
        tensors.update({key: np.ascontiguousarray(getattr(self, key), dtype=np.int64) for key in _INT_KEYS})
        save_tensors(tensors, tmp / WEIGHTS_NAME, metadata={"format_version": str(self.format_version)})
        (tmp / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2, default=_json_default) + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: "str | Path | Location") -> "ClassifierArtifact":
        """Read and validate a classifier folder (local, or a URL / Location in a bucket);
        raise ClassifierError naming the file and the fix."""
        from ..store.location import open_location

        path = open_location(path)
        fix = "pass the classifier/ folder written by `stcstore probe`"
        if not path.exists():
            raise ClassifierError(f"classifier folder {str(path)!r} does not exist: {fix}")
        if path.is_file():
            raise ClassifierError(f"classifier path {str(path)!r} is a file, not a folder: {fix}")
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ClassifierError(f"{str(p)!r} is missing: {fix} (re-run `stcstore probe` if it was deleted)")
        try:
            cfg = json.loads(cfg_path.read_text())
            if not isinstance(cfg, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ClassifierError(f"{str(cfg_path)!r} is not valid JSON ({exc}): re-run `stcstore probe` to rewrite it") from None
        version = cfg.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ClassifierError(
                f"{str(cfg_path)!r} has format_version {version!r}, this stcstore reads up to {FORMAT_VERSION}: upgrade stcstore"
            )
        from ..tensorfile import load_tensors

        try:
            t, _ = load_tensors(w_path.read_bytes())
        except Exception as exc:  # safetensors raises its own error types for torn files
            raise ClassifierError(f"{str(w_path)!r} is damaged ({exc}): re-run `stcstore probe` to rewrite it") from None
        missing = [k for k in (*_FLOAT_KEYS, *_INT_KEYS) if k not in t]
        if missing:
            raise ClassifierError(f"{str(w_path)!r} lacks {', '.join(missing)}: re-run `stcstore probe` to rewrite it")
        needed = ("label", "classes", "site", "pool", "k", "eta", "C", "layers")
        absent = [k for k in needed if k not in cfg]
        if absent:
            raise ClassifierError(f"{str(cfg_path)!r} lacks {', '.join(absent)}: re-run `stcstore probe` to rewrite it")
        try:
            art = cls(
                label=cfg["label"], classes=list(cfg["classes"]), site=cfg["site"], pool=cfg["pool"],
                k=int(cfg["k"]), eta=float(cfg["eta"]), C=float(cfg["C"]),
                layers={s: [int(l) for l in cfg["layers"].get(s, [])] for s in SITE_NAMES},
                coef=t["coef"], intercept=t["intercept"], scaler_mean=t["scaler_mean"],
                scaler_scale=t["scaler_scale"], feature_site=t["feature_site"],
                feature_layer=t["feature_layer"], feature_index=t["feature_index"],
                model=cfg.get("model") or {}, extract=cfg.get("extract") or {}, run=cfg.get("run", ""),
                fingerprint_hash=cfg.get("fingerprint_hash", ""), n_blocks=cfg.get("n_blocks"),
                metrics=cfg.get("metrics") or {}, format_version=version,
                compute_dtype=str(cfg.get("compute_dtype") or ""),
            )
        except ClassifierError as exc:
            raise ClassifierError(f"{str(w_path)!r} does not match {CONFIG_NAME}: {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ClassifierError(f"{str(cfg_path)!r} has a malformed entry ({exc}): re-run `stcstore probe`") from None
        if cfg.get("n_features") is not None and cfg["n_features"] != art.n_features:
            raise ClassifierError(
                f"{str(w_path)!r} has {art.n_features} features but {CONFIG_NAME} says {cfg['n_features']}: "
                f"re-run `stcstore probe` to rewrite the folder"
            )
        return art


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
