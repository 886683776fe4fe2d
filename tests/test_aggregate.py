"""Aggregation: depths per site choice, kept-feature designs and nested masks on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from stcstore.probe.aggregate import (
    SITE_CODES,
    Design,
    LayerProbe,
    build_design,
    carry_solutions,
    feature_keys,
    k_values,
    layers_for,
    n_blocks,
    nested_masks,
    site_choices,
    unique_rows,
)

N_LAYERS = {"hidden": 4, "ffn": 3}   # a 3-block model: hidden_states 0..3, ffn 0..2


def test_site_choices():
    assert site_choices(("hidden", "ffn")) == ["hidden", "ffn", "both"]
    assert site_choices(("ffn", "hidden")) == ["hidden", "ffn", "both"]
    assert site_choices(("ffn",)) == ["ffn"]


def test_depths_layers_and_blocks():
    assert k_values("hidden", N_LAYERS) == [1, 2, 3, 4]
    assert k_values("ffn", N_LAYERS) == [1, 2, 3]
    assert k_values("both", N_LAYERS) == [1, 2, 3]
    assert layers_for("hidden", 3) == {"hidden": [0, 1, 2], "ffn": []}
    assert layers_for("ffn", 2) == {"hidden": [], "ffn": [0, 1]}
    # both, k blocks run: hidden entries 0..k and ffn entries 0..k-1
    assert layers_for("both", 2) == {"hidden": [0, 1, 2], "ffn": [0, 1]}
    assert [n_blocks("hidden", k) for k in (1, 2, 4)] == [0, 1, 3]
    assert [n_blocks("ffn", k) for k in (1, 3)] == [1, 3]
    assert [n_blocks("both", k) for k in (1, 3)] == [1, 3]
    with pytest.raises(ValueError):
        layers_for("attn", 1)


def _probe(site: str, layer: int, order: list[int], n_tr: int = 3) -> LayerProbe:
    """A layer probe whose raw kept columns encode (site, layer, neuron) in their values."""
    m = len(order)
    base = (100 if site == "ffn" else 0) + 10 * layer
    cols = np.array([base + j for j in order], dtype=np.float32)
    X = np.tile(cols, (n_tr, 1)) + np.arange(n_tr, dtype=np.float32)[:, None] / 10
    return LayerProbe(
        site=site, pool="mean", layer=layer, C=1.0, val=0.5, n_nonzero=m, val_by_C=[0.5],
        coef=np.zeros((1, 8), np.float32), intercept=np.zeros(1, np.float32), order=np.array(order),
        counts=np.array([m]), mean=cols.astype(np.float64) * 2, scale=np.full(m, 4.0),
        X_train=X, X_val=X[:2] + 1000, X_test=X[:1] + 2000,
    )


def _probes() -> dict:
    return {
        ("hidden", 0): _probe("hidden", 0, [5, 1]),
        ("hidden", 1): _probe("hidden", 1, [2]),
        ("hidden", 2): _probe("hidden", 2, [7, 0, 3]),
        ("hidden", 3): _probe("hidden", 3, []),
        ("ffn", 0): _probe("ffn", 0, [4]),
        ("ffn", 1): _probe("ffn", 1, [6, 2]),
        ("ffn", 2): _probe("ffn", 2, [1]),
    }


def test_build_design_takes_prefixes_in_site_layer_order():
    probes = _probes()
    counts = {("hidden", 0): 1, ("hidden", 1): 1, ("hidden", 2): 2, ("hidden", 3): 0,
              ("ffn", 0): 0, ("ffn", 1): 2, ("ffn", 2): 1}
    d = build_design(probes, "both", counts)
    # hidden 0 [5], hidden 1 [2], hidden 2 [7, 0], ffn 1 [6, 2], ffn 2 [1]
    assert d.feature_site.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert d.feature_layer.tolist() == [0, 1, 2, 2, 1, 1, 2]
    assert d.feature_index.tolist() == [5, 2, 7, 0, 6, 2, 1]
    expected_cols = np.array([5, 12, 27, 20, 116, 112, 121], dtype=np.float64)
    mean = expected_cols * 2

    def z(raw):  # the design holds the raw kept columns standardised with each probe's mean / scale
        return (raw - mean) / 4.0

    X_train, X_val, X_test = (np.asarray(x) for x in (d.X_train, d.X_val, d.X_test))
    np.testing.assert_allclose(X_train[0], z(expected_cols))
    np.testing.assert_allclose(X_train[2], z(expected_cols + 0.2), rtol=1e-6)
    np.testing.assert_allclose(X_val[1], z(expected_cols + 1000.1), rtol=1e-6)
    np.testing.assert_allclose(X_test[0], z(expected_cols + 2000), rtol=1e-6)
    np.testing.assert_allclose(d.mean, mean)
    assert X_train.flags["C_CONTIGUOUS"] and X_train.dtype == np.float32
    # rows of some columns, built on demand, are those columns of the whole design
    np.testing.assert_array_equal(d.X_train.rows(1, 3, np.array([6, 0, 3])), X_train[1:3][:, [6, 0, 3]])

    single = build_design(probes, "ffn", counts)
    assert single.feature_index.tolist() == [6, 2, 1]
    empty = build_design(probes, "hidden", {k: 0 for k in counts})
    assert empty.n_features == 0 and empty.X_train.shape == (3, 0)
    with pytest.raises(ValueError):
        build_design(probes, "hidden", {("hidden", 1): 2})


def test_nested_masks_by_hand():
    # columns: h0 h0 h1 h2 h3 f0 f1 f2
    site = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    layer = np.array([0, 0, 1, 2, 3, 0, 1, 2])
    m = nested_masks(site, layer, "both", [1, 2, 3])
    assert m.astype(int).tolist() == [
        [1, 1, 1, 0, 0, 1, 0, 0],   # 1 block: h0, h1, f0
        [1, 1, 1, 1, 0, 1, 1, 0],   # 2 blocks: h0..h2, f0, f1
        [1, 1, 1, 1, 1, 1, 1, 1],
    ]
    h = nested_masks(site[:5], layer[:5], "hidden", [1, 2, 3, 4])
    assert h.astype(int).tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    f = nested_masks(site[5:], layer[5:], "ffn", [2])
    assert f.astype(int).tolist() == [[1, 1, 0]]


def test_unique_rows_drops_empty_and_duplicates():
    masks = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]], dtype=bool)
    uniq, index = unique_rows(masks)
    assert uniq.astype(int).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert index.tolist() == [-1, 0, 0, 1, 1, 2]
    none, idx = unique_rows(np.zeros((2, 3), bool))
    assert none.shape == (0, 3) and idx.tolist() == [-1, -1]


def _keys_design(feats: list[tuple[str, int, int]]) -> Design:
    F = len(feats)
    z = np.zeros((2, F), np.float32)
    return Design(X_train=z, X_val=z, X_test=z,
                  feature_site=np.array([SITE_CODES[s] for s, _, _ in feats], np.int64),
                  feature_layer=np.array([l for _, l, _ in feats], np.int64),
                  feature_index=np.array([i for _, _, i in feats], np.int64),
                  mean=np.zeros(F), scale=np.ones(F))


def test_carry_solutions_moves_weights_by_neuron_and_depth() -> None:
    small = _keys_design([("hidden", 0, 5), ("hidden", 0, 2), ("ffn", 1, 7)])
    big = _keys_design([("hidden", 0, 5), ("hidden", 0, 2), ("hidden", 0, 9), ("ffn", 1, 7), ("ffn", 1, 3)])
    # two unique masks in the small design (depths 1 and 2); three depths in the big one, the
    # first empty there, the last without a source fit
    coef = np.arange(2 * 2 * 1 * 3, dtype=np.float32).reshape(2, 2, 1, 3) + 1
    icpt = np.array([[[10.0], [20.0]], [[30.0], [40.0]]], np.float32)
    out, out_b = carry_solutions(feature_keys(small), np.array([0, 1, -1]), coef, icpt,
                                 feature_keys(big), np.array([-1, 0, 1]))
    assert out.shape == (2, 2, 1, 5) and out_b.shape == (2, 2, 1)
    # big mask 0 is depth 2 (small mask 1): columns 5, 2, -, 7, - by neuron
    np.testing.assert_array_equal(out[0, :, 0], [[7, 8, 0, 9, 0], [10, 11, 0, 12, 0]])
    np.testing.assert_array_equal(out_b[0], [[30.0], [40.0]])
    # big mask 1 is depth 3, which the small design never fitted: zeros
    assert not out[1].any() and not out_b[1].any()
