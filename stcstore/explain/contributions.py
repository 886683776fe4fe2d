"""Per-token contributions to an STC classifier's decision, exact by construction.

Let feature f be neuron i of layer entry l (site hidden or ffn), pooled over the text's T tokens
into x_f; the classifier's decision for output column k is

    z_k = b_k + sum_f W_kf (x_f - m_f) / s_f           (m, s: the scaler's mean and scale)
        = [b_k - sum_f W_kf m_f / s_f]  +  sum_f (W_kf / s_f) x_f
        =          intercept_k          +  sum_t c_tk

The bracket does not depend on the text: it is reported as `intercept` (the scaler's mean
term lives there). The second sum is split over tokens according to the pooling:

- mean:  x_f = (1/T) sum_t a_tf, so token t gets c_tk = sum_f (W_kf / s_f) a_tf / T;
- max:   x_f = a_{t*(f), f}: neuron f's whole term (W_kf / s_f) x_f goes to its argmax token t*(f)
         (the first one on ties, as torch.amax's gradient would not decide);
- first / last: x_f is the first / last real token's activation: every term goes to that token.

So `intercept + sum(contributions) == logit` holds exactly (in float64), whatever the pooling.

With `centered=True` every activation is taken relative to the scaler's mean instead
(a_tf - m_f in place of a_tf, so x_f - m_f in place of x_f): the intercept is then the
classifier's own b_k and a token's contribution says how far it moves the score away from that
of an average training text. Both decompositions are exact; the default follows the formula above.
Binary classifiers have one output column (the logit of classes[1]: positive contributions push
towards classes[1]); multiclass ones have one column per class (softmax scores).

Activations are captured per token by extraction's own hooks (`extract.capture.LayerHooks`: the
input of block l for hidden l, the final norm's output for hidden L, the input of the MLP output
projection for ffn l), in the classifier's compute dtype under autocast as at extract time; the
forward stops after the last needed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..classifier.artifact import SITE_NAMES
from ..errors import ConfigError
from ..extract.batching import iter_batches, tokenize_window
from ..extract.capture import LayerHooks
from ..extract.device import autocast
from ..models.loading import LoadedModel

__all__ = ["Explanation", "TokenActivations", "token_activations", "decompose", "explain_text"]


class TokenActivations:
    """Context manager: keeps every token's activation of chosen layers (batch of one), through
    the same hooks as extraction (`LayerHooks`); the forward stops after the last needed one."""

    def __init__(self, loaded: LoadedModel, layers: Mapping[str, Sequence[int]]):
        self.loaded = loaded
        self.layers = {s: sorted(int(l) for l in ls) for s, ls in layers.items() if ls}
        if not self.layers:
            raise ConfigError("no layers to capture")
        self._out: dict[tuple[str, int], torch.Tensor] = {}
        self.hooks = LayerHooks(loaded, self.layers, self._keep)

    def _keep(self, site: str, layer: int, x: torch.Tensor) -> None:
        self._out[(site, layer)] = x[0].detach().to(torch.float64).cpu()

    def __enter__(self) -> "TokenActivations":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    @torch.inference_mode()
    def run(self, batch: Mapping[str, torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
        """Forward one text; return {(site, layer): (T, width) float64} on the CPU."""
        if batch["input_ids"].shape[0] != 1:
            raise ValueError("TokenActivations.run takes a batch of one text")
        self._out = {}
        self.hooks.forward(batch)
        missing = [(s, l) for s, ls in self.layers.items() for l in ls if (s, l) not in self._out]
        if missing:
            raise RuntimeError(f"hooks did not fire for {missing[:3]}: the architecture table entry is wrong")
        out, self._out = self._out, {}
        return out


def token_activations(clf: Any, text: str) -> tuple[list[int], dict[tuple[str, int], torch.Tensor]]:
    """Token ids of a text (tokenised as extract does) and the per-token activations of the classifier's layers."""
    loaded: LoadedModel = clf.loaded_
    layers = {s: ls for s, ls in clf.layers_.items() if ls}
    from ..classifier.features import check_strings

    tw = tokenize_window(loaded.tokenizer, check_strings([text], 0), clf.max_length_, "input", 0)
    ids = list(tw.input_ids[0])
    if not layers:
        return ids, {}
    _, batch = next(iter_batches(tw, 1, loaded.tokenizer.pad_token_id, clf.device_))
    with TokenActivations(loaded, layers) as cap, autocast(clf.device_, clf.compute_dtype_):
        acts = cap.run(batch)
    return ids, acts


