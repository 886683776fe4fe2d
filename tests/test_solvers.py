"""L1 logistic-regression solvers: torch (Newton and FISTA) against scikit-learn, masks, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stcstore.config import DEFAULT_C_GRID
from stcstore.errors import ConfigError, DataError, LabelError, MissingDependencyError
from stcstore.probe.solvers import (
    PathFit,
    decision_function,
    get_solver,
    l1_logistic_objective,
    predict_labels,
)
from stcstore.probe.solvers.sklearn_solver import SklearnSolver
from stcstore.probe.solvers.torch_solver import TorchSolver

CS = list(DEFAULT_C_GRID)


def make_data(n: int, d: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features with correlated noise (a 10-factor model) and 5 informative columns."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, 10))
    X = 0.5 * factors @ rng.normal(size=(10, d)) + rng.normal(size=(n, d))
    W = np.zeros((n_classes, d))
    W[:, :5] = 1.5 * rng.normal(size=(n_classes, 5))
    logits = 0.5 * X @ W.T
    if n_classes == 2:
        y = (logits[:, 1] - logits[:, 0] + rng.logistic(size=n) > 0).astype(np.int64)
    else:
        y = np.argmax(logits + rng.gumbel(size=(n, n_classes)), axis=1)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def binary() -> tuple[np.ndarray, ...]:
    X, y = make_data(800, 200, 2, seed=0)
    return X[:600], y[:600], X[600:], y[600:]


@pytest.fixture(scope="module")
def three_class() -> tuple[np.ndarray, ...]:
    X, y = make_data(650, 120, 3, seed=0)
    return X[:450], y[:450], X[450:], y[450:]


@pytest.fixture(scope="module")
def torch_binary_fit(binary) -> PathFit:
    Xtr, ytr, _, _ = binary
    return TorchSolver().fit_path(Xtr, ytr, 2, CS)


def _accuracy(X: np.ndarray, y: np.ndarray, coef: np.ndarray, icpt: np.ndarray) -> float:
    return float((predict_labels(X, coef, icpt) == y).mean())


# ----------------------------------------------------------------------------- objective


def test_objective_matches_hand_computation() -> None:
    X = np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])
    y = np.array([1, 0, 1])
    w, b, C = np.array([[0.5, -0.25]]), np.array([0.1]), 0.7
    z = [0.5 + 0.5 + 0.1, 0.25 + 0.1, -0.5 - 0.75 + 0.1]
    loss = sum(math.log(1 + math.exp(zi)) - yi * zi for zi, yi in zip(z, y))
    assert l1_logistic_objective(X, y, 2, w, b, C) == pytest.approx(0.75 + C * loss, rel=1e-12)
    # three classes: softmax cross-entropy, intercept unpenalised
    W3 = np.array([[0.5, 0.0], [0.0, -1.0], [0.25, 0.25]])
    b3 = np.array([0.0, 0.2, -0.1])
    y3 = np.array([2, 0, 1])
    expected = 2.0
    for xi, yi in zip(X, y3):
        zi = W3 @ xi + b3
        expected += C * (math.log(sum(math.exp(v) for v in zi)) - zi[yi])
    assert l1_logistic_objective(X, y3, 3, W3, b3, C) == pytest.approx(expected, rel=1e-12)


def test_decision_function_and_labels() -> None:
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
    assert np.array_equal(predict_labels(X, np.array([[1.0, -1.0]]), np.array([0.0])), [1, 0, 0])
    W3 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert decision_function(X, W3, np.zeros(3)).shape == (3, 3)
    assert np.array_equal(predict_labels(X, W3, np.zeros(3)), [0, 1, 2])


# ----------------------------------------------------------------------------- torch vs sklearn


def test_torch_matches_sklearn_binary(binary, torch_binary_fit) -> None:
    Xtr, ytr, Xva, yva = binary
    sk = SklearnSolver(tol=1e-8).fit_path(Xtr, ytr, 2, CS)
    th = torch_binary_fit
    assert th.coef.shape == (1, len(CS), 1, Xtr.shape[1]) and th.coef.dtype == np.float32
    assert th.intercept.shape == (1, len(CS), 1) and th.objective.shape == th.n_iter.shape == (1, len(CS))
    for ci, C in enumerate(CS):
        # both objectives recomputed independently in float64 from the returned coefficients
        f_sk = l1_logistic_objective(Xtr, ytr, 2, sk.coef[0, ci], sk.intercept[0, ci], C)
        f_th = l1_logistic_objective(Xtr, ytr, 2, th.coef[0, ci], th.intercept[0, ci], C)
        assert abs(f_th - f_sk) <= 1e-3 * f_sk, (C, f_th, f_sk)
        assert th.objective[0, ci] == pytest.approx(f_th, rel=1e-5)
        assert _accuracy(Xva, yva, th.coef[0, ci], th.intercept[0, ci]) == \
            _accuracy(Xva, yva, sk.coef[0, ci], sk.intercept[0, ci])
    assert np.all(th.rel_gap <= 1e-3)
    # sparser for smaller C: the path is an L1 path
    nnz = [(th.coef[0, ci] != 0).sum() for ci in range(len(CS))]
    assert nnz == sorted(nnz) and nnz[0] < Xtr.shape[1]


def test_torch_matches_sklearn_three_classes(three_class) -> None:
    Xtr, ytr, Xva, yva = three_class
    sk = SklearnSolver(saga_tol=1e-5, saga_max_iter=20000).fit_path(Xtr, ytr, 3, CS)
    th = TorchSolver().fit_path(Xtr, ytr, 3, CS)
    assert th.coef.shape == (1, len(CS), 3, Xtr.shape[1])
    for ci, C in enumerate(CS):
        f_sk = l1_logistic_objective(Xtr, ytr, 3, sk.coef[0, ci], sk.intercept[0, ci], C)
        f_th = l1_logistic_objective(Xtr, ytr, 3, th.coef[0, ci], th.intercept[0, ci], C)
        assert abs(f_th - f_sk) <= 1e-3 * f_sk, (C, f_th, f_sk)
        assert _accuracy(Xva, yva, th.coef[0, ci], th.intercept[0, ci]) == \
            _accuracy(Xva, yva, sk.coef[0, ci], sk.intercept[0, ci])


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fista_and_batched_path_agree_with_newton(n_classes) -> None:
    Xtr, ytr = make_data(300, 60, n_classes, seed=2)
    Cs = [0.03, 0.3]
    ref = TorchSolver().fit_path(Xtr, ytr, n_classes, Cs).objective
    for kw in (dict(method="fista"), dict(path="batch")):
        fit = TorchSolver(**kw).fit_path(Xtr, ytr, n_classes, Cs)
        np.testing.assert_allclose(fit.objective, ref, rtol=1e-3)


def test_torch_tensor_input_and_c_order(binary, torch_binary_fit) -> None:
    Xtr, ytr, _, _ = binary
    # Cs in any order come back in the order given; X may already be a tensor
    fit = TorchSolver().fit_path(torch.from_numpy(Xtr), ytr, 2, CS[::-1])
    assert fit.Cs == tuple(CS[::-1])
    np.testing.assert_allclose(fit.objective[0, ::-1], torch_binary_fit.objective[0], rtol=1e-3)


# ----------------------------------------------------------------------------- masks


def _nested_masks(d: int, sizes: list[int]) -> np.ndarray:
    masks = np.zeros((len(sizes), d), dtype=bool)
    for i, s in enumerate(sizes):
        masks[i, :s] = True
    return masks


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_masked_fit_equals_fit_on_sliced_columns(backend, binary) -> None:
    Xtr, ytr, _, _ = binary
    d = Xtr.shape[1]
    perm = np.random.default_rng(1).permutation(d)     # masks need not be contiguous
    masks = _nested_masks(d, [0, 20, 80, d])[:, np.argsort(perm)]
    Cs = [0.05, 0.5]
    solver = TorchSolver() if backend == "torch" else SklearnSolver(tol=1e-8)
    fit = solver.fit_path(Xtr, ytr, 2, Cs, masks=masks)
    assert fit.coef.shape == (4, 2, 1, d)
    assert np.all(fit.coef[~np.broadcast_to(masks[:, None, None, :], fit.coef.shape)] == 0)
    for mi in range(1, len(masks)):
        cols = np.flatnonzero(masks[mi])
        alone = solver.fit_path(Xtr[:, cols], ytr, 2, Cs)
        np.testing.assert_allclose(fit.objective[mi], alone.objective[0], rtol=1e-4)
        np.testing.assert_allclose(fit.coef[mi][..., cols], alone.coef[0], atol=2e-2)
        np.testing.assert_allclose(fit.intercept[mi], alone.intercept[0], atol=2e-2)
    # the empty mask is the intercept-only model: log-odds of the training labels
    p = ytr.mean()
    np.testing.assert_allclose(fit.intercept[0, :, 0], math.log(p / (1 - p)), atol=1e-4)
    # a larger mask can only lower the optimum
    assert np.all(np.diff(fit.objective, axis=0) <= 1e-3 * fit.objective[1:])


# ----------------------------------------------------------------------------- selection and errors


def test_get_solver_picks_backends() -> None:
    auto = get_solver()
    assert isinstance(auto, TorchSolver)
    assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(get_solver("torch", "cpu"), TorchSolver)
    assert get_solver("torch", "cpu").device == "cpu"
    assert isinstance(get_solver("sklearn"), SklearnSolver)
    with pytest.raises(ConfigError):
        get_solver("liblinear")
    with pytest.raises(ConfigError):
        get_solver("auto", "tpu")
    with pytest.raises(ConfigError):
        get_solver("sklearn", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            get_solver("torch", "cuda")


def test_cuml_missing_is_a_clear_error() -> None:
    try:
        import cuml  # noqa: F401
    except Exception:
        with pytest.raises(MissingDependencyError, match="--backend cuml needs cuML"):
            get_solver("cuml")
    else:  # pragma: no cover - only on machines with cuML
        pytest.skip("cuML is installed")


@pytest.mark.parametrize("solver_cls", [TorchSolver, SklearnSolver])
def test_bad_inputs_raise_typed_errors(solver_cls) -> None:
    X, y = make_data(40, 5, 2, seed=3)
    solver = solver_cls()
    with pytest.raises(DataError):
        solver.fit_path(X[:, 0], y, 2, [1.0])
    with pytest.raises(LabelError):
        solver.fit_path(X, np.where(y == 1, 2, 0), 2, [1.0])
    with pytest.raises(LabelError):
        solver.fit_path(X, y[:-1], 2, [1.0])
    with pytest.raises(LabelError):
        solver.fit_path(X, np.zeros_like(y), 2, [1.0])           # class 1 absent
    with pytest.raises(DataError):
        solver.fit_path(X, y, 2, [1.0], masks=np.ones((2, 4), dtype=bool))
    with pytest.raises(ConfigError):
        solver.fit_path(X, y, 2, [0.0, 1.0])
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    with pytest.raises(DataError):
        solver.fit_path(X_nan, y, 2, [1.0])
    with pytest.raises(DataError, match="init has shapes"):
        solver.fit_path(X, y, 2, [1.0], init=(np.zeros((1, 1, 1, 4)), np.zeros((1, 1, 1))))
    with pytest.raises(DataError, match="NaN"):
        solver.fit_path(X, y, 2, [1.0], init=(np.full((1, 1, 1, 5), np.nan), np.zeros((1, 1, 1))))


# ----------------------------------------------------------------------------- warm starts


@pytest.mark.parametrize("n_classes", [2, 3])
def test_init_changes_the_work_not_the_optimum(n_classes) -> None:
    """A start at the solution needs fewer steps; a bad start still reaches sklearn's optimum."""
    X, y = make_data(500, 80, n_classes, seed=4)
    Cs = [0.03, 0.3]
    masks = np.ones((2, 80), dtype=bool)
    masks[0, 40:] = False
    cold = TorchSolver().fit_path(X, y, n_classes, Cs, masks=masks)
    hot = TorchSolver().fit_path(X, y, n_classes, Cs, masks=masks, init=(cold.coef, cold.intercept))
    rng = np.random.default_rng(0)
    bad = TorchSolver().fit_path(X, y, n_classes, Cs, masks=masks,
                                 init=(rng.normal(size=cold.coef.shape) * 3, rng.normal(size=cold.intercept.shape)))
    assert hot.n_iter.sum() < cold.n_iter.sum()
    ref = SklearnSolver(tol=1e-8, saga_tol=1e-6, saga_max_iter=20000).fit_path(X, y, n_classes, Cs, masks=masks)
    for fit in (hot, bad):
        assert np.all(fit.coef[0, ..., 40:] == 0)      # the mask holds from any start
        for m in range(2):
            for ci, C in enumerate(Cs):
                f = l1_logistic_objective(X, y, n_classes, fit.coef[m, ci], fit.intercept[m, ci], C)
                f_sk = l1_logistic_objective(X, y, n_classes, ref.coef[m, ci], ref.intercept[m, ci], C)
                assert abs(f - f_sk) <= 1e-3 * f_sk, (m, C, f, f_sk)


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_a_stop_rule_ends_mask_paths_and_the_rest_reach_the_optimum(backend) -> None:
    """Mask 0 stops after its smallest C, mask 1 after three, mask 2 never; the rule sees every C
    in ascending order, for the masks still on their path only."""
    X, y = make_data(500, 80, 2, seed=5)
    Cs = [0.3, 0.01, 1.0, 0.03, 0.1]                   # not sorted: the walk is by value
    order = np.argsort(Cs).tolist()
    masks = np.ones((3, 80), dtype=bool)
    masks[0, 20:] = False
    masks[1, 50:] = False
    last = {0: order[0], 1: order[2]}
    calls = []

    def stop(ci, idx, coef, icpt):
        calls.append((ci, idx.tolist()))
        assert coef.shape == (len(idx), 1, 80) and icpt.shape == (len(idx), 1)
        return np.array([last.get(int(m)) == ci for m in idx])

    solver = TorchSolver() if backend == "torch" else SklearnSolver()
    fit = solver.fit_path(X, y, 2, Cs, masks=masks, stop=stop)
    fitted = np.zeros((3, 5), dtype=bool)
    fitted[0, order[:1]] = fitted[1, order[:3]] = fitted[2] = True
    np.testing.assert_array_equal(fit.fitted, fitted)
    assert np.all(fit.coef[~fitted] == 0) and np.all(fit.intercept[~fitted] == 0)
    if backend == "torch":                             # all masks of one C together
        assert calls == [(order[0], [0, 1, 2]), (order[1], [1, 2]), (order[2], [1, 2]), (order[3], [2]),
                         (order[4], [2])]
    else:                                              # mask by mask
        assert calls == [(c, [0]) for c in order[:1]] + [(c, [1]) for c in order[:3]] + [(c, [2]) for c in order]
    ref = SklearnSolver(tol=1e-8).fit_path(X, y, 2, Cs, masks=masks)
    for m, ci in zip(*np.nonzero(fitted)):
        f = l1_logistic_objective(X, y, 2, fit.coef[m, ci], fit.intercept[m, ci], Cs[ci])
        f_sk = l1_logistic_objective(X, y, 2, ref.coef[m, ci], ref.intercept[m, ci], Cs[ci])
        assert abs(f - f_sk) <= 1e-4 * f_sk, (m, Cs[ci], f, f_sk)
    assert solver.fit_path(X, y, 2, Cs, masks=masks).fitted.all()


