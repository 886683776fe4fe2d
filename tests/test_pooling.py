"""Pooling over real tokens against NumPy loops over each row's real positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stcstore.extract.pooling import TokenMask, pool


def _masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    B, T = 6, 11
    lengths = rng.integers(1, T + 1, size=B)
    right = (np.arange(T)[None] < lengths[:, None]).astype(np.int64)
    left = right[:, ::-1].copy()
    full = np.ones((B, T), dtype=np.int64)
    holes = right.copy()
    holes[0, 1] = 0                       # a hole inside the common span: no shortcut allowed
    sorted_right = (np.arange(T)[None] < np.array([11, 11, 10, 10, 9, 9])[:, None]).astype(np.int64)
    return {"right": right, "left": left, "full": full, "holes": holes, "sorted_right": sorted_right}


@pytest.mark.parametrize("kind", ["right", "left", "full", "holes", "sorted_right"])
@pytest.mark.parametrize("how", ["mean", "max", "first", "last"])
def test_pool_matches_numpy_per_row(kind, how):
    m = _masks()[kind]
    B, T = m.shape
    x = torch.randn(B, T, 7, generator=torch.Generator().manual_seed(1))
    got = pool(x, TokenMask.from_attention_mask(torch.as_tensor(m)), how).numpy()
    xn = x.numpy().astype(np.float64)
    for i in range(B):
        real = np.flatnonzero(m[i])
        want = {"mean": xn[i, real].mean(0), "max": xn[i, real].max(0),
                "first": xn[i, real[0]], "last": xn[i, real[-1]]}[how]
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_max_shortcut_is_bitwise_the_masked_max():
    m = torch.as_tensor(_masks()["sorted_right"])
    tm = TokenMask.from_attention_mask(m)
    assert tm.span == (0, 9)
    x = torch.randn(6, 11, 33, generator=torch.Generator().manual_seed(2))
    masked = x.masked_fill(~tm.keep, float("-inf")).amax(dim=1)
    assert torch.equal(pool(x, tm, "max"), masked)
    hole = torch.ones(3, 8, dtype=torch.long)
    hole[0, 4] = 0                        # inside every row's first..last: the span must not be used
    tm = TokenMask.from_attention_mask(hole)
    assert tm.span is None
    x = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(3))
    want = torch.cat([x[0, [0, 1, 2, 3, 5, 6, 7]].amax(0, keepdim=True), x[1:].amax(1)])
    assert torch.equal(pool(x, tm, "max"), want)
