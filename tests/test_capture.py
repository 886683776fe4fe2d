"""Hook capture against independent computations: output_hidden_states and MLP math by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAMILIES
from stcstore.extract import ActivationCapture, blocks_needed
from stcstore.models import get_module, load_model, resolve_model

POOLS = ("mean", "max", "first", "last")
TEXTS = ["a short one", "this is a somewhat longer sentence about a film", "mid size text here", "x"]


def _manual_pool(x: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    """Pool (B, T, d) over real tokens row by row, with plain NumPy."""
    out = []
    for r in range(x.shape[0]):
        real = np.flatnonzero(mask[r])
        rows = x[r, real]
        out.append({"mean": rows.mean(0), "max": rows.max(0), "first": rows[0], "last": rows[-1]}[how])
    return np.stack(out)


def _batch(tokenizer, side: str) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = side
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    return dict(enc)


def _ffn_by_hand(family: str, block, cfg, x: torch.Tensor) -> torch.Tensor:
    """The FFN activation from the MLP's input and its weights (not from our hook site)."""
    from transformers.activations import ACT2FN

    if family in ("bert", "roberta"):
        lin = block.intermediate.dense
        return ACT2FN[cfg.hidden_act](x @ lin.weight.T + lin.bias)
    if family == "distilbert":
        lin = block.ffn.lin1
        return ACT2FN[cfg.activation](x @ lin.weight.T + lin.bias)
    if family == "gpt2":
        fc = block.mlp.c_fc  # Conv1D: weight is (in, out)
        return ACT2FN[cfg.activation_function](x @ fc.weight + fc.bias)
    mlp = block.mlp
    return ACT2FN[cfg.hidden_act](x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)


_MLP_INPUT = {"bert": "intermediate.dense", "roberta": "intermediate.dense", "distilbert": "ffn.lin1",
              "gpt2": "mlp.c_fc", "llama": "mlp.gate_proj", "mistral": "mlp.gate_proj", "qwen2": "mlp.gate_proj"}


@pytest.fixture(scope="module")
def loaded(tiny_model):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(resolve_model(str(tiny_model(family))))
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_and_ffn_match_independent_computation(family, loaded):
    lm = loaded(family)
    model, cfg = lm.model, lm.model.config
    batch = _batch(lm.tokenizer, "right")
    mask = batch["attention_mask"].numpy()
    blocks = get_module(model, lm.arch.blocks)

    # reference: HF's own hidden states, and the MLP input seen by each block's first MLP layer
    mlp_inputs: list[torch.Tensor] = []
    hooks = [get_module(b, _MLP_INPUT[family]).register_forward_pre_hook(lambda m, a: mlp_inputs.append(a[0]))
             for b in blocks]
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True)
    for h in hooks:
        h.remove()

    with ActivationCapture(lm, ("hidden", "ffn"), POOLS) as cap:
        got = cap.run(batch)

    assert got[("hidden", "mean")].shape == (len(blocks) + 1, len(TEXTS), cfg.hidden_size)
    for pool in POOLS:
        for layer, hs in enumerate(ref.hidden_states):
            want = _manual_pool(hs.numpy(), mask, pool)
            np.testing.assert_allclose(got[("hidden", pool)][layer].numpy(), want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{family} hidden {pool} layer {layer}")
        for layer, block in enumerate(blocks):
            with torch.no_grad():
                act = _ffn_by_hand(family, block, cfg, mlp_inputs[layer]).numpy()
            want = _manual_pool(act, mask, pool)
            np.testing.assert_allclose(got[("ffn", pool)][layer].numpy(), want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{family} ffn {pool} layer {layer}")


@pytest.mark.parametrize("family", FAMILIES)
def test_left_and_right_padding_agree(family, loaded):
    lm = loaded(family)
    with ActivationCapture(lm, ("hidden", "ffn"), POOLS) as cap:
        right = cap.run(_batch(lm.tokenizer, "right"))
        left = cap.run(_batch(lm.tokenizer, "left"))
    assert _batch(lm.tokenizer, "left")["attention_mask"][:, 0].min() == 0  # really left-padded
    for key in right:
        np.testing.assert_allclose(left[key].numpy(), right[key].numpy(), rtol=1e-4, atol=1e-4, err_msg=str(key))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_early_exit_skips_blocks_and_matches_full_forward(family, loaded):
    lm = loaded(family)
    blocks = get_module(lm.model, lm.arch.blocks)
    calls = [0] * len(blocks)
    hooks = [b.register_forward_hook(lambda m, a, o, _i=i: calls.__setitem__(_i, calls[_i] + 1)) for i, b in enumerate(blocks)]
    batch = _batch(lm.tokenizer, "right")
    try:
        with ActivationCapture(lm, ("hidden", "ffn"), ("mean",), layers={"hidden": [0, 1], "ffn": [0]}) as cap:
            early = cap.run(batch)
        assert calls == [1, 0], "block 1 must not run: hidden[1] is its input"
        with ActivationCapture(lm, ("hidden", "ffn"), ("mean",)) as cap:
            full = cap.run(batch)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [2, 1]
    np.testing.assert_array_equal(early[("hidden", "mean")].numpy(), full[("hidden", "mean")][:2].numpy())
    np.testing.assert_array_equal(early[("ffn", "mean")].numpy(), full[("ffn", "mean")][:1].numpy())


def test_blocks_needed():
    assert blocks_needed({"hidden": [0]}) == 0
    assert blocks_needed({"hidden": [0, 1]}) == 1
    assert blocks_needed({"ffn": [0]}) == 1
    assert blocks_needed({"hidden": [2], "ffn": [2]}) == 3


# -- the one hook mechanism: LayerHooks, shared by extraction and explain -------------------------------

@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_layer_hooks_hand_over_raw_activations_in_forward_order(family, loaded):
    """The callback gets each chosen (site, layer)'s raw (B, T, width) tensor, in forward order, equal to
    output_hidden_states; the forward stops after the last one."""
    from stcstore.extract.capture import LayerHooks, capture_order

    lm = loaded(family)
    batch = _batch(lm.tokenizer, "right")
    seen: list = []
    layers = {"hidden": [2, 0], "ffn": [1]}
    with LayerHooks(lm, layers, lambda s, l, x: seen.append((s, l, x.detach().clone()))) as hooks, torch.no_grad():
        hooks.forward(batch)
    assert [(s, l) for s, l, _ in seen] == sorted([("hidden", 0), ("ffn", 1), ("hidden", 2)],
                                                  key=lambda k: capture_order(*k))
    with torch.no_grad():
        hs = lm.model(**hooks.model_inputs(batch), output_hidden_states=True).hidden_states
    for s, l, x in seen:
        if s == "hidden":
            torch.testing.assert_close(x, hs[l], rtol=1e-5, atol=1e-5)
        else:
            assert x.shape[:2] == batch["input_ids"].shape and x.shape[2] == lm.info["d_ff"]


def test_explain_and_extract_share_the_hook_mechanism(loaded):
    from stcstore.explain.contributions import TokenActivations
    from stcstore.extract.capture import LayerHooks

    lm = loaded("bert")
    assert isinstance(ActivationCapture(lm, ("hidden",), ("mean",)).hooks, LayerHooks)
    assert isinstance(TokenActivations(lm, {"ffn": [0]}).hooks, LayerHooks)