def test_sklearn_ignores_init(binary) -> None:
    Xtr, ytr, _, _ = binary
    plain = SklearnSolver().fit_path(Xtr[:, :30], ytr, 2, [0.1])
    rng = np.random.default_rng(1)
    started = SklearnSolver().fit_path(Xtr[:, :30], ytr, 2, [0.1],
                                       init=(rng.normal(size=(1, 1, 1, 30)), rng.normal(size=(1, 1, 1))))
    np.testing.assert_array_equal(plain.coef, started.coef)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_newton_left_far_from_the_optimum_is_finished_by_fista(n_classes) -> None:
    """One Newton step cannot converge: the fallback must still reach sklearn's optimum."""
    X, y = make_data(400, 60, n_classes, seed=5)
    Cs = [0.1, 1.0]
    fit = TorchSolver(method="newton", max_iter=1).fit_path(X, y, n_classes, Cs)
    ref = SklearnSolver(tol=1e-8, saga_tol=1e-6, saga_max_iter=20000).fit_path(X, y, n_classes, Cs)
    assert np.all(fit.rel_gap <= 1e-3)
    assert np.all(fit.n_iter > 1)          # the FISTA iterations are counted
    for ci, C in enumerate(Cs):
        f = l1_logistic_objective(X, y, n_classes, fit.coef[0, ci], fit.intercept[0, ci], C)
        f_sk = l1_logistic_objective(X, y, n_classes, ref.coef[0, ci], ref.intercept[0, ci], C)
        assert abs(f - f_sk) <= 1e-3 * f_sk, (C, f, f_sk)


