"""The Newton step's Hessian (built, and updated between steps) and the polish's support factor,
against float64 NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stcstore.probe.solvers.torch_data import _prepare
from stcstore.probe.solvers.torch_hessian import DROP, STALE, HessianCache, build_hessians, scaled
from stcstore.probe.solvers.torch_model import _Factor

N, D = 600, 40


def _probs(rng: np.random.Generator, K: int, scale: float = 3.0) -> np.ndarray:
    """Row probabilities as the solver holds them: sigmoid (K = 1) or softmax over K classes."""
    z = scale * rng.normal(size=(N, K))
    if K == 1:
        return 1 / (1 + np.exp(-z))
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _exact(X: np.ndarray, cols: np.ndarray, a: np.ndarray, C: float) -> np.ndarray:
    """C * Hessian over [cols, intercept] per class block in float64, rows under DROP of the top curvature left out."""
    K = a.shape[1]
    Xa = np.c_[X[:, cols], np.ones(len(X))].astype(np.float64)
    a = a.astype(np.float64)
    curv = (a * (1 - a)).max(1)
    kept = curv >= DROP * curv.max()
    kk = len(cols) + 1
    H = np.zeros((K * kk, K * kk))
    for c1 in range(K):
        for c2 in range(K):
            d = a[:, c1] * ((c1 == c2) - a[:, c2]) * kept
            H[c1 * kk:(c1 + 1) * kk, c2 * kk:(c2 + 1) * kk] = C * Xa.T @ (d[:, None] * Xa)
    return H


def _setup(K: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, max(K, 2), size=N)
    data = _prepare(X, y, 2 if K == 1 else K, torch.device("cpu"))
    return rng, X, data


def _close(H: torch.Tensor, ref: np.ndarray) -> None:
    err = np.abs(H.numpy().astype(np.float64) - ref).max()
    assert err <= 1e-5 * np.abs(ref).max(), err


@pytest.mark.parametrize("K", [1, 3])
def test_a_built_hessian_is_the_float64_one(K) -> None:
    rng, X, data = _setup(K)
    a = _probs(rng, K)
    cols = np.sort(rng.choice(D, 25, replace=False))
    H = HessianCache(0).hessian(data, 0, torch.as_tensor(cols), torch.as_tensor(a, dtype=torch.float32), 0.7)
    _close(H, _exact(X, cols, a, 0.7))


@pytest.mark.parametrize("K", [1, 3])
def test_an_updated_hessian_equals_a_rebuild(K) -> None:
    # a tenth of the rows move far, the rest not at all; columns leave and enter the working set
    rng, X, data = _setup(K, seed=1)
    a1 = _probs(rng, K)
    a2 = a1.copy()
    moved = rng.choice(N, N // 10, replace=False)
    a2[moved] = _probs(rng, K)[moved]
    cols1 = np.arange(0, 30)
    cols2 = np.r_[np.arange(3, 28), np.arange(32, 36)]
    cache = HessianCache(1 << 30)
    at = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    cache.hessian(data, 5, torch.as_tensor(cols1), at(a1), 0.3)
    H = cache.hessian(data, 5, torch.as_tensor(cols2), at(a2), 1.0)
    assert (cache.built, cache.updated) == (1, 1)
    _close(H, _exact(X, cols2, a2, 1.0))
    # and again with nothing moved: the cached Hessian as it is
    H = cache.hessian(data, 5, torch.as_tensor(cols2), at(a2), 2.0)
    assert cache.updated == 2
    _close(H, _exact(X, cols2, a2, 2.0))


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("streamed", [False, True])
def test_one_pass_builds_every_problem_of_a_step(K, streamed, monkeypatch) -> None:
    """Nested working sets (a path's masks), one problem updated from its old entry with columns that
    left and entered, one built afresh, one on every column: each is its own float64 Hessian.
    (Rows that move between steps: test_an_updated_hessian_equals_a_rebuild.)"""
    from stcstore.probe.solvers import torch_data
    from stcstore.probe.solvers.lazy import StandardizedColumns

    rng, X, data = _setup(K, seed=4)
    if streamed:
        # the design as the search holds it: raw blocks, rows built a chunk at a time on the union
        raw = X.astype(np.float16)
        X = raw.astype(np.float32)
        parts = [(raw[:, :15], np.zeros(15), np.ones(15)), (raw[:, 15:], np.zeros(D - 15), np.ones(D - 15))]
        y = rng.integers(0, max(K, 2), size=N)
        monkeypatch.setattr(torch_data, "STREAM_CHUNK_BYTES", 16 * D * 4)     # 16-row chunks, rebuilt every pass
        data = _prepare(StandardizedColumns(parts), y, 2 if K == 1 else K, torch.device("cpu"))
        assert data.source is not None
    at = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    a_new = _probs(rng, K)
    cols = [np.arange(0, 12), np.r_[np.arange(2, 20), np.arange(25, 30)], np.arange(D)]
    cache = HessianCache(1 << 30)
    cache.hessian(data, 1, torch.as_tensor(np.arange(0, 22)), at(a_new), 1.0)
    olds = [None, cache.take(1), None]
    A = np.stack([_probs(rng, K), a_new, _probs(rng, K)], axis=1)       # (n, P, K)
    built = build_hessians(data, olds, [torch.as_tensor(c) for c in cols], at(A))
    assert olds == [None, None, None]                                     # consumed
    assert [updated for _, updated in built] == [False, True, False]
    for j, ((c, H, _), _) in enumerate(built):
        assert np.array_equal(c.numpy(), cols[j])
        _close(scaled((c, H, None), 0.5), _exact(X, cols[j], A[:, j], 0.5))


def test_rows_within_stale_keep_their_weight_and_most_rows_moving_rebuilds() -> None:
    rng, X, data = _setup(1, seed=2)
    # |z| >= 0.5 keeps every curvature room to grow by STALE below its 1/4 maximum
    z = rng.choice([-1.0, 1.0], N) * (0.5 + np.abs(rng.normal(size=N)))
    a1 = 1 / (1 + np.exp(-z[:, None]))
    cols = torch.arange(D)
    curv1 = a1 * (1 - a1)
    # every row's curvature moves by a quarter of STALE: the cache keeps the Hessian of a1
    a2 = 0.5 - np.sqrt(0.25 - curv1 * (1 + STALE / 4)) * np.sign(0.5 - a1)
    assert np.allclose(a2 * (1 - a2), curv1 * (1 + STALE / 4), rtol=1e-6)
    cache = HessianCache(1 << 30)
    cache.hessian(data, 0, cols, torch.as_tensor(a1, dtype=torch.float32), 1.0)
    H = cache.hessian(data, 0, cols, torch.as_tensor(a2, dtype=torch.float32), 1.0)
    assert cache.updated == 1
    _close(H, _exact(X, cols.numpy(), a1, 1.0))
    # nine rows in ten fitted confidently (dropped), the rest moving: more rows changed than
    # kept, so rebuilt rather than updated
    a3 = _probs(rng, 1, scale=1.0)
    a3[rng.random(N) < 0.9] = 1 - 1e-6
    H = cache.hessian(data, 0, cols, torch.as_tensor(a3, dtype=torch.float32), 1.0)
    assert (cache.built, cache.updated) == (2, 1)
    _close(H, _exact(X, cols.numpy(), a3, 1.0))


def test_a_problem_beyond_max_bytes_is_rebuilt_every_step() -> None:
    rng, X, data = _setup(1, seed=3)
    a = torch.as_tensor(_probs(rng, 1), dtype=torch.float32)
    # room for one entry on 10 columns: its Hessian (11 x 11), columns and row weights
    one = 11 * 11 * 4 + 10 * 8 + N * 4
    small = 3 * 3 * 4 + 2 * 8 + N * 4
    cache = HessianCache(one + small)
    for key in (0, 1, 1, 0):
        cache.hessian(data, key, torch.arange(10), a, 1.0)
    # key 0 took the room; key 1 never finds any
    assert (cache.built, cache.updated) == (3, 1)
    # a problem on 2 columns still fits beside it, and what a problem held is given back when it changes
    for _ in range(3):
        cache.hessian(data, 2, torch.arange(2), a, 1.0)
    assert (cache.built, cache.updated) == (4, 3)


@pytest.mark.parametrize("dropped", [[0, 12], [7, 12, 29], [29]])
def test_a_factor_without_some_coordinates_solves_their_block(dropped) -> None:
    rng = np.random.default_rng(dropped[0])
    B = rng.normal(size=(60, 40))
    H = (B.T @ B / 60 + 0.1 * np.eye(40)).astype(np.float32)
    fi = torch.as_tensor(rng.permutation(40)[:30])
    fac = _Factor.of(torch.as_tensor(H), fi)
    keep = torch.ones(30, dtype=torch.bool)
    keep[dropped] = False
    small = fac.without(torch.as_tensor(H), keep)
    sub = fi[keep].numpy()
    assert np.array_equal(small.fi.numpy(), sub)
    b = rng.normal(size=len(sub)).astype(np.float32)
    x = small.solve(torch.as_tensor(H), torch.as_tensor(b)).numpy()
    ref = np.linalg.solve(H.astype(np.float64)[np.ix_(sub, sub)], b.astype(np.float64))
    assert np.allclose(x, ref, rtol=1e-4, atol=1e-5)


def test_keep_only_renumbers_the_kept_entries_and_frees_the_rest() -> None:
    cache = HessianCache(1 << 20)
    entries = {k: (torch.arange(k + 1), torch.full((k + 2, k + 2), float(k)), torch.ones(3)) for k in range(3)}
    for k, e in entries.items():
        cache.put(k, e, updated=False)
    cache.keep_only([2, 0])             # problem 1 left the batch: 2 is now problem 0, 0 problem 1
    assert cache.take(0) is entries[2] and cache.take(1) is entries[0] and cache.take(2) is None
    assert cache._bytes == 0
