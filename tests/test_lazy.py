"""StandardizedColumns: a design built row chunk by row chunk from raw float16 column blocks."""

from __future__ import annotations

import numpy as np
import pytest

from stcstore.probe.solvers import lazy
from stcstore.probe.solvers.lazy import StandardizedColumns
from stcstore.probe.solvers.sklearn_solver import SklearnSolver
from stcstore.probe.solvers.torch_solver import TorchSolver
from stcstore.probe.solvers import torch_data


def _blocks(n: int = 300, widths=(7, 12, 5), seed: int = 0):
    rng = np.random.default_rng(seed)
    parts = []
    for w in widths:
        raw = (rng.standard_normal((n, w + 3)) * 3 + 1).astype(np.float16)
        mean = raw.astype(np.float64).mean(0)[:w]
        scale = raw.astype(np.float64).std(0)[:w] + 0.1
        parts.append((raw[:, :w], mean, scale))   # a prefix view of wider raw columns, as designs take
    return parts


def _reference(parts) -> np.ndarray:
    # float64 standardisation of the float16 values, independent of the class
    return np.concatenate([(raw.astype(np.float64) - m) / s for raw, m, s in parts], axis=1)


def test_rows_match_float64_standardisation() -> None:
    parts = _blocks()
    X = StandardizedColumns(parts)
    ref = _reference(parts)
    assert X.shape == ref.shape and X.nbytes == ref.size * 4
    np.testing.assert_allclose(np.asarray(X), ref, rtol=1e-5, atol=1e-5)
    cols = np.array([23, 0, 8, 7, 19])
    np.testing.assert_allclose(X.rows(10, 50, cols), ref[10:50][:, cols], rtol=1e-5, atol=1e-5)
    sorted_cols = np.array([1, 2, 5, 7, 8, 9, 18, 20, 22])     # one run of output columns per block
    np.testing.assert_allclose(X.rows(10, 50, sorted_cols), ref[10:50][:, sorted_cols], rtol=1e-5, atol=1e-5)
    # read-only blocks (scratch files are mapped read-only) give the same rows, gathered or whole
    frozen = [(raw.copy(), m, s) for raw, m, s in parts]
    for raw, _, _ in frozen:
        raw.setflags(write=False)
    Xf = StandardizedColumns(frozen)
    for c in (cols, sorted_cols):
        np.testing.assert_allclose(Xf.rows(10, 50, c), ref[10:50][:, c], rtol=1e-5, atol=1e-5)
    out = np.full((5, X.shape[1]), np.nan, np.float32)
    assert X.rows(3, 8, out=out) is out and np.isfinite(out).all()
    with pytest.raises(ValueError, match="row counts"):
        StandardizedColumns([parts[0], (parts[1][0][:5], parts[1][1], parts[1][2])])


def test_torch_streams_a_built_design_to_the_same_solution(monkeypatch) -> None:
    # chunks of 32 rows: the design is never held whole in float32, every pass builds its rows
    parts = _blocks(n=400)
    X = StandardizedColumns(parts)
    rng = np.random.default_rng(1)
    dense = np.asarray(X)
    y = (dense[:, 2] - dense[:, 15] + 0.5 * rng.standard_normal(400) > 0).astype(np.int64)
    Cs = [0.05, 0.5]
    masks = np.ones((2, X.shape[1]), bool)
    masks[1, 10:] = False
    whole = TorchSolver(tol=1e-6).fit_path(dense, y, 2, Cs, masks=masks)
    built = TorchSolver(tol=1e-6, resident_design_bytes=X.nbytes)
    once = built.fit_path(X, y, 2, Cs, masks=masks)   # within the allowance: built once, held for the fit
    assert built.last_layout["resident"] and built.last_layout["n_chunks"] == 1
    np.testing.assert_allclose(once.objective, whole.objective, rtol=1e-6)
    monkeypatch.setattr(torch_data, "STREAM_CHUNK_BYTES", 32 * X.shape[1] * 4)
    solver = TorchSolver(tol=1e-6)
    streamed = solver.fit_path(X, y, 2, Cs, masks=masks)
    assert solver.last_layout["n_chunks"] == 13 and not solver.last_layout["resident"]
    # the same optimum as scikit-learn's liblinear on the float64 design, objective for objective
    ref = SklearnSolver().fit_path(dense.astype(np.float64), y, 2, Cs, masks=masks)
    np.testing.assert_allclose(streamed.objective, ref.objective, rtol=1e-4)
    np.testing.assert_allclose(streamed.objective, whole.objective, rtol=1e-5)
    np.testing.assert_allclose(streamed.coef, whole.coef, atol=2e-3)


def test_as_matrix_builds_whole() -> None:
    parts = _blocks(n=20)
    M = lazy.as_matrix(StandardizedColumns(parts))
    assert M.dtype == np.float32 and M.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(M, _reference(parts), rtol=1e-5, atol=1e-5)