def test_a_support_beyond_the_working_set_cap_goes_on_with_fista(caplog) -> None:
    """Newton hands over a problem whose nonzeros fill its capped working set; sklearn's optimum holds."""
    X, y = make_data(400, 60, 2, seed=6)
    Cs = [0.01, 1.0]
    with caplog.at_level("DEBUG", logger="stcstore.probe.solvers.torch_newton"):
        fit = TorchSolver(method="newton", min_working_set=8, max_working_set=12).fit_path(X, y, 2, Cs)
    ref = SklearnSolver(tol=1e-8, saga_tol=1e-6, saga_max_iter=20000).fit_path(X, y, 2, Cs)
    assert np.count_nonzero(ref.coef[0, 1]) > 12          # C = 1 needs more than the cap
    assert "FISTA takes them over" in caplog.text
    assert fit.rel_gap[0, 1] <= 1e-3
    for ci, C in enumerate(Cs):
        f = l1_logistic_objective(X, y, 2, fit.coef[0, ci], fit.intercept[0, ci], C)
        f_sk = l1_logistic_objective(X, y, 2, ref.coef[0, ci], ref.intercept[0, ci], C)
        assert abs(f - f_sk) <= 1e-3 * f_sk, (C, f, f_sk)


def test_auto_method_takes_newton_for_a_design_wider_than_the_newton_system() -> None:
    """Rows and columns beyond the largest Newton system: the capped working set decides, not d or n."""
    s = TorchSolver()
    assert s._method_for(1, 10_247, 9_216) == "newton"       # the all-layers-concat refit of MiniLM ffn
    assert s._method_for(3, 10_247, 9_216) == "fista"        # 3 x 3072 coordinates are over the limit
    assert TorchSolver(max_working_set=2048)._method_for(3, 10_247, 9_216) == "newton"
    assert s._method_for(12, 500, 100) == "fista"            # too many logits for K^2 Hessian blocks


