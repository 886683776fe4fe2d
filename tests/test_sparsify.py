"""Sparsification against hand-computed kept sets: eta shares, multiclass sums, ties, eta = 1."""

from __future__ import annotations

import numpy as np
import pytest

from stcstore.probe.sparsify import importance, keep_count, keep_counts, ranking, sparsify


def test_binary_shares_by_hand():
    # squared weights 0, 9, 1, 4, 0 -> total 14; ranking 1 (9/14 = .643), 3 (13/14 = .9286), 2 (1.0)
    coef = np.array([[0.0, 3.0, -1.0, 2.0, 0.0]])
    assert ranking(coef).tolist() == [1, 3, 2]
    assert sparsify(coef, 0.5).tolist() == [1]
    assert sparsify(coef, 9 / 14).tolist() == [1]          # reaching the share exactly is enough
    assert sparsify(coef, 0.65).tolist() == [1, 3]
    assert sparsify(coef, 0.928).tolist() == [1, 3]         # 13/14 = .92857
    assert sparsify(coef, 0.93).tolist() == [1, 2, 3]
    assert sparsify(coef, 1.0).tolist() == [1, 2, 3]       # every nonzero weight, never a zero one
    # a 1-d coefficient vector means the same
    assert sparsify(coef[0], 0.65).tolist() == [1, 3]


def test_multiclass_sums_squares_over_classes():
    # importance = column sums of squares: [1+1+1, 0+0+1, 0+9+0, 4+0+0] = [3, 1, 9, 4], total 17
    # (a max-|w| or sum-|w| rule would rank differently: [1,1,3,2] / [3,1,3,2])
    coef = np.array([[1.0, 0.0, 0.0, 2.0], [1.0, 0.0, 3.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(importance(coef), [3, 1, 9, 4])
    assert ranking(coef).tolist() == [2, 3, 0, 1]
    # shares: 9/17 = .529, 13/17 = .765, 16/17 = .941, 1
    assert sparsify(coef, 0.5).tolist() == [2]
    assert sparsify(coef, 0.6).tolist() == [2, 3]
    assert sparsify(coef, 0.8).tolist() == [0, 2, 3]
    assert sparsify(coef, 0.95).tolist() == [0, 1, 2, 3]
    assert keep_counts(coef, [0.5, 0.6, 0.8, 0.95, 1.0]).tolist() == [1, 2, 3, 4, 4]


def test_ties_broken_by_lower_index_and_share_stops_there():
    # squares 4, 4, 4, 1 (total 13): equal weights rank by index; eta .3 needs only 4/13 = .308
    coef = np.array([[2.0, -2.0, 2.0, 1.0]])
    assert ranking(coef).tolist() == [0, 1, 2, 3]
    assert sparsify(coef, 0.3).tolist() == [0]
    assert sparsify(coef, 0.5).tolist() == [0, 1]          # 8/13 = .615
    assert sparsify(coef, 0.62).tolist() == [0, 1, 2]      # 12/13 = .923
    # reversed positions: still the lower index first among equals
    assert ranking(np.array([[1.0, 2.0, -2.0, 2.0]])).tolist() == [1, 2, 3, 0]


def test_float_rounding_at_the_boundary():
    # importances 4, 3, 3 (total 10): shares .4, .7, 1.0; eta .7 must keep 2, not 3
    coef = np.array([[np.sqrt(3.0), np.sqrt(3.0), 2.0]])
    assert keep_count(coef, 0.7) == 2
    assert keep_count(coef, 0.4) == 1
    assert keep_count(coef, 0.41) == 2


def test_zero_and_tiny_weights():
    assert keep_counts(np.zeros((2, 5)), [0.1, 1.0]).tolist() == [0, 0]
    assert sparsify(np.zeros((1, 5)), 1.0).tolist() == []
    coef = np.array([[1e-20, 0.0, 5.0]], dtype=np.float32)
    assert sparsify(coef, 1.0).tolist() == [0, 2]          # tiny but nonzero counts at eta = 1
    assert sparsify(coef, 0.999).tolist() == [2]
    with pytest.raises(ValueError):
        keep_count(coef, 0.0)
    with pytest.raises(ValueError):
        keep_count(coef, 1.5)


def _brute_force(coef: np.ndarray, eta: float) -> set[int]:
    """Independent reference: add neurons in order of importance until the share reaches eta."""
    imp = (coef.astype(np.float64) ** 2).sum(axis=0)
    total = imp.sum()
    kept: set[int] = set()
    acc = 0.0
    for j in sorted(range(len(imp)), key=lambda j: (-imp[j], j)):
        if imp[j] == 0:
            break
        if eta < 1 and acc / total >= eta - 1e-12:
            break
        kept.add(j)
        acc += imp[j]
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_random_against_brute_force_and_nested(seed):
    rng = np.random.default_rng(seed)
    coef = rng.standard_normal((3, 40)) * (rng.random(40) < 0.5)
    etas = [0.05, 0.1, 0.3, 0.5, 0.8, 0.9, 0.99, 1.0]
    prev: set[int] = set()
    for eta in etas:
        got = set(sparsify(coef, eta).tolist())
        assert got == _brute_force(coef, eta)
        assert prev <= got                                  # nested in eta
        prev = got
    assert prev == set(np.flatnonzero(np.any(coef != 0, axis=0)).tolist())
