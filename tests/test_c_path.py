"""The C-path stopping rule (probe --c-stop): val accuracy against hand-counted rows and its standard error."""

from __future__ import annotations

import numpy as np
import pytest

from stcstore.probe.c_path import ValStop
from stcstore.probe.solvers.lazy import StandardizedColumns

N = 400


def _val_rows(flipped: list[int]) -> tuple[StandardizedColumns, np.ndarray]:
    """400 val rows; column j is the label's sign with its first flipped[j] rows wrong, so the model
    w_j = 1 (every other weight 0, intercept 0) is right on exactly N - flipped[j] rows."""
    y = np.tile([0, 1], N // 2)
    sign = np.where(y == 1, 1.0, -1.0)
    X = np.stack([np.where(np.arange(N) < f, -sign, sign) for f in flipped], axis=1).astype(np.float32)
    return StandardizedColumns([(X, np.zeros(len(flipped)), np.ones(len(flipped)))]), y


def _models(cols: list[int], d: int) -> tuple[np.ndarray, np.ndarray]:
    coef = np.zeros((len(cols), 1, d), np.float32)
    for i, j in enumerate(cols):
        coef[i, 0, j] = 1.0
    return coef, np.zeros((len(cols), 1), np.float32)


@pytest.mark.parametrize("n_se, stops_at", [(1.0, 0.775), (2.0, 0.755)])
def test_a_path_stops_once_val_is_n_se_standard_errors_below_its_best(n_se, stops_at) -> None:
    # accuracies 0.80, 0.785, 0.775, 0.755 (80, 86, 90, 98 rows wrong of 400); at best 0.80 the
    # binomial standard error is sqrt(0.8 * 0.2 / 400) = 0.02
    accs = [0.80, 0.785, 0.775, 0.755]
    X, y = _val_rows([round(N * (1 - a)) for a in accs])
    rule = ValStop(X, y, n_se, n_masks=1, n_C=len(accs))
    said = []
    for ci, _ in enumerate(accs):
        coef, icpt = _models([ci], len(accs))
        said.append(bool(rule(ci, np.array([0]), coef, icpt)[0]))
    expected = [a < 0.80 - n_se * 0.02 for a in accs]
    assert said == expected
    assert said.index(True) == accs.index(stops_at)


def test_each_mask_keeps_its_own_best() -> None:
    # mask 0 peaks at 0.90, mask 1 at 0.70; a second C at 0.80 for both: far below mask 0's best
    # (SE 0.015), above mask 1's
    X, y = _val_rows([40, 120, 80])
    rule = ValStop(X, y, 1.0, n_masks=2, n_C=3)
    assert rule(0, np.array([0, 1]), *_models([0, 1], 3)).tolist() == [False, False]
    assert rule(1, np.array([0, 1]), *_models([2, 2], 3)).tolist() == [True, False]
    # only mask 1 goes on: the rule is asked about it alone, by its index
    assert rule(2, np.array([1]), *_models([1], 3)).tolist() == [True]
    np.testing.assert_allclose(rule.best, [0.90, 0.80])


def test_a_solver_without_stop_fits_every_c() -> None:
    """A solver of one's own whose fit_path has no `stop` (run_probe takes any) is never passed one."""
    from stcstore.probe.blocks import fit_path
    from stcstore.probe.solvers.sklearn_solver import SklearnSolver

    class Plain:
        def fit_path(self, X, y, n_classes, Cs, masks=None, init=None):
            return SklearnSolver().fit_path(X, y, n_classes, Cs, masks=masks, init=init)

    def never(*args):
        raise AssertionError("a solver without `stop` was given one")

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(np.int64)
    coef, icpt, fitted = fit_path(Plain(), X, y, 2, [0.1, 1.0], None, stop=never)
    assert fitted.shape == (1, 2) and fitted.all() and np.any(coef[0, 1] != 0)