# ----------------------------------------------------------------------------- memory budget


def test_tiny_memory_budget_chunks_rows_with_the_same_solution() -> None:
    """A budget far below the design forces many row chunks: same coefficients, sklearn's objective."""
    X, y = make_data(300, 60, 2, seed=0)
    Cs = [0.01, 0.1, 1.0]
    # a tight tol and no settled-objective stop, so both fits sit at the optimum (the float32
    # floor) rather than wherever a stopping test caught them
    whole = TorchSolver(tol=1e-7, settle_tol=0)
    ref = whole.fit_path(X, y, 2, Cs)
    assert whole.last_layout["n_chunks"] == 1
    tiny = TorchSolver(tol=1e-7, settle_tol=0, memory_budget=60_000)     # the design alone is 72,000 bytes
    fit = tiny.fit_path(X, y, 2, Cs)
    assert tiny.last_layout["n_chunks"] >= 5 and tiny.last_layout["rows"] < 300
    np.testing.assert_allclose(fit.coef, ref.coef, atol=1e-6)
    np.testing.assert_allclose(fit.intercept, ref.intercept, atol=1e-6)
    sk = SklearnSolver(tol=1e-8).fit_path(X, y, 2, Cs)
    for ci, C in enumerate(Cs):
        f = l1_logistic_objective(X, y, 2, fit.coef[0, ci], fit.intercept[0, ci], C)
        f_sk = l1_logistic_objective(X, y, 2, sk.coef[0, ci], sk.intercept[0, ci], C)
        assert abs(f - f_sk) <= 1e-3 * f_sk, (C, f, f_sk)


