"""Applying a saved STC classifier to raw texts, with scikit-learn conventions and early exit.

`Predictor.load(dir)` loads the model the classifier records (refusing one whose weights
differ), and `predict` / `predict_proba` / `decision_function` / `transform` run the forward
only as far as the last layer entry the classifier reads: the remaining blocks never run.
Texts are tokenised exactly as `extract` did (the run's max_length, right truncation, right
padding) and computed in the precision the run's forward used (its recorded compute dtype,
whatever this device would choose for `auto`), unless another one is asked for (with a warning).

`pooled_features` (in `.features`) is the reusable part: pooled activations of chosen layers for
any texts, through the same hooks and batching as `extract`. Writing results is `.predictions`.
The scikit-learn estimator that fits one from texts (`STCClassifier`) lives in `.estimator` and
predicts through this class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import ClassifierError, ConfigError, ModelNotFoundError
from ..extract.capture import blocks_needed
from ..extract.device import DTYPE_NAMES, dtype_name, resolve_compute_dtype, resolve_device
from ..models import LoadedModel, ModelSource, load_model, resolve_model, weight_hash
from .artifact import SITE_NAMES, ClassifierArtifact
from .features import WINDOW, as_texts, check_strings, iter_pooled, pooled_features
# the I/O half lives in .predictions; these names stay importable from here
from .predictions import Predictions, check_out_path, load_inputs, predict_data, predict_texts, write_predictions

__all__ = [
    "Predictor",
    "Predictions",
    "pooled_features",
    "predict_texts",
    "predict_data",
    "write_predictions",
    "check_out_path",
    "load_inputs",
    "model_source_for",
    "resolve_predict_dtype",
    "softmax",
    "sigmoid",
]

log = logging.getLogger(__name__)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- resolving the classifier's model -------------------------------------------------------
def model_source_for(info: Mapping[str, Any], override: Optional[str] = None) -> list[ModelSource]:
    """Candidate sources of a classifier's model: `override`, else its spec, then its recorded path."""
    if override:
        return [resolve_model(override)]
    out: list[ModelSource] = []
    spec = info.get("spec")
    if spec:
        try:
            out.append(resolve_model(str(spec)))
        except ModelNotFoundError:
            pass
    path, gguf = info.get("path"), info.get("gguf_file")
    kind = info.get("kind")
    if path and kind != "hub":
        p = Path(str(path))
        target = p / gguf if gguf else p / "config.json"
        if target.is_file():
            src = ModelSource(spec=str(p / gguf) if gguf else str(p), kind="gguf" if gguf else "folder",
                              path=str(p), gguf_file=gguf)
            if all((s.path, s.gguf_file) != (src.path, src.gguf_file) for s in out):
                out.append(src)
    if not out:
        raise ClassifierError(
            f"the classifier's model {spec!r} cannot be found (not at {path!r} either): "
            f"pass --model with the model it was trained on"
        )
    return out


def _pick_source(candidates: list[ModelSource], info: Mapping[str, Any], where: str) -> ModelSource:
    """The first local candidate whose weights hash to the classifier's (hub ids are checked after loading)."""
    want = info.get("weight_hash")
    seen = []
    for src in candidates:
        if src.kind == "hub" or not want:
            return src
        got = weight_hash(src)
        if got == want:
            return src
        seen.append((src, got))
    src, got = seen[0]
    raise ClassifierError(_hash_message(where, info, src.spec, got))


def _hash_message(where: str, info: Mapping[str, Any], spec: str, got: str) -> str:
    return (
        f"classifier {where!r} was trained on model {info.get('spec')!r} (weight hash {info.get('weight_hash')}), "
        f"but {spec!r} has weight hash {got}: pass --model with the model it was trained on, "
        f"or extract and probe again with this model"
    )


def resolve_predict_dtype(art: ClassifierArtifact, requested: Optional[str], device: torch.device) -> torch.dtype:
    """The forward's dtype for predict/explain: the one recorded at extract time, unless `requested`.

    A classifier is fitted to features of one precision; recomputing them in another moves every
    feature a little (bf16 keeps 8 mantissa bits), so a different dtype is used only when asked,
    with a warning. Classifiers that record none (written before this was kept) follow the run's
    `--dtype` rule on this device, as they always did.
    """
    recorded = art.compute_dtype
    if recorded and recorded not in DTYPE_NAMES.values():
        raise ClassifierError(
            f"the classifier records compute dtype {recorded!r}, not one of {', '.join(DTYPE_NAMES.values())}: "
            f"re-run `stcstore probe`"
        )
    if requested is None:
        if recorded:
            return resolve_compute_dtype(recorded, device)
        return resolve_compute_dtype((art.extract or {}).get("dtype") or "auto", device)
    got = resolve_compute_dtype(requested, device)
    if recorded and dtype_name(got) != recorded:
        log.warning(
            "computing features in %s but the classifier was trained on features extracted in %s: predictions may "
            "differ slightly (omit --dtype to use %s)", dtype_name(got), recorded, recorded,
        )
    return got