def decompose(artifact: Any, acts: Mapping[tuple[str, int], torch.Tensor], n_tokens: int,
              centered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(contributions (T, n_out), intercept (n_out,)) in float64; see the module docstring."""
    coef = artifact.coef.astype(np.float64)
    mean = artifact.scaler_mean.astype(np.float64)
    scale = artifact.scaler_scale.astype(np.float64)
    w = coef / scale                                     # (n_out, F): weight per raw activation
    intercept = artifact.intercept.astype(np.float64)
    if not centered:
        intercept = intercept - w @ mean
    contrib = np.zeros((n_tokens, artifact.n_out), dtype=np.float64)
    pool = artifact.pool
    for code, site in enumerate(SITE_NAMES):
        for layer in sorted(set(artifact.feature_layer[artifact.feature_site == code].tolist())):
            cols = np.flatnonzero((artifact.feature_site == code) & (artifact.feature_layer == layer))
            A = acts[(site, int(layer))].numpy()[:, artifact.feature_index[cols]]   # (T, F_l)
            if centered:
                A = A - mean[cols]
            if A.shape[0] != n_tokens:
                raise RuntimeError(f"{site}[{layer}] has {A.shape[0]} tokens, expected {n_tokens}")
            wl = w[:, cols]                                                      # (n_out, F_l)
            if pool == "mean":
                contrib += (A @ wl.T) / n_tokens
            elif pool == "max":
                top = A.argmax(axis=0)                                           # (F_l,)
                terms = A[top, np.arange(len(cols))][:, None] * wl.T             # (F_l, n_out)
                np.add.at(contrib, top, terms)
            elif pool == "first":
                contrib[0] += A[0] @ wl.T
            elif pool == "last":
                contrib[n_tokens - 1] += A[n_tokens - 1] @ wl.T
            else:
                raise ConfigError(f"the classifier's pooling {pool!r} is unknown: re-run `stcstore probe`")
    return contrib, intercept


@dataclass
class Explanation:
    """Per-token contributions to one text's decision; `intercept + contributions.sum(0) == logit`."""

    text: str
    tokens: list[str]
    token_ids: list[int]
    offsets: Optional[list[tuple[int, int]]]   # character span of each token in `text` (None: slow tokenizer)
    special: list[bool]                        # special tokens ([CLS], <s>, ...)
    classes: list[Any]
    label: Any
    pool: str
    site: str
    logit: np.ndarray                          # (n_out,) float64
    intercept: np.ndarray                      # (n_out,)
    contributions: np.ndarray                  # (T, n_out)
    proba: np.ndarray                          # (n_classes,)
    truncated: bool = False
    centered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def binary(self) -> bool:
        return self.contributions.shape[1] == 1

    def _class_index(self, want: Any) -> int:
        for j, c in enumerate(self.classes):
            if c == want or str(c) == str(want):
                return j
        raise ConfigError(f"class {want!r} is not one of {', '.join(map(str, self.classes))}: pass --class with one of them")

    def view(self, target: Any = None) -> tuple[str, float, float, np.ndarray]:
        """(class name, score, intercept, per-token contributions) towards `target` (default: the predicted label).

        Multiclass: that class's column. Binary: the logit is the score of classes[1]; the score of
        classes[0] is its negative (sklearn's convention), so contributions and intercept flip sign.
        Either way intercept + contributions.sum() == score.
        """
        j = self._class_index(self.label if target is None else target)
        if self.binary:
            sign = 1.0 if j == 1 else -1.0
            return str(self.classes[j]), sign * float(self.logit[0]), sign * float(self.intercept[0]), \
                sign * self.contributions[:, 0]
        return str(self.classes[j]), float(self.logit[j]), float(self.intercept[j]), self.contributions[:, j]

    def to_json(self) -> dict[str, Any]:
        """Binary: {"text", "label", "logit", "intercept", "tokens": [{"token", "contribution", "start", "end", "special"}],
        "classes", "proba", "pool", "site"} with scalar logit / intercept / contribution (towards classes[1]).
        Multiclass: the same keys, but logit, intercept and each token's contribution are lists in `classes` order."""
        def val(v: np.ndarray) -> Any:
            return float(v[0]) if self.binary else [float(x) for x in v]

        toks = []
        for i, tok in enumerate(self.tokens):
            entry: dict[str, Any] = {"token": tok, "contribution": val(self.contributions[i])}
            if self.offsets is not None:
                entry["start"], entry["end"] = int(self.offsets[i][0]), int(self.offsets[i][1])
            entry["special"] = bool(self.special[i])
            toks.append(entry)
        return {
            "text": self.text, "label": self.label, "logit": val(self.logit), "intercept": val(self.intercept),
            "tokens": toks, "classes": list(self.classes), "proba": [float(p) for p in self.proba],
            "pool": self.pool, "site": self.site, "centered": self.centered, "truncated": self.truncated,
        }


def _offsets(tokenizer: Any, text: str, max_length: int, ids: list[int]) -> Optional[list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        enc = tokenizer([text], truncation=True, max_length=max_length, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(enc["input_ids"][0]) != ids:
        return None
    return [tuple(o) for o in enc["offset_mapping"][0]]


def explain_text(clf: Any, text: str, centered: bool = False) -> Explanation:
    """Explain one text with a `Predictor`: per-token contributions, intercept and logit.

    `centered`: contributions of activations relative to the training mean (intercept = the
    classifier's own); default: of the raw activations (the scaler's mean term in the intercept).
    """
    if not isinstance(text, str):
        raise ConfigError(f"explain takes one text string, got {type(text).__name__}")
    art = clf.artifact_
    tok = clf.loaded_.tokenizer
    ids, acts = token_activations(clf, text)
    T = len(ids)
    contrib, intercept = decompose(art, acts, T, centered=centered)
    logit = intercept + contrib.sum(axis=0)
    proba = clf.proba_from_decision(logit[None, :])[0]
    label = clf.labels_from_decision(logit[None, :]).tolist()[0]
    special_ids = set(getattr(tok, "all_special_ids", []) or [])
    truncated = False
    if T >= clf.max_length_:
        truncated = len(tok([text], truncation=False)["input_ids"][0]) > T
    return Explanation(
        text=text, tokens=list(tok.convert_ids_to_tokens(ids)), token_ids=ids,
        offsets=_offsets(tok, text, clf.max_length_, ids), special=[i in special_ids for i in ids],
        classes=np.asarray(clf.classes_).tolist(), label=label, pool=art.pool, site=art.site,
        logit=logit, intercept=intercept, contributions=contrib, proba=proba, truncated=truncated,
        centered=centered,
    )
