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


# -- precision: pooling never runs under the forward's autocast ---------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mean_under_autocast_is_a_float32_sum(dtype):
    """The hooks fire inside autocast; the mean must still be a float32 sum (it was a bf16/fp16 GEMM)."""
    B, T, d = 4, 300, 64
    x = (torch.randn(B, T, d, generator=torch.Generator().manual_seed(4)) * 3 + 1).to(dtype)
    m = (torch.arange(T)[None] < torch.tensor([300, 250, 120, 7])[:, None]).long()
    tm = TokenMask.from_attention_mask(m)
    with torch.autocast("cpu", dtype=dtype):
        got = pool(x, tm, "mean")
    assert got.dtype == torch.float32
    xd = x.double().numpy()
    want = np.stack([xd[i, : int(m[i].sum())].mean(0) for i in range(B)])
    # float32 accumulation of <= 300 terms: ~1e-6 relative; a bf16 result would be ~4e-3 off
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-6, atol=2e-6)


def test_fp16_token_sum_beyond_65504_is_finite():
    """300 tokens of 300.0 sum to 90,000 (beyond fp16): the float32 sum keeps the mean exact."""
    x = torch.full((2, 300, 8), 300.0, dtype=torch.float16)
    x[1, :, 0] = 65504.0                      # the largest float16: its mean is representable too
    tm = TokenMask.from_attention_mask(torch.ones(2, 300, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.float16):
        got = pool(x, tm, "mean")
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], torch.full((8,), 300.0)) and float(got[1, 0]) == 65504.0


@pytest.mark.parametrize("how", ["max", "first", "last"])
def test_max_first_last_exact_in_native_dtype(how):
    """Max and token picks are exact in any dtype: the float32 result equals the bf16 values widened."""
    x = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    m = torch.as_tensor(_masks()["right"][:3, :9])
    m[:, 0] = 1
    tm = TokenMask.from_attention_mask(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pool(x, tm, how)
    xf = x.float()
    for i in range(3):
        real = torch.nonzero(m[i]).flatten()
        want = {"max": xf[i, real].amax(0), "first": xf[i, real[0]], "last": xf[i, real[-1]]}[how]
        assert torch.equal(got[i], want)