@pytest.mark.parametrize("method", ["newton", "fista"])
def test_tiny_memory_budget_three_classes_with_masks(method) -> None:
    """Chunked Hessians, logits and X^T R over masks and three classes reach sklearn's optimum."""
    X, y = make_data(300, 40, 3, seed=1)
    Cs = [0.05, 0.5]
    masks = _nested_masks(40, [10, 40])
    solver = TorchSolver(method=method, memory_budget=40_000)
    fit = solver.fit_path(X, y, 3, Cs, masks=masks)
    assert solver.last_layout["n_chunks"] >= 5
    sk = SklearnSolver(saga_tol=1e-6, saga_max_iter=20000).fit_path(X, y, 3, Cs, masks=masks)
    for m in range(2):
        for ci, C in enumerate(Cs):
            f = l1_logistic_objective(X, y, 3, fit.coef[m, ci], fit.intercept[m, ci], C)
            f_sk = l1_logistic_objective(X, y, 3, sk.coef[m, ci], sk.intercept[m, ci], C)
            assert abs(f - f_sk) <= 1e-3 * f_sk, (m, C, f, f_sk)


def test_fit_path_pins_float32_matmul_precision() -> None:
    """Inside a fit matmuls are true float32 (no TF32); the caller's setting is back afterwards."""
    seen = []
    X, y = make_data(60, 8, 2, seed=6)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        import stcstore.probe.solvers.torch_solver as ts

        real = ts._prepare

        def spy(*a, **k):
            seen.append(torch.get_float32_matmul_precision())
            return real(*a, **k)

        ts._prepare = spy
        try:
            TorchSolver().fit_path(X, y, 2, [0.1])
        finally:
            ts._prepare = real
        assert seen == ["highest"]
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_memory_budget_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="memory_budget"):
        TorchSolver(memory_budget=0)


