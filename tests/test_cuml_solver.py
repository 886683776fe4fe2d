"""The cuml backend's wiring, run in CI through a stand-in `cuml` package backed by scikit-learn
(tests/fake_cuml): objectives against scikit-learn's, the empty mask, and a search end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stcstore.cli import app
from stcstore.probe.solvers import get_solver, l1_logistic_objective
from stcstore.probe.solvers.sklearn_solver import SklearnSolver
from test_probe import build_store
from test_solvers import make_data

FAKE = Path(__file__).parent / "fake_cuml"


@pytest.fixture
def standin(monkeypatch):
    """cuML replaced by the scikit-learn stand-in (and CuPy hidden, as on a machine without it)."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - a GPU machine tests the real cuML instead
        pytest.skip("CuPy is installed: the stand-in is for machines without a GPU")
    for mod in [m for m in sys.modules if m == "cuml" or m.startswith("cuml.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(FAKE))
    import cuml

    assert cuml.__version__ == "0.0-standin"
    yield
    # plain deletion: monkeypatch would put the stand-in back when it undoes its own changes,
    # and later tests would then see a cuML that is not there
    for mod in [m for m in sys.modules if m == "cuml" or m.startswith("cuml.")]:
        del sys.modules[mod]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_standin_backend_reproduces_sklearn_objective(standin, n_classes) -> None:
    X, y = make_data(300, 30, n_classes, seed=7)
    Cs = [0.05, 0.5]
    masks = np.zeros((3, 30), dtype=bool)
    masks[1, :10] = True
    masks[2] = True
    solver = get_solver("cuml")
    assert solver.name == "cuml" and solver.device == "cpu"      # NumPy checks: no CuPy here
    fit = solver.fit_path(X, y, n_classes, Cs, masks=masks)
    ref = SklearnSolver(tol=1e-8, saga_tol=1e-6, saga_max_iter=20000).fit_path(X, y, n_classes, Cs, masks=masks)
    assert fit.coef.shape == ref.coef.shape and np.all(fit.coef[1][..., 10:] == 0)
    for m in range(1, 3):
        for ci, C in enumerate(Cs):
            f = l1_logistic_objective(X, y, n_classes, fit.coef[m, ci], fit.intercept[m, ci], C)
            f_sk = l1_logistic_objective(X, y, n_classes, ref.coef[m, ci], ref.intercept[m, ci], C)
            assert abs(f - f_sk) <= 1e-3 * f_sk, (m, C, f, f_sk)
            # the backend's own (array-module) objective agrees with the float64 NumPy reference
            assert fit.objective[m, ci] == pytest.approx(f, rel=1e-5)
    # the empty mask is the intercept-only model, not an error
    assert np.all(fit.coef[0] == 0)
    counts = np.bincount(y, minlength=n_classes) / len(y)
    if n_classes == 2:
        np.testing.assert_allclose(fit.intercept[0, :, 0], math.log(counts[1] / counts[0]), atol=1e-6)
    else:
        lp = np.log(counts)
        np.testing.assert_allclose(fit.intercept[0], np.tile(lp - lp.mean(), (len(Cs), 1)), atol=1e-6)


def test_standin_backend_honours_a_stop_rule(standin) -> None:
    """A mask whose path the rule ends keeps its smaller Cs (sklearn's objective) and leaves the rest
    unfitted; the empty mask stops too."""
    X, y = make_data(300, 30, 2, seed=7)
    Cs = [0.5, 0.05, 0.2]
    masks = np.zeros((3, 30), dtype=bool)
    masks[1, :10] = True
    masks[2] = True
    calls = []

    def stop(ci, idx, coef, icpt):
        calls.append((ci, idx.tolist()))
        return np.array([m != 2 and ci == 2 for m in idx])       # masks 0 and 1 end after C = 0.2

    fit = get_solver("cuml").fit_path(X, y, 2, Cs, masks=masks, stop=stop)
    assert calls == [(1, [0]), (2, [0]), (1, [1]), (2, [1]), (1, [2]), (2, [2]), (0, [2])]
    np.testing.assert_array_equal(fit.fitted, [[False, True, True], [False, True, True], [True, True, True]])
    assert np.all(fit.coef[:2, 0] == 0) and np.all(fit.intercept[:2, 0] == 0) and np.all(fit.objective[:2, 0] == 0)
    ref = SklearnSolver(tol=1e-8).fit_path(X, y, 2, Cs, masks=masks)
    for m, ci in zip(*np.nonzero(fit.fitted)):
        f = l1_logistic_objective(X, y, 2, fit.coef[m, ci], fit.intercept[m, ci], Cs[ci])
        assert f == pytest.approx(ref.objective[m, ci], rel=1e-3)
        assert fit.objective[m, ci] == pytest.approx(f, rel=1e-5)


def test_standin_penalty_scale_check_is_quiet_for_the_right_scale(standin, caplog) -> None:
    X, y = make_data(300, 30, 2, seed=8)
    get_solver("cuml").fit_path(X, y, 2, [0.1, 1.0])
    assert "scales the penalty differently" not in caplog.text


def test_search_end_to_end_with_backend_cuml(standin, tmp_path) -> None:
    store = build_store(tmp_path / "s.zarr", {"train": 240}, sites=("hidden",), pools=("mean",))
    res = CliRunner().invoke(app, ["probe", "--store", str(store), "--label", "sentiment", "--split-column", "fold",
                                   "--name", "cu", "--backend", "cuml", "--c-grid", "0.1,1", "--eta-grid", "0.5,1",
                                   "--no-progress", "--no-plots"])
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    report = json.loads((store / "run0" / "probes" / "cu" / "report.json").read_text())
    assert report["backend"] == "cuml"
    assert report["stc"]["val"] > 0.7 and report["baselines"]["all_layers_concat"] is not None
