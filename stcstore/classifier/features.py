"""Pooled features of raw texts through extract's own tokenisation, batching and hooks."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..extract.batching import iter_batches, tokenize_window
from ..extract.capture import ActivationCapture
from ..extract.device import autocast
from ..models import LoadedModel

__all__ = ["WINDOW", "as_texts", "check_strings", "pooled_features", "iter_pooled"]

# rows tokenised at once; batches are length-sorted inside such a window, like extract does
WINDOW = 1024


def as_texts(texts: Any) -> Sequence[str]:
    """A single string is one text (never its characters); anything else must hold strings."""
    if isinstance(texts, str):
        return [texts]
    if hasattr(texts, "tolist") and not isinstance(texts, (list, tuple)):
        texts = texts.tolist()
    if not hasattr(texts, "__len__") or not hasattr(texts, "__getitem__"):
        texts = list(texts)
    return texts


def check_strings(texts: Sequence[Any], start: int) -> list[str]:
    """The texts as a list, refusing any that is not a string (numbered from `start`)."""
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ConfigError(f"input {start + i} is {type(t).__name__}, not a string: pass texts as strings")
        if not t.strip():
            # nothing to classify (a model sees only its special tokens); extract refuses empty texts too
            raise ConfigError(f"input {start + i} is an empty text: give texts with at least one word")
    return out


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
    texts = as_texts(texts)
    layers = {s: sorted(int(l) for l in ls) for s, ls in layers.items() if ls}
    if not layers:
        raise ConfigError("no layers given: name at least one layer entry of hidden or ffn")
    dev = torch.device(device) if device is not None else next(loaded.model.parameters()).device
    dtype = compute_dtype or torch.float32
    widths = {"hidden": int(loaded.info["d"]), "ffn": int(loaded.info["d_ff"])}
    n = len(texts)
    out = {(s, p): np.empty((len(ls), n, widths[s]), dtype=np.float32) for s, ls in layers.items() for p in pools}
    for start, stop, values in iter_pooled(loaded, texts, layers, tuple(pools), max_length, batch_size, dev, dtype,
                                           progress, desc):
        for key, (idx, t) in values.items():
            out[key][:, start + idx, :] = t
    return out


def iter_pooled(loaded: LoadedModel, texts: Sequence[str], layers: Mapping[str, Sequence[int]], pools: tuple[str, ...],
                max_length: int, batch_size: int, device: torch.device, dtype: torch.dtype, progress: bool,
                desc: str) -> Iterator[tuple[int, int, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]]:
    """Yield (window start, stop, {(site, pool): (row positions in window, (n_layers, B, width) array)}) per batch."""
    from ..progress import progress_bar

    n = len(texts)
    pad_id = loaded.tokenizer.pad_token_id
    bar = progress_bar(n, unit="row", enabled=progress and n > 0, desc=desc)
    try:
        with ActivationCapture(loaded, tuple(layers), pools, layers=layers) as cap, autocast(device, dtype):
            for start in range(0, n, WINDOW):
                stop = min(n, start + WINDOW)
                chunk = check_strings(texts[start:stop], start)
                tw = tokenize_window(loaded.tokenizer, chunk, max_length, "input", start)
                for idx, batch in iter_batches(tw, batch_size, pad_id, device):
                    values = cap.run(batch)
                    yield start, stop, {k: (idx, v.cpu().numpy()) for k, v in values.items()}
                    bar.update(len(idx))
    finally:
        bar.close()
