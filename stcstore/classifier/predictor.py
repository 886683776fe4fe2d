"""Applying a saved STC classifier to raw texts, with scikit-learn conventions and early exit.

`STCClassifier.load(dir)` loads the model the classifier records (refusing one whose weights
differ), and `predict` / `predict_proba` / `decision_function` / `transform` run the forward
only as far as the last layer entry the classifier reads: the remaining blocks never run.
Texts are tokenised exactly as `extract` did (the run's max_length, right truncation, right
padding) and computed in the same precision rules (float32 on CPU, the run's dtype choice on CUDA).

`pooled_features` is the reusable part: pooled activations of chosen layers for any texts,
through the same hooks and batching as `extract`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import ClassifierError, ConfigError, ModelNotFoundError
from ..extract.batching import iter_batches, tokenize_window
from ..extract.capture import ActivationCapture, blocks_needed
from ..extract.device import autocast, resolve_compute_dtype, resolve_device
from ..models import LoadedModel, ModelSource, load_model, resolve_model, weight_hash
from .artifact import SITE_NAMES, ClassifierArtifact

__all__ = [
    "STCClassifier",
    "Predictions",
    "pooled_features",
    "predict_texts",
    "predict_data",
    "write_predictions",
    "check_out_path",
    "load_inputs",
    "model_source_for",
    "softmax",
    "sigmoid",
]

log = logging.getLogger(__name__)

# rows tokenised at once; batches are length-sorted inside such a window, like extract does
_WINDOW = 1024


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


def _as_texts(texts: Any) -> Sequence[str]:
    """A single string is one text (never its characters); anything else must hold strings."""
    if isinstance(texts, str):
        return [texts]
    if hasattr(texts, "tolist") and not isinstance(texts, (list, tuple)):
        texts = texts.tolist()
    if not hasattr(texts, "__len__") or not hasattr(texts, "__getitem__"):
        texts = list(texts)
    return texts


def _check_strings(texts: Sequence[Any], start: int) -> list[str]:
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ConfigError(f"input {start + i} is {type(t).__name__}, not a string: pass texts as strings")
    return out


# -- pooled features ------------------------------------------------------------------------
def pooled_features(
    loaded: LoadedModel,
    texts: Sequence[str] | str,
    *,
    layers: Mapping[str, Sequence[int]],
    pools: Sequence[str] = ("mean",),
    max_length: int = 512,
    batch_size: int = 32,
    device: Optional[torch.device | str] = None,
    compute_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    desc: str = "features",
) -> dict[tuple[str, str], np.ndarray]:
    """Pooled activations of texts: {(site, pool): (n_layers_given, n, width) float32}, rows in input order.

    `layers` names the layer entries per site (hidden l = HF hidden_states[l], ffn l = input of
    block l's MLP output projection); the forward stops after the last of them. Tokenisation,
    batching and pooling are extract's own (`tokenize_window`, `iter_batches`, `ActivationCapture`),
    so the numbers equal what `extract` would store (before its float16 cast).
    """
    texts = _as_texts(texts)
    layers = {s: sorted(int(l) for l in ls) for s, ls in layers.items() if ls}
    if not layers:
        raise ConfigError("no layers given: name at least one layer entry of hidden or ffn")
    dev = torch.device(device) if device is not None else next(loaded.model.parameters()).device
    dtype = compute_dtype or torch.float32
    widths = {"hidden": int(loaded.info["d"]), "ffn": int(loaded.info["d_ff"])}
    n = len(texts)
    out = {(s, p): np.empty((len(ls), n, widths[s]), dtype=np.float32) for s, ls in layers.items() for p in pools}
    for start, stop, values in _iter_pooled(loaded, texts, layers, tuple(pools), max_length, batch_size, dev, dtype,
                                            progress, desc):
        for key, (idx, t) in values.items():
            out[key][:, start + idx, :] = t
    return out


def _iter_pooled(loaded, texts, layers, pools, max_length, batch_size, device, dtype, progress, desc):
    """Yield (window start, stop, {(site, pool): (row positions in window, (n_layers, B, width) array)}) per batch."""
    from tqdm.auto import tqdm

    n = len(texts)
    pad_id = loaded.tokenizer.pad_token_id
    bar = tqdm(total=n, unit="row", disable=not progress or n == 0, file=sys.stderr, desc=desc, dynamic_ncols=True)
    try:
        with ActivationCapture(loaded, tuple(layers), pools, layers=layers) as cap, autocast(device, dtype):
            for start in range(0, n, _WINDOW):
                stop = min(n, start + _WINDOW)
                chunk = _check_strings(texts[start:stop], start)
                tw = tokenize_window(loaded.tokenizer, chunk, max_length, "input", start)
                for idx, batch in iter_batches(tw, batch_size, pad_id, device):
                    values = cap.run(batch)
                    yield start, stop, {k: (idx, v.cpu().numpy()) for k, v in values.items()}
                    bar.update(len(idx))
    finally:
        bar.close()


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


# -- the classifier -------------------------------------------------------------------------
class STCClassifier:
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
    ) -> "STCClassifier":
        """Load a classifier folder and its model.

        The model comes from `model` if given, else the classifier's recorded spec, else its
        recorded path; its weight hash must equal the classifier's (ClassifierError otherwise).
        `dtype` overrides the compute dtype (default: the run's `--dtype` rule on this device).
        """
        art = ClassifierArtifact.load(path)
        info = art.model or {}
        if not info:
            raise ClassifierError(f"classifier {str(path)!r} does not record its model: re-run `stcstore probe`")
        dev = resolve_device(device)
        choice = dtype or (art.extract or {}).get("dtype") or "auto"
        if choice not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"unknown dtype {choice!r}: choose from auto, float32, bfloat16, float16")
        compute_dtype = resolve_compute_dtype(choice, dev)
        source = _pick_source(model_source_for(info, model), info, str(path))
        revision = info.get("revision") if source.kind == "hub" else None
        loaded = load_model(source, device=dev, weights_dtype=compute_dtype, trust_remote_code=trust_remote_code,
                            revision=revision)
        got = loaded.info.get("weight_hash")
        if info.get("weight_hash") and got != info["weight_hash"]:
            raise ClassifierError(_hash_message(str(path), info, source.spec, str(got)))
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
        return self._gathered(_as_texts(texts))

    def _gathered(self, texts: Sequence[str], desc: str = "predict") -> np.ndarray:
        parts = [X for _start, X in self._iter_gathered(texts, desc)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_features_), np.float32)

    def _iter_gathered(self, texts: Sequence[str], desc: str) -> Iterable[tuple[int, np.ndarray]]:
        """(window start, its (rows, n_features_) unscaled features), a window of rows at a time."""
        n = len(texts)
        if not self._select:  # an intercept-only classifier reads nothing: no forward at all
            for start in range(0, n, _WINDOW):
                chunk = _check_strings(texts[start:start + _WINDOW], start)
                yield start, np.zeros((len(chunk), 0), np.float32)
            return
        X, cur = None, -1
        for start, stop, values in _iter_pooled(
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
        return self._decide_sequence(_as_texts(texts))

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
        return (f"STCClassifier(model={self.model_info_.get('spec')!r}, site={self.site_!r}, pool={self.pool_!r}, "
                f"classes={self.classes_.tolist()!r}, n_features={self.n_features_}, "
                f"blocks_run={self.blocks_run_}/{self.n_layers_})")


# -- predicting whole inputs (what `stcstore predict` calls) ----------------------------------
class _SplitTexts:
    """The texts of a source split as a lazily read sequence (only slices are read)."""

    def __init__(self, split: Any):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: slice) -> list[str]:
        start, stop, _ = item.indices(len(self.split))
        return self.split.texts(start, stop)


@dataclass
class Predictions:
    """Labels, decision values and probabilities of many rows, with where each row came from."""

    classes: list[Any]
    labels: list[Any]                      # (n,) class values (plain Python types)
    decision: np.ndarray                   # (n, n_out): binary n_out = 1 (logit of classes[1])
    proba: np.ndarray                      # (n, n_classes), columns in `classes` order
    texts: Optional[list[str]] = None      # the inputs, when they were given as texts
    split: Optional[list[str]] = None      # per row: the source split (for --data)
    row: Optional[np.ndarray] = None       # per row: its position in its split (for --data)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    def records(self, proba: bool = True, decision: bool = False) -> Iterable[dict[str, Any]]:
        """One dict per row: [split, row | text], label, proba (list in `classes` order), decision."""
        for i, label in enumerate(self.labels):
            rec: dict[str, Any] = {}
            if self.split is not None:
                rec["split"] = self.split[i]
                rec["row"] = int(self.row[i])
            if self.texts is not None:
                rec["text"] = self.texts[i]
            rec["label"] = label
            if proba:
                rec["proba"] = [float(p) for p in self.proba[i]]
            if decision:
                d = self.decision[i]
                rec["decision"] = float(d[0]) if d.shape[0] == 1 else [float(v) for v in d]
            yield rec

    def to_json(self, proba: bool = True) -> dict[str, Any]:
        """The `--json` document: {"classes", "n", "predictions": [{..., "label", "proba", "decision"}]}."""
        return {"classes": list(self.classes), "n": len(self),
                "predictions": list(self.records(proba=proba, decision=True))}

    def to_frame(self, proba: bool = True):
        """A pandas DataFrame: [split, row | text], label, then proba_<class> columns with `proba`."""
        import pandas as pd

        cols: dict[str, Any] = {}
        if self.split is not None:
            cols["split"] = self.split
            cols["row"] = np.asarray(self.row, dtype=np.int64)
        if self.texts is not None:
            cols["text"] = self.texts
        cols["label"] = self.labels
        if proba:
            for j, c in enumerate(self.classes):
                cols[f"proba_{c}"] = self.proba[:, j]
        return pd.DataFrame(cols)


OUT_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def check_out_path(path: str | Path) -> Path:
    """Refuse an output path whose extension is not a known format, or that is a folder (before any work)."""
    path = Path(path).expanduser()
    ext = path.suffix.lower()
    if ext not in OUT_FORMATS:
        raise ConfigError(f"--out {str(path)!r}: unknown extension {ext or '(none)'!r}, use one of {', '.join(OUT_FORMATS)}")
    if path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a folder: give a file path ending in {', '.join(OUT_FORMATS)}")
    return path


def write_predictions(preds: Predictions, path: str | Path, proba: bool = False) -> Path:
    """Write predictions by extension: .csv/.tsv/.parquet (a table), .jsonl (one object a row), .json (one document)."""
    import json

    path = check_out_path(path)
    ext = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext in (".csv", ".tsv"):
            preds.to_frame(proba).to_csv(tmp, index=False, sep="," if ext == ".csv" else "\t")
        elif ext == ".parquet":
            preds.to_frame(proba).to_parquet(tmp, index=False)
        elif ext == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for rec in preds.records(proba=proba):
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            tmp.write_text(json.dumps(preds.to_json(proba=proba), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write --out {str(path)!r} ({exc}): give a writable file path") from None
    return path


def _plain(values: np.ndarray) -> list[Any]:
    return np.asarray(values).tolist()


def predict_texts(clf: STCClassifier, texts: Sequence[str] | str) -> Predictions:
    """Predict texts given directly (kept in the result)."""
    t0 = time.perf_counter()
    texts = list(_as_texts(texts))
    dec = clf.decision_raw(texts)
    return Predictions(classes=_plain(clf.classes_), labels=_plain(clf.labels_from_decision(dec)), decision=dec,
                       proba=clf.proba_from_decision(dec), texts=texts, seconds=time.perf_counter() - t0)


def load_inputs(data: str, text_column: str = "text", splits: Optional[Sequence[str]] = None) -> Any:
    """The texts of a csv / jsonl / parquet file, folder, dataset alias or hub id (a `Source`, no other columns)."""
    from ..data import load_source

    return load_source(data, text_column=text_column, columns=(), splits=splits)


def predict_data(clf: STCClassifier, data: Any, text_column: str = "text",
                 splits: Optional[Sequence[str]] = None) -> Predictions:
    """Predict every row of every split (in order) of a csv / jsonl / parquet file, folder, alias or hub id
    (or of a `Source` from `load_inputs`)."""
    t0 = time.perf_counter()
    source = load_inputs(data, text_column, splits) if isinstance(data, str) else data
    decs, split_names, rows = [], [], []
    for name, split in source.splits.items():
        decs.append(clf._decide_sequence(_SplitTexts(split), desc=f"predict {name}"))
        split_names += [name] * len(split)
        rows.append(np.arange(len(split), dtype=np.int64))
    dec = np.concatenate(decs) if decs else np.zeros((0, clf.artifact_.n_out), np.float32)
    return Predictions(classes=_plain(clf.classes_), labels=_plain(clf.labels_from_decision(dec)), decision=dec,
                       proba=clf.proba_from_decision(dec), split=split_names, row=np.concatenate(rows),
                       seconds=time.perf_counter() - t0)