# -- the classifier -------------------------------------------------------------------------
class Predictor:
    """A saved STC classifier bound to its model, applied to raw texts (scikit-learn conventions).

    Attributes (fitted-estimator style):
      classes_      np.ndarray of class labels, in the order of predict_proba's columns
      layers_       {"hidden": [...], "ffn": [...]}: layer entries whose activations are computed
      blocks_run_   transformer blocks that run per forward (some only partly); the rest never run
      n_layers_     blocks of the model
      pool_, site_  pooling and site choice of the classifier
      n_features_   neurons the classifier reads
      artifact_     the ClassifierArtifact;  model_info_: the loaded model's description
    """

    def __init__(
        self,
        artifact: ClassifierArtifact,
        loaded: LoadedModel,
        *,
        device: torch.device,
        compute_dtype: torch.dtype,
        max_length: int,
        batch_size: int = 32,
        progress: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.artifact_ = artifact
        self.loaded_ = loaded
        self.device_ = device
        self.compute_dtype_ = compute_dtype
        self.max_length_ = int(max_length)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.classes_ = np.asarray(artifact.classes)
        self.pool_ = artifact.pool
        self.site_ = artifact.site
        self.n_features_ = artifact.n_features
        self.model_info_ = dict(loaded.info)
        self.n_layers_ = loaded.n_layers
        req = artifact.required_layers()
        self.layers_: dict[str, list[int]] = {s: list(req.get(s, [])) for s in SITE_NAMES}
        self.blocks_run_ = blocks_needed(self.layers_) if any(self.layers_.values()) else 0
        self._check_fits_model()
        # per (site, layer): the artifact's columns it fills and the neurons it reads
        self._select: list[tuple[str, int, np.ndarray, np.ndarray]] = []
        for site in SITE_NAMES:
            for pos, layer in enumerate(self.layers_[site]):
                code = SITE_NAMES.index(site)
                cols = np.flatnonzero((artifact.feature_site == code) & (artifact.feature_layer == layer))
                self._select.append((site, pos, cols, artifact.feature_index[cols]))

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        *,
        model: Optional[str] = None,
        batch_size: int = 32,
        dtype: Optional[str] = None,
        trust_remote_code: bool = False,
        progress: bool = False,
    ) -> "Predictor":
        """Load a classifier folder and its model (see `from_artifact`)."""
        return cls.from_artifact(ClassifierArtifact.load(path), device, where=str(path), model=model,
                                 batch_size=batch_size, dtype=dtype, trust_remote_code=trust_remote_code,
                                 progress=progress)

    @classmethod
    def from_artifact(
        cls,
        art: ClassifierArtifact,
        device: str = "auto",
        *,
        where: str = "<in memory>",
        model: Optional[str] = None,
        batch_size: int = 32,
        dtype: Optional[str] = None,
        trust_remote_code: bool = False,
        progress: bool = False,
    ) -> "Predictor":
        """Bind a classifier artifact to its model (`where` names it in errors).

        The model comes from `model` if given, else the classifier's recorded spec, else its
        recorded path; its weight hash must equal the classifier's (ClassifierError otherwise).
        `dtype` (auto, float32, bfloat16, float16) overrides the compute dtype; default: the one the
        run's forward used at extract time (`resolve_predict_dtype`).
        """
        info = art.model or {}
        if not info:
            raise ClassifierError(f"classifier {where!r} does not record its model: re-run `stcstore probe`")
        dev = resolve_device(device)
        compute_dtype = resolve_predict_dtype(art, dtype, dev)
        source = _pick_source(model_source_for(info, model), info, where)
        revision = info.get("revision") if source.kind == "hub" else None
        loaded = load_model(source, device=dev, weights_dtype=compute_dtype, trust_remote_code=trust_remote_code,
                            revision=revision)
        got = loaded.info.get("weight_hash")
        if info.get("weight_hash") and got != info["weight_hash"]:
            raise ClassifierError(_hash_message(where, info, source.spec, str(got)))
        if info.get("tokenizer_hash") and loaded.info.get("tokenizer_hash") != info["tokenizer_hash"]:
            log.warning("the tokenizer of %s differs from the one the classifier was trained with", source.spec)
        max_length = (art.extract or {}).get("max_length") or min(int(loaded.info["max_positions"]), 512)
        return cls(art, loaded, device=dev, compute_dtype=compute_dtype, max_length=int(max_length),
                   batch_size=batch_size, progress=progress)

    def _check_fits_model(self) -> None:
        n = self.n_layers_
        limits = {"hidden": n + 1, "ffn": n}
        widths = {"hidden": int(self.loaded_.info["d"]), "ffn": int(self.loaded_.info["d_ff"])}
        art = self.artifact_
        for code, site in enumerate(SITE_NAMES):
            sel = art.feature_site == code
            if not sel.any():
                continue
            if int(art.feature_layer[sel].max()) >= limits[site]:
                raise ClassifierError(
                    f"the classifier reads {site} layer {int(art.feature_layer[sel].max())} but the model has "
                    f"{limits[site]} {site} entries: pass the model it was trained on"
                )
            if int(art.feature_index[sel].max()) >= widths[site]:
                raise ClassifierError(
                    f"the classifier reads {site} neuron {int(art.feature_index[sel].max())} but the model's {site} "
                    f"width is {widths[site]}: pass the model it was trained on"
                )

    # -- features --------------------------------------------------------------------------
    def pooled_features(self, texts: Sequence[str] | str, pools: Optional[Sequence[str]] = None,
                        layers: Optional[Mapping[str, Sequence[int]]] = None) -> dict[tuple[str, str], np.ndarray]:
        """Pooled activations of the classifier's layers (or `layers`) for texts; see `pooled_features`."""
        return pooled_features(
            self.loaded_, texts, layers=layers or self.layers_, pools=pools or (self.pool_,),
            max_length=self.max_length_, batch_size=self.batch_size, device=self.device_,
            compute_dtype=self.compute_dtype_, progress=self.progress,
        )

    def transform(self, texts: Sequence[str] | str) -> np.ndarray:
        """The classifier's input features (n, n_features_), pooled and unscaled, in artifact column order."""
        return self._gathered(as_texts(texts))

    def _gathered(self, texts: Sequence[str], desc: str = "predict") -> np.ndarray:
        parts = [X for _start, X in self._iter_gathered(texts, desc)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_features_), np.float32)

    def _iter_gathered(self, texts: Sequence[str], desc: str) -> Iterable[tuple[int, np.ndarray]]:
        """(window start, its (rows, n_features_) unscaled features), a window of rows at a time."""
        n = len(texts)
        if not self._select:  # an intercept-only classifier reads nothing: no forward at all
            for start in range(0, n, WINDOW):
                chunk = check_strings(texts[start:start + WINDOW], start)
                yield start, np.zeros((len(chunk), 0), np.float32)
            return
        X, cur = None, -1
        for start, stop, values in iter_pooled(
            self.loaded_, texts, {s: ls for s, ls in self.layers_.items() if ls}, (self.pool_,),
            self.max_length_, self.batch_size, self.device_, self.compute_dtype_, self.progress, desc,
        ):
            if start != cur:
                if X is not None:
                    yield cur, X
                X, cur = np.empty((stop - start, self.n_features_), dtype=np.float32), start
            for site, pos, cols, neurons in self._select:
                idx, arr = values[(site, self.pool_)]
                X[np.ix_(idx, cols)] = arr[pos][:, neurons]
        if X is not None:
            yield cur, X

    # -- scikit-learn API ------------------------------------------------------------------
    def decision_raw(self, texts: Sequence[str] | str) -> np.ndarray:
        """Decision values (n, n_out): n_out = 1 for binary (logit of classes_[1]), K for multiclass."""
        return self._decide_sequence(as_texts(texts))

    def _decide_sequence(self, texts: Sequence[str], desc: str = "predict") -> np.ndarray:
        # decisions a window at a time: the (rows, features) matrix of a whole file never exists
        parts = [self.artifact_.decision_from_gathered(X) for _start, X in self._iter_gathered(texts, desc)]
        return np.concatenate(parts) if parts else np.zeros((0, self.artifact_.n_out), np.float32)

    def decision_function(self, texts: Sequence[str] | str) -> np.ndarray:
        """Binary: (n,) logits of classes_[1]; multiclass: (n, K) scores (sklearn convention)."""
        d = self.decision_raw(texts)
        return d[:, 0] if d.shape[1] == 1 else d

    def proba_from_decision(self, decision: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities from decision_raw values: sigmoid (binary), softmax (multiclass)."""
        decision = np.asarray(decision)
        if decision.ndim == 1:
            decision = decision[:, None]
        if decision.shape[1] == 1:
            p = sigmoid(decision[:, 0])
            return np.stack([1.0 - p, p], axis=1)
        return softmax(decision)

    def labels_from_decision(self, decision: np.ndarray) -> np.ndarray:
        """Class labels from decision_raw values (binary: logit > 0 is classes_[1])."""
        decision = np.asarray(decision)
        if decision.ndim == 1:
            decision = decision[:, None]
        return self.classes_[self.artifact_.predict_indices(decision)]

    def predict_proba(self, texts: Sequence[str] | str) -> np.ndarray:
        """(n, n_classes) class probabilities, columns in classes_ order."""
        return self.proba_from_decision(self.decision_raw(texts))

    def predict(self, texts: Sequence[str] | str) -> np.ndarray:
        """(n,) class labels (values of classes_)."""
        return self.labels_from_decision(self.decision_raw(texts))

    def __repr__(self) -> str:
        return (f"Predictor(model={self.model_info_.get('spec')!r}, site={self.site_!r}, pool={self.pool_!r}, "
                f"classes={self.classes_.tolist()!r}, n_features={self.n_features_}, "
                f"blocks_run={self.blocks_run_}/{self.n_layers_})")