def test_settled_needs_a_clean_full_step_and_a_small_change() -> None:
    """Newton stops on a settled objective only after a clean full step that moved it by <= settle_tol."""
    from stcstore.probe.solvers.torch_newton import _settled

    before = torch.tensor([10.0, 10.0, 10.0, 10.0], dtype=torch.float64)
    now = torch.tensor([10.0 - 5e-6, 10.0 - 5e-6, 9.0, 10.0 - 2e-5], dtype=torch.float64)
    clean = torch.tensor([True, False, True, True])
    assert _settled(clean, before, now, 1e-6).tolist() == [True, False, False, False]
    # before the first step every problem has an infinite "before": never settled
    assert not bool(_settled(clean, torch.full((4,), float("inf"), dtype=torch.float64), now, 1e-6).any())


def test_settled_stop_keeps_the_objective_of_a_gap_only_fit() -> None:
    """On near-duplicate columns the gap lags the objective: a settled objective stops a problem
    (no later than the gap would) within settle_tol of the gap-only fit and of sklearn.

    Since the settled stop also asks for an exactly solved model, it saves a step or two here,
    or none: the assertion on steps is that it costs none."""
    rng = np.random.default_rng(3)
    X, y = make_data(600, 150, 2, seed=2)
    X = np.concatenate([X, X + 0.05 * rng.normal(size=X.shape).astype(np.float32)], axis=1)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    Cs = [0.1, 1.0, 10.0]
    gap_only = TorchSolver(settle_tol=0).fit_path(X, y, 2, Cs)
    fit = TorchSolver().fit_path(X, y, 2, Cs)
    assert fit.settled.any() and not gap_only.settled.any()
    assert fit.n_iter.sum() <= gap_only.n_iter.sum()
    rel = np.abs(fit.objective - gap_only.objective) / gap_only.objective
    assert rel.max() <= 1e-5, rel
    sk = SklearnSolver(tol=1e-8).fit_path(X, y, 2, Cs)
    for ci, C in enumerate(Cs):
        f = l1_logistic_objective(X, y, 2, fit.coef[0, ci], fit.intercept[0, ci], C)
        f_sk = l1_logistic_objective(X, y, 2, sk.coef[0, ci], sk.intercept[0, ci], C)
        assert f <= f_sk * (1 + 1e-4), (C, f, f_sk)


