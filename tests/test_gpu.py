"""GPU checks (`pytest -m gpu`, run by scripts/gpu_check.sh): extraction, solvers and predict on CUDA.

Skipped as a whole without a CUDA GPU. Every expected number comes from an independent
computation: a float64 forward of plain transformers on the CPU, the CPU code path, sklearn.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU (these tests run on one: scripts/gpu_check.sh)", allow_module_level=True)

from _stc_helpers import hand_artifact  # noqa: E402
from conftest import REPO  # noqa: E402
from stcstore.store import open_run  # noqa: E402

pytestmark = pytest.mark.gpu

POOLS = ("mean", "max", "first", "last")
TEXTS = [
    "a gripping, beautifully shot film with a moving score",
    "dull",
    "the plot wanders for two hours and the jokes never land, though the lead tries hard " * 2,
    "fun",
    "an uneven but often funny comedy",
    "i wanted to like it more than i did",
]


def _csv(path: Path, texts: list[str]) -> Path:
    import pandas as pd

    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(len(texts))]}).to_csv(path, index=False)
    return path


def _extract(store: Path, model: str, data: Path, *, device: str, dtype: str, run: str = "r") -> dict:
    """Extract through the library; return {(site, pool): (layers, rows, width) float64}."""
    from stcstore.config import ExtractConfig
    from stcstore.extract import extract

    extract(ExtractConfig(model=model, data=str(data), store=str(store), run=run, device=device, dtype=dtype,
                          batch_size=4, max_length=64, progress=False))
    r = open_run(store, run)
    return {(site, pool): r.read("train", site, pool).astype(np.float64) for site in r.sites for pool in r.pools}


def _float64_reference(model_dir: Path, texts: list[str], max_length: int = 64) -> dict:
    """Pooled activations of a float64 forward of plain transformers on the CPU, one text at a time."""
    import transformers as T

    from stcstore.models import architecture_for, get_module

    tok = T.AutoTokenizer.from_pretrained(model_dir)
    model = T.AutoModel.from_pretrained(model_dir).double().eval()
    blocks = get_module(model, architecture_for(model.config.model_type).blocks)
    ffn_mod = architecture_for(model.config.model_type).ffn_out
    out: dict = {}
    for text in texts:
        enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
        ffn: list = []
        hooks = [get_module(b, ffn_mod).register_forward_pre_hook(lambda m, a: ffn.append(a[0][0])) for b in blocks]
        try:
            with torch.no_grad():
                hs = [h[0] for h in model(**enc, output_hidden_states=True).hidden_states]
        finally:
            for h in hooks:
                h.remove()
        for site, acts in (("hidden", hs), ("ffn", ffn)):
            for pool in POOLS:
                f = {"mean": lambda a: a.mean(0), "max": lambda a: a.max(0).values, "first": lambda a: a[0],
                     "last": lambda a: a[-1]}[pool]
                out.setdefault((site, pool), []).append(torch.stack([f(a) for a in acts]).numpy())
    return {k: np.stack(v, axis=1) for k, v in out.items()}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """MiniLM's folder: the bundled model, or STCSTORE_GPU_MODEL_DIR (the slim check's MiniLM-shaped
    BERT with random weights, scripts/gpu_assets.py: every test compares two computations of one model)."""
    if os.environ.get("STCSTORE_GPU_MODEL_DIR"):
        return Path(os.environ["STCSTORE_GPU_MODEL_DIR"])
    from stcstore.models import bundled_model_path

    return bundled_model_path("minilm")[0]


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory) -> Path:
    return _csv(tmp_path_factory.mktemp("gpu") / "texts.csv", TEXTS)


@pytest.fixture(scope="module")
def minilm_ref(minilm_dir) -> dict:
    return _float64_reference(minilm_dir, TEXTS)


# -- extraction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [("bfloat16", 3e-2), ("float16", 1e-2)])
def test_extract_cuda_half_precision_matches_float64_forward(tmp_path, texts_csv, minilm_dir, minilm_ref, dtype, tol):
    """bf16 / fp16 autocast forward, pooling in float32, stored float16: close to a float64 forward."""
    got = _extract(tmp_path / "s.zarr", str(minilm_dir), texts_csv, device="cuda", dtype=dtype)
    meta = open_run(tmp_path / "s.zarr").meta["extract"]
    assert meta["compute_dtype"] == dtype
    for key, ref in minilm_ref.items():
        assert got[key].shape == ref.shape, key
        for layer in range(ref.shape[0]):
            err = np.linalg.norm(got[key][layer] - ref[layer]) / np.linalg.norm(ref[layer])
            assert err <= tol, (key, layer, err)


def test_extract_cuda_float32_equals_cpu(tmp_path, texts_csv, minilm_dir):
    """float32 on CUDA (no TF32) stores what the CPU stores, within 1e-4."""
    cpu = _extract(tmp_path / "cpu.zarr", str(minilm_dir), texts_csv, device="cpu", dtype="float32")
    gpu = _extract(tmp_path / "gpu.zarr", str(minilm_dir), texts_csv, device="cuda", dtype="float32")
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], atol=1e-4, rtol=1e-4, err_msg=str(key))


def test_one_rank_torchrun_extract_on_cuda(tmp_path, texts_csv, minilm_dir):
    """`torchrun --nproc-per-node 1 -m stcstore -- extract --device cuda` writes the single-process store."""
    want = _extract(tmp_path / "ref.zarr", str(minilm_dir), texts_csv, device="cuda", dtype="float32")
    store = tmp_path / "tr.zarr"
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc-per-node", "1", "-m", "stcstore", "--", "extract", "--model", str(minilm_dir),
           "--data", str(texts_csv), "--store", str(store), "--run", "r", "--device", "cuda", "--dtype", "float32",
           "--batch-size", "4", "--max-length", "64", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = open_run(store, "r")
    assert r.is_complete() and "cuda" in " ".join(res.stderr.split())
    for key, values in want.items():
        np.testing.assert_allclose(r.read("train", *key).astype(np.float64), values, atol=1e-5, err_msg=str(key))


# -- solvers -------------------------------------------------------------------------------------

def _data(n: int, d: int, n_classes: int, seed: int = 0):
    from test_solvers import make_data

    return make_data(n, d, n_classes, seed=seed)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_torch_solver_on_cuda_reaches_the_cpu_objective(n_classes):
    from stcstore.probe.solvers import l1_logistic_objective
    from stcstore.probe.solvers.torch_solver import TorchSolver

    X, y = _data(1500, 300, n_classes)
    Cs = [0.01, 0.1, 1.0]
    cpu = TorchSolver(device="cpu").fit_path(X, y, n_classes, Cs)
    gpu = TorchSolver(device="cuda").fit_path(X, y, n_classes, Cs)
    for ci, C in enumerate(Cs):
        f_cpu = l1_logistic_objective(X, y, n_classes, cpu.coef[0, ci], cpu.intercept[0, ci], C)
        f_gpu = l1_logistic_objective(X, y, n_classes, gpu.coef[0, ci], gpu.intercept[0, ci], C)
        assert f_gpu <= f_cpu * (1 + 1e-3), (C, f_gpu, f_cpu)


def test_torch_solver_memory_budget_chunks_on_cuda():
    """A device budget below the design: row chunks streamed to the GPU, peak within the budget, same optimum."""
    from stcstore.probe.solvers import l1_logistic_objective
    from stcstore.probe.solvers.torch_solver import TorchSolver

    X, y = _data(40_000, 256, 2, seed=1)          # 41 MB of float32 design
    Cs = [0.01, 0.1]
    ref = TorchSolver(device="cuda").fit_path(X, y, 2, Cs)
    budget = 12 << 20
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    solver = TorchSolver(device="cuda", memory_budget=budget)
    fit = solver.fit_path(X, y, 2, Cs)
    peak = torch.cuda.max_memory_allocated() - base
    assert solver.last_layout["n_chunks"] >= 4, solver.last_layout
    assert peak <= 1.25 * budget, (peak, budget)
    for ci, C in enumerate(Cs):
        f = l1_logistic_objective(X, y, 2, fit.coef[0, ci], fit.intercept[0, ci], C)
        f_ref = l1_logistic_objective(X, y, 2, ref.coef[0, ci], ref.intercept[0, ci], C)
        assert abs(f - f_ref) <= 1e-3 * f_ref, (C, f, f_ref)


def test_probe_with_a_small_device_budget_on_cuda_picks_the_same_classifier(tmp_path):
    """`probe --device cuda --memory-budget 256KiB` (below the concat design, near one fit's): the same winner."""
    from stcstore.config import ProbeConfig
    from stcstore.probe import run_probe
    from test_probe import build_store

    store = build_store(tmp_path / "s.zarr", {"train": 1200}, sites=("hidden", "ffn"), pools=("mean",))
    reports = {}
    for name, budget in (("free", None), ("tight", "256KiB")):
        cfg = ProbeConfig(store=str(store), label="sentiment", split_column="fold", backend="torch", device="cuda",
                          name=name, c_grid=(0.03, 0.3), eta_grid=(0.5, 1.0), memory_budget=budget,
                          progress=False, plots=False)
        reports[name] = run_probe(cfg).report
    free, tight = reports["free"]["stc"], reports["tight"]["stc"]
    assert reports["tight"]["device"].startswith("cuda")
    for key in ("site", "pool", "eta", "k", "C", "n_features"):
        assert tight[key] == free[key], key
    assert tight["val"] == pytest.approx(free["val"], abs=1e-9) and tight["test"] == pytest.approx(free["test"], abs=1e-9)


def test_cuml_matches_sklearn():
    pytest.importorskip("cuml")
    from stcstore.probe.solvers import l1_logistic_objective
    from stcstore.probe.solvers.cuml_solver import CumlSolver
    from stcstore.probe.solvers.sklearn_solver import SklearnSolver

    X, y = _data(1200, 150, 2, seed=3)
    Cs = [0.03, 0.3]
    sk = SklearnSolver(tol=1e-8).fit_path(X, y, 2, Cs)
    cu = CumlSolver().fit_path(X, y, 2, Cs)
    for ci, C in enumerate(Cs):
        f_sk = l1_logistic_objective(X, y, 2, sk.coef[0, ci], sk.intercept[0, ci], C)
        f_cu = l1_logistic_objective(X, y, 2, cu.coef[0, ci], cu.intercept[0, ci], C)
        assert abs(f_cu - f_sk) <= 1e-3 * f_sk, (C, f_cu, f_sk)


# -- predict -------------------------------------------------------------------------------------

def test_predict_early_exit_on_cuda_equals_cpu(tmp_path, minilm_dir):
    """fp16 early-exit predict on CUDA gives the CPU's float32 decisions within fp16 tolerance."""
    from stcstore.classifier.predictor import Predictor

    art = hand_artifact(minilm_dir, "mean", [("hidden", 1, 5), ("ffn", 2, 17), ("hidden", 3, 100)], max_length=64)
    folder = art.save(tmp_path / "clf")
    cpu = Predictor.load(folder, device="cpu", dtype="float32")
    gpu = Predictor.load(folder, device="cuda", dtype="float16")
    assert gpu.blocks_run_ == 3 < gpu.n_layers_          # blocks 3..5 never run
    d_cpu, d_gpu = cpu.decision_function(TEXTS), gpu.decision_function(TEXTS)
    np.testing.assert_allclose(d_gpu, d_cpu, atol=2e-2 * (1 + np.abs(d_cpu).max()))
    sure = np.abs(d_cpu) > 0.1
    assert (gpu.predict(TEXTS)[sure] == cpu.predict(TEXTS)[sure]).all()
