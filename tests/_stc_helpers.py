"""Helpers shared by the predict / explain tests: hand-built classifiers and plain-transformers references."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

POOL_FNS = {
    "mean": lambda a: a.mean(0),
    "max": lambda a: a.max(0),
    "first": lambda a: a[0],
    "last": lambda a: a[-1],
}


def model_info(model_dir: Path) -> dict:
    """The meta["model"] that extract would record for a model folder."""
    from stcstore.models import load_model, resolve_model

    return load_model(resolve_model(str(model_dir))).info


def hand_artifact(model_dir: Path, pool: str, features: Sequence[tuple[str, int, int]], n_classes: int = 2,
                  seed: int = 0, max_length: int = 64, info: dict | None = None):
    """A ClassifierArtifact with random weights over the given (site, layer, neuron) features."""
    from stcstore.classifier import ClassifierArtifact

    rng = np.random.default_rng(seed)
    F = len(features)
    n_out = 1 if n_classes == 2 else n_classes
    sites = [0 if s == "hidden" else 1 for s, _, _ in features]
    layers = [l for _, l, _ in features]
    layer_map = {"hidden": sorted({l for s, l, _ in features if s == "hidden"}),
                 "ffn": sorted({l for s, l, _ in features if s == "ffn"})}
    return ClassifierArtifact(
        label="label", classes=[f"c{i}" for i in range(n_classes)] if n_classes > 2 else ["neg", "pos"],
        site="both", pool=pool, k=max(layers) + 1 if layers else 1, eta=1.0, C=1.0, layers=layer_map,
        coef=rng.normal(size=(n_out, F)), intercept=rng.normal(size=n_out),
        scaler_mean=rng.normal(scale=0.1, size=F), scaler_scale=rng.uniform(0.5, 2.0, size=F),
        feature_site=sites, feature_layer=layers, feature_index=[i for _, _, i in features],
        model=info if info is not None else model_info(model_dir),
        extract={"max_length": max_length, "dtype": "auto", "compute_dtype": "float32", "store_dtype": "float16",
                 "truncation_side": "right", "padding_side": "right", "text_column": "text", "batch_size": 32},
    )


def reference_tokens(model_dir: Path, text: str, max_length: int) -> tuple[list[int], dict]:
    """Per-token activations with plain transformers (full forward, no stcstore code):
    {("hidden", l): (T, d) for every hidden_states entry, ("ffn", l): (T, d_ff) for every block} in float64."""
    import transformers as T

    from stcstore.models import architecture_for, get_module

    tok = T.AutoTokenizer.from_pretrained(model_dir)
    model = T.AutoModel.from_pretrained(model_dir).eval()
    arch = architecture_for(model.config.model_type)   # only where the MLP output projection sits
    blocks = get_module(model, arch.blocks)
    enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    ffn: list = []
    hooks = [get_module(b, arch.ffn_out).register_forward_pre_hook(lambda m, a: ffn.append(a[0][0].double().numpy()))
             for b in blocks]
    try:
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    acts = {("hidden", l): h[0].double().numpy() for l, h in enumerate(hs)}
    acts.update({("ffn", l): a for l, a in enumerate(ffn)})
    return enc["input_ids"][0].tolist(), acts


def reference_decision(art, acts: dict) -> np.ndarray:
    """(n_out,) decision of an artifact from reference per-token activations, pooled here."""
    x = np.array([POOL_FNS[art.pool](acts[("hidden" if s == 0 else "ffn", int(l))])[int(i)]
                  for s, l, i in zip(art.feature_site, art.feature_layer, art.feature_index)])
    z = (x - art.scaler_mean.astype(np.float64)) / art.scaler_scale.astype(np.float64)
    return art.coef.astype(np.float64) @ z + art.intercept.astype(np.float64)


def reference_contributions(art, acts: dict, centered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-token contributions computed neuron by neuron with loops (the documented definition)."""
    T = next(iter(acts.values())).shape[0]
    n_out = art.coef.shape[0]
    contrib = np.zeros((T, n_out))
    intercept = art.intercept.astype(np.float64).copy()
    for f in range(art.coef.shape[1]):
        a = acts[("hidden" if art.feature_site[f] == 0 else "ffn", int(art.feature_layer[f]))][:, int(art.feature_index[f])]
        m, s = float(art.scaler_mean[f]), float(art.scaler_scale[f])
        if centered:
            a = a - m
        else:
            intercept -= art.coef[:, f].astype(np.float64) * m / s
        w = art.coef[:, f].astype(np.float64) / s
        if art.pool == "mean":
            for t in range(T):
                contrib[t] += w * a[t] / T
        elif art.pool == "max":
            t = int(np.argmax(a))
            contrib[t] += w * a[t]
        elif art.pool == "first":
            contrib[0] += w * a[0]
        else:
            contrib[T - 1] += w * a[T - 1]
    return contrib, intercept


def cli(*args: str):
    """Run the command line in this process (no interpreter start-up): returncode, stdout, stderr."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from stcstore.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def read_store(store, run: str | None = None) -> dict:
    """Every array of a run read back: activations, token counts, row ids and source columns."""
    from stcstore.store import open_run

    r = open_run(store, run)
    out = {}
    for split in r.splits:
        for site in r.sites:
            for pool in r.pools:
                out[(split, site, pool)] = r.read(split, site, pool)
        out[(split, "n_tokens")] = r.n_tokens(split)
        out[(split, "row_id")] = r.row_ids(split)
        for c in r.columns(split):
            out[(split, "column", c)] = r.column(split, c)
    return out


def assert_same_arrays(got: dict, want: dict, what: str = "") -> None:
    """Two read_store results hold the same keys and bitwise equal arrays."""
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), f"{key} differs{what}"