def test_settle_tol_is_checked_and_named_in_the_cache_key() -> None:
    """A negative settle_tol is refused; the repr (the layer-fit cache key) names it."""
    with pytest.raises(ConfigError, match="settle_tol"):
        TorchSolver(settle_tol=-1)
    assert "settle_tol=1e-06" in repr(TorchSolver())
    assert repr(TorchSolver(settle_tol=0)) != repr(TorchSolver())


def _lasso_model_cd(H: np.ndarray, c: np.ndarray, pen: np.ndarray, sweeps: int = 2000) -> np.ndarray:
    """argmin 0.5 v'Hv + c'v + sum pen |v| by cyclic coordinate descent in float64 (an independent reference)."""
    v, Hv = np.zeros(len(c)), np.zeros(len(c))
    for _ in range(sweeps):
        moved = 0.0
        for j in range(len(c)):
            g = Hv[j] - H[j, j] * v[j] + c[j]
            nv = -np.sign(g) * max(abs(g) - pen[j], 0.0) / H[j, j]
            if nv != v[j]:
                Hv += H[:, j] * (nv - v[j])
                moved = max(moved, abs(nv - v[j]))
                v[j] = nv
        if moved < 1e-12:
            break
    return v


def _newton_model_at_zero(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, c, pen) of the binary Newton model at w = 0, C = 1, over [X, 1] (the intercept unpenalised)."""
    Xa = np.concatenate([X, np.ones((len(X), 1))], axis=1).astype(np.float64)
    H = 0.25 * Xa.T @ Xa + 1e-6 * np.eye(Xa.shape[1])
    return H, Xa.T @ (0.5 - y), np.r_[np.ones(X.shape[1]), 0.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polish_recovers_from_an_inner_solution_with_wrong_signs(seed) -> None:
    """Ten inner iterations on near-duplicate columns leave a support with many wrong signs; the
    polish (re-solving until no sign flips) closes at least 90% of the model gap to the exact minimiser."""
    from stcstore.probe.solvers.torch_model import _inner_fista, _model_value, _polish

    rng = np.random.default_rng(seed)
    X, y = make_data(400, 60, 2, seed=seed)
    X = np.concatenate([X, X + 0.05 * rng.normal(size=X.shape).astype(np.float32)], axis=1)
    H, c, pen = _newton_model_at_zero((X - X.mean(0)) / X.std(0), y)
    Ht, ct, pt = (torch.tensor(a, dtype=torch.float32) for a in (H, c, pen))
    best = _model_value(Ht, ct, pt, torch.tensor(_lasso_model_cd(H, c, pen), dtype=torch.float32))
    v, _ = _inner_fista(Ht, ct, pt, torch.zeros_like(ct), 10, 0.0)
    before = _model_value(Ht, ct, pt, v) - best
    after = _model_value(Ht, ct, pt, _polish(Ht, ct, pt, v)) - best
    assert before > 1.0                      # the inner solution is far from the minimiser
    assert -1e-3 <= after <= 0.1 * before, (before, after)


def test_model_kkt_is_zero_at_the_exact_minimiser_only() -> None:
    """The model-optimality residual that lets a step count as exact: ~0 at the coordinate-descent
    minimiser, large at an inner solution of three iterations."""
    from stcstore.probe.solvers.torch_model import _inner_fista, _model_kkt

    H, c, pen = _newton_model_at_zero(*make_data(300, 40, 2, seed=4))
    Ht, ct, pt = (torch.tensor(a, dtype=torch.float32) for a in (H, c, pen))
    exact = torch.tensor(_lasso_model_cd(H, c, pen), dtype=torch.float32)
    assert _model_kkt(Ht, ct, pt, exact) <= 1e-2
    rough, _ = _inner_fista(Ht, ct, pt, torch.zeros_like(ct), 3, 0.0)
    assert _model_kkt(Ht, ct, pt, rough) > 0.1
