"""A Newton step's large models side by side on CPU threads: one intra-op thread each, the process
setting left as it was, and the same optimum as one model at a time (checked against scikit-learn)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from stcstore.probe.solvers import l1_logistic_objective
from stcstore.probe.solvers import torch_data, torch_threads
from stcstore.probe.solvers.lazy import StandardizedColumns
from stcstore.probe.solvers.sklearn_solver import SklearnSolver
from stcstore.probe.solvers.torch_solver import TorchSolver
from stcstore.probe.solvers.torch_threads import ProblemThreads
from test_solvers import make_data

CS = (0.1, 1.0)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_pool_threads_run_single_threaded_and_leave_the_process_setting(two_threads) -> None:
    with ProblemThreads() as pool:
        assert pool.n_threads == 2
        got = pool.map(lambda _: (threading.get_ident(), torch.get_num_threads()), range(16))
    assert {n for _, n in got} == {1}
    assert len({t for t, _ in got}) <= 2 and threading.get_ident() not in {t for t, _ in got}
    assert torch.get_num_threads() == 2
    fresh: list[int] = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [2]          # threads started later get the process's setting, not the pool's


def test_threads_are_worth_it_for_two_large_models_only() -> None:
    big = torch_threads.THREAD_MIN_WS
    assert ProblemThreads(2).worth([big + 90, big, 3])
    assert not ProblemThreads(2).worth([big + 90, big - 1, 3])
    assert not ProblemThreads(1).worth([big, big])


def _counting_map(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = ProblemThreads.map

    def counting(self, fn, items):
        items = list(items)
        calls.append(len(items))
        return real(self, fn, items)

    monkeypatch.setattr(ProblemThreads, "map", counting)
    return calls


@pytest.mark.parametrize("n_classes", [2, 3])
def test_threaded_steps_reach_the_optimum_of_sequential_ones(n_classes, two_threads, monkeypatch) -> None:
    X, y = make_data(500, 160, n_classes, seed=3)
    masks = np.zeros((3, X.shape[1]), dtype=bool)
    for i, m in enumerate((60, 110, 160)):
        masks[i, :m] = True
    monkeypatch.setattr(torch_threads, "THREAD_MIN_WS", 1)     # every step of these small models on the threads
    calls = _counting_map(monkeypatch)
    threaded = TorchSolver(tol=1e-6).fit_path(X, y, n_classes, CS, masks=masks)
    assert calls and max(calls) == 3
    monkeypatch.setattr(torch_threads, "THREAD_MIN_WS", 10**9)
    calls.clear()
    one_by_one = TorchSolver(tol=1e-6).fit_path(X, y, n_classes, CS, masks=masks)
    assert not calls
    for u in range(3):
        cols = masks[u]
        sk = SklearnSolver(tol=1e-8).fit_path(X[:, cols], y, n_classes, CS)
        for ci, C in enumerate(CS):
            f_sk = l1_logistic_objective(X[:, cols], y, n_classes, sk.coef[0, ci], sk.intercept[0, ci], C)
            f_th = l1_logistic_objective(X, y, n_classes, threaded.coef[u, ci], threaded.intercept[u, ci], C)
            f_one = l1_logistic_objective(X, y, n_classes, one_by_one.coef[u, ci], one_by_one.intercept[u, ci], C)
            assert abs(f_th - f_sk) <= 1e-4 * f_sk, (u, C, f_th, f_sk)
            assert f_th == pytest.approx(f_one, rel=1e-5)
            assert not np.any(threaded.coef[u, ci][:, ~cols])      # nothing outside the mask


def test_a_streamed_design_builds_rows_on_each_thread_with_the_same_optimum(two_threads, monkeypatch) -> None:
    """A design built row chunk by row chunk (from raw float16 blocks, one in a scratch file): each
    thread builds its rows into its own buffer, and the optimum is the one of the design held whole."""
    from stcstore.probe.spill import RowFile

    X, y = make_data(400, 120, 2, seed=5)
    masks = np.ones((2, X.shape[1]), dtype=bool)
    masks[0, 60:] = False
    raw = X.astype(np.float16)
    monkeypatch.setattr(torch_threads, "THREAD_MIN_WS", 1)
    monkeypatch.setattr(torch_data, "STREAM_CHUNK_BYTES", 4096)
    calls = _counting_map(monkeypatch)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        spilled = RowFile.write(Path(tmp) / "b.raw", np.ascontiguousarray(raw[:, 70:]))
        design = StandardizedColumns([(raw[:, :70], np.zeros(70), np.ones(70)),
                                      (spilled, np.zeros(50), np.ones(50))])
        solver = TorchSolver(tol=1e-6)
        streamed = solver.fit_path(design, y, 2, CS, masks=masks)
        assert not solver.last_layout["resident"] and solver.last_layout["n_chunks"] > 1 and calls
        spilled.close()
    held = TorchSolver(tol=1e-6).fit_path(raw.astype(np.float32), y, 2, CS, masks=masks)
    for u in range(2):
        for ci, C in enumerate(CS):
            f_s = l1_logistic_objective(X, y, 2, streamed.coef[u, ci], streamed.intercept[u, ci], C)
            f_h = l1_logistic_objective(X, y, 2, held.coef[u, ci], held.intercept[u, ci], C)
            assert f_s == pytest.approx(f_h, rel=1e-4)


def test_threads_build_rows_of_a_streamed_design_into_buffers_of_their_own(monkeypatch) -> None:
    """Two threads each hold a row chunk of one streamed design while the other builds its own."""
    X, y = make_data(300, 50, 2, seed=1)
    monkeypatch.setattr(torch_data, "STREAM_CHUNK_BYTES", 4096)
    data = torch_data._prepare(StandardizedColumns([(X, np.zeros(50), np.ones(50))]), y, 2, torch.device("cpu"))
    assert data.source is not None and data.n_chunks > 1
    both = threading.Barrier(2)
    same: dict[str, bool] = {}

    def read(name: str, cols: list[int]) -> None:
        s, e, Xc = next(data.chunks(torch.as_tensor(cols)))
        both.wait(timeout=30)            # the other thread has built its chunk too
        same[name] = bool(np.array_equal(Xc.numpy(), X[s:e][:, cols]))

    go = [threading.Thread(target=read, args=("a", list(range(0, 20)))),
          threading.Thread(target=read, args=("b", list(range(30, 50))))]
    for t in go:
        t.start()
    for t in go:
        t.join()
    assert same == {"a": True, "b": True}
