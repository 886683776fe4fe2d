"""`extract` end to end: stored arrays vs an independent forward, resume after kill -9, refusals."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from stcstore.store import open_run
from stcstore.store.lock import WriterLock
from _stc_helpers import assert_same_arrays, read_store

POOLS = ("mean", "max", "first", "last")


def _tree(path: Path) -> dict[str, str]:
    """Every file under a path with a hash of its content: a store 'snapshot'."""
    if not path.exists():
        return {}
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _ref_pooled(model_dir: Path, texts: list[str], max_length: int) -> dict:
    """Pooled hidden states and FFN activations computed with plain transformers, one row at a time."""
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(model_dir)
    model = T.AutoModel.from_pretrained(model_dir).eval()
    blocks = model.encoder.layer
    out: dict = {}
    for text in texts:
        enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
        ffn = []
        hooks = [b.output.dense.register_forward_pre_hook(lambda m, a: ffn.append(a[0][0].numpy())) for b in blocks]
        with torch.no_grad():
            hs = [h[0].numpy() for h in model(**enc, output_hidden_states=True).hidden_states]
        for h in hooks:
            h.remove()
        for site, acts in (("hidden", hs), ("ffn", ffn)):
            for pool in POOLS:
                f = {"mean": lambda a: a.mean(0), "max": lambda a: a.max(0), "first": lambda a: a[0], "last": lambda a: a[-1]}[pool]
                out.setdefault((site, pool), []).append(np.stack([f(a) for a in acts]))
    return {k: np.stack(v, axis=1) for k, v in out.items()}  # (layers, rows, width)


# -- correctness through the CLI on a tiny model ------------------------------------------------

def test_tiny_bert_store_matches_independent_forward(tiny_model, review_csv, tmp_path):
    model_dir = tiny_model("bert")
    store = tmp_path / "s.zarr"
    res = run_cli("extract", "--model", str(model_dir), "--data", str(review_csv), "--store", str(store),
                  "--chunk-rows", "16", "--batch-size", "5", "--max-length", "24", "--no-progress")
    assert res.returncode == 0, res.stderr
    r = open_run(store)
    assert r.splits == ["train"] and r.n_rows("train") == 150 and r.is_complete()
    import pandas as pd

    df = pd.read_csv(review_csv)
    ref = _ref_pooled(model_dir, df["text"].tolist(), 24)
    for (site, pool), want in ref.items():
        got = r.read("train", site, pool)
        assert got.dtype == np.float16 and got.shape == want.shape
        # rows come back in source order despite length sorting inside windows
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3, err_msg=f"{site}/{pool}")
    np.testing.assert_array_equal(r.column("train", "label"), df["label"].to_numpy().astype(str))
    np.testing.assert_array_equal(r.column("train", "score"), df["score"].to_numpy())
    np.testing.assert_array_equal(r.row_ids("train"), np.arange(150))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lengths = [len(tok(t)["input_ids"]) for t in df["text"]]
    np.testing.assert_array_equal(r.n_tokens("train"), np.minimum(lengths, 24))
    truncated = sum(l > 24 for l in lengths)
    assert truncated > 0
    assert sum(rec["truncated"] for rec in r.window_records("train").values()) == truncated
    info = run_cli("info", "--store", str(store))
    assert info.returncode == 0 and "complete" in info.stdout and "ffn" in info.stdout


def test_float32_dtype_stores_full_precision(tiny_model, review_csv, tmp_path):
    store = tmp_path / "s.zarr"
    res = run_cli("extract", "--model", str(tiny_model("gpt2")), "--data", str(review_csv), "--store", str(store),
                  "--dtype", "float32", "--limit", "20", "--pool", "mean", "--site", "hidden", "--no-progress")
    assert res.returncode == 0, res.stderr
    r = open_run(store)
    assert r.read("train", "hidden", "mean").dtype == np.float32
    assert r.pools == ("mean",) and r.sites == ("hidden",)


def test_float16_overflow_is_refused_not_stored_as_inf(tiny_model, review_csv, tmp_path):
    """Scale one weight so an activation exceeds 65504: extract must fail clearly, never write inf."""
    import transformers as T

    src = tiny_model("bert")
    big = tmp_path / "big"
    model = T.AutoModel.from_pretrained(src)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.bias += 1e6
    model.save_pretrained(big)
    T.AutoTokenizer.from_pretrained(src).save_pretrained(big)
    store = tmp_path / "s.zarr"
    res = run_cli("extract", "--model", str(big), "--data", str(review_csv), "--store", str(store), "--limit", "8", "--no-progress")
    assert res.returncode != 0
    assert "float16" in res.stderr and "--dtype float32" in res.stderr
    r = open_run(store)
    assert not r.is_complete()
    for site in r.sites:
        assert np.isfinite(r.read("train", site, "max").astype(np.float32)).all()


# -- resume after kill -9 -----------------------------------------------------------------------

def _extract_cmd(model_dir, data, store):
    return [sys.executable, "-m", "stcstore", "extract", "--model", str(model_dir), "--data", str(data),
            "--store", str(store), "--chunk-rows", "8", "--batch-size", "3", "--no-progress"]


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory, minilm_dir):
    """A tiny BERT large enough that a window takes measurable time, so kills land mid-run."""
    import transformers as T

    torch.manual_seed(1)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
    folder = tmp_path_factory.mktemp("medium-bert")
    T.AutoModel.from_config(cfg).save_pretrained(folder)
    T.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_is_bitwise_equal(medium_model, review_csv, tmp_path):
    ref_store = tmp_path / "ref.zarr"
    subprocess.run(_extract_cmd(medium_model, review_csv, ref_store), check=True, capture_output=True, cwd=REPO)
    reference = read_store(ref_store)

    store = tmp_path / "killed.zarr"
    progress = store / "medium-bert0__reviews" / "_progress" / "train"
    rng = random.Random(1234)
    n_windows = (150 + 7) // 8
    kills = 0
    # kill once during start-up/creation, then at random committed-window counts
    targets = [None] + sorted(rng.sample(range(1, n_windows - 1), 3))
    for target in targets:
        proc = subprocess.Popen(_extract_cmd(medium_model, review_csv, store), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            done = len(list(progress.glob("w*.json"))) if progress.is_dir() else 0
            if (target is None and (store / "zarr.json").exists()) or (target is not None and done >= target):
                time.sleep(rng.uniform(0, 0.05))
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait()
    assert kills >= 3, "the kills must land while extract runs"
    done_before = len(list(progress.glob("w*.json")))
    assert done_before < n_windows
    final = subprocess.run(_extract_cmd(medium_model, review_csv, store), capture_output=True, text=True, cwd=REPO)
    assert final.returncode == 0, final.stderr
    assert_same_arrays(read_store(store), reference, " after resume")
    assert open_run(store).is_complete()


# -- refusals leave the store unchanged ---------------------------------------------------------

@pytest.fixture(scope="module")
def small_store(tmp_path_factory, tiny_model, review_csv):
    store = tmp_path_factory.mktemp("st") / "s.zarr"
    res = run_cli("extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--store", str(store),
                  "--run", "r1", "--limit", "30", "--max-length", "32", "--no-progress")
    assert res.returncode == 0, res.stderr
    return store


def _assert_one_line_exit2(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_second_writer_refused(small_store, tiny_model, review_csv):
    with WriterLock(small_store / "r1", "r1"):  # this test process is the first writer
        before = _tree(small_store)
        res = run_cli("extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--store", str(small_store),
                      "--run", "r1", "--limit", "30", "--max-length", "32", "--no-progress")
        after = _tree(small_store)
    _assert_one_line_exit2(res, "being written")
    assert after == before


def test_changed_max_length_refused(small_store, tiny_model, review_csv):
    before = _tree(small_store)
    res = run_cli("extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--store", str(small_store),
                  "--run", "r1", "--limit", "30", "--max-length", "16", "--no-progress")
    _assert_one_line_exit2(res, "max_length: 32 -> 16", "--run")
    assert _tree(small_store) == before


def test_rerun_of_complete_run_is_a_no_op(small_store, tiny_model, review_csv):
    before = {k: v for k, v in _tree(small_store).items() if "_writer.lock" not in k}
    res = run_cli("extract", "--model", str(tiny_model("bert")), "--data", str(review_csv), "--store", str(small_store),
                  "--run", "r1", "--limit", "30", "--max-length", "32", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert {k: v for k, v in _tree(small_store).items() if "_writer.lock" not in k} == before


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory, minilm_dir):
    import transformers as T

    cfg = T.OPTConfig(vocab_size=30522, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                      word_embed_proj_dim=16, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("opt")
    T.AutoModel.from_config(cfg).save_pretrained(folder)
    T.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


def test_bad_inputs_one_line_exit2_store_unchanged(small_store, tiny_model, review_csv, unsupported_model, tmp_path):
    model, data, store = str(tiny_model("bert")), str(review_csv), str(small_store)
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("text,label\n")
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    cases = [
        (["--model", str(tmp_path / "nope"), "--data", data], "not found"),
        (["--model", "minilmx", "--data", data], "bundled alias"),
        (["--model", model, "--data", str(tmp_path / "missing.csv")], "not found"),
        (["--model", model, "--data", data, "--text-column", "body"], "--text-column"),
        (["--model", model, "--data", str(empty_csv)], "no rows"),
        (["--model", model, "--data", data, "--pool", "mean,median"], "median"),
        (["--model", model, "--data", data, "--site", "attn"], "attn"),
        (["--model", model, "--data", data, "--batch-size", "0"], "--batch-size"),
        (["--model", str(unsupported_model), "--data", data], "not supported"),
    ]
    before = _tree(small_store)
    for args, needle in cases:
        res = run_cli("extract", *args, "--store", store, "--run", "r2", "--no-progress")
        _assert_one_line_exit2(res, needle)
        assert _tree(small_store) == before, args
    res = run_cli("extract", "--model", model, "--data", data, "--store", str(a_file), "--no-progress")
    _assert_one_line_exit2(res, "is a file")
    assert a_file.read_text() == "not a store"


# -- the bundled models -------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_200_rotten_tomatoes_rows_end_to_end(tmp_path, minilm_dir):
    store = tmp_path / "rt.zarr"
    res = run_cli("extract", "--model", "minilm", "--data", "rotten_tomatoes", "--store", str(store), "--limit", "200", "--no-progress")
    assert res.returncode == 0, res.stderr
    r = open_run(store)
    assert r.name == "minilm__rotten_tomatoes" and r.is_complete()
    assert r.read("train", "hidden", "mean").shape == (7, 200, 384)
    assert r.read("train", "ffn", "max").shape == (6, 200, 1536)
    assert set(r.column("train", "label")) == {"fresh", "rotten"}
    from stcstore.data import load_source

    texts = load_source("rotten_tomatoes", limit=200).splits["train"].texts(0, 200)
    rows = [0, 57, 199]
    ref = _ref_pooled(minilm_dir, [texts[i] for i in rows], 512)
    for (site, pool), want in ref.items():
        got = r.read("train", site, pool)[:, rows].astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=3e-3, atol=3e-3, err_msg=f"{site}/{pool}")


@pytest.mark.slow
def test_smollm2_gguf_few_rows(tmp_path):
    store = tmp_path / "sm.zarr"
    res = run_cli("extract", "--model", "smollm2", "--data", "rotten_tomatoes", "--store", str(store), "--limit", "6",
                  "--pool", "mean,last", "--no-progress")
    assert res.returncode == 0, res.stderr
    r = open_run(store)
    assert r.read("train", "hidden", "last").shape == (31, 6, 576)
    assert r.read("train", "ffn", "mean").shape == (30, 6, 1536)
    # the last hidden entry is after the final RMSNorm: its rows have RMS near the norm weight's scale
    last = r.read("train", "hidden", "last")[30].astype(np.float32)
    assert np.isfinite(last).all() and last.std() > 0


# -- mixed precision: a bf16 / fp16 forward stores features at the float16 floor --------------------

def _ref_mean_autocast(model_dir: Path, texts: list[str], max_length: int, dtype: torch.dtype) -> dict:
    """{site: (layers, rows, width) float64}: mean-pooled activations of a plain transformers forward of
    each row alone, weights in `dtype` and the forward under CPU autocast in `dtype` (as extract's
    precision rule says), pooled here in float64. BERT layout (the tiny BERT and MiniLM)."""
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(model_dir)
    model = T.AutoModel.from_pretrained(model_dir, dtype=dtype).eval()
    out: dict[str, list] = {"hidden": [], "ffn": []}
    for text in texts:
        enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
        ffn: list = []
        hooks = [b.output.dense.register_forward_pre_hook(lambda m, a: ffn.append(a[0][0].double().numpy()))
                 for b in model.encoder.layer]
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
                hs = model(**enc, output_hidden_states=True).hidden_states
        finally:
            for h in hooks:
                h.remove()
        out["hidden"].append(np.stack([h[0].double().numpy().mean(0) for h in hs]))
        out["ffn"].append(np.stack([a.mean(0) for a in ffn]))
    return {k: np.stack(v, axis=1) for k, v in out.items()}


def _median_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Median |got - want| / |want| over values away from zero (|want| > 1e-2)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    sel = np.abs(want) > 1e-2
    return float(np.median(np.abs(got[sel] - want[sel]) / np.abs(want[sel])))


def _extract_in_process(model: str, data: str, store: Path, dtype: str, limit: int, max_length: int | None = None):
    from stcstore.config import ExtractConfig
    from stcstore.extract import extract

    return extract(ExtractConfig(model=model, data=data, store=str(store), device="cpu", dtype=dtype, limit=limit,
                                 pools=("mean", "max"), max_length=max_length, batch_size=8, progress=False))


def _texts(data: str, limit: int) -> list[str]:
    from stcstore.data import load_source

    return load_source(data, limit=limit).splits["train"].texts(0, limit)


# float16 storage alone rounds by up to 2^-11 (4.9e-4), 2e-4 in the median; a bf16 pooling sum (the
# old bmm under autocast) was 2e-3
PRECISION_FLOOR = 4e-4


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tiny_bert_reduced_precision_at_float16_floor(tiny_model, review_csv, tmp_path, dtype):
    model_dir = tiny_model("bert")
    res = _extract_in_process(str(model_dir), str(review_csv), tmp_path / "s.zarr", dtype, limit=40, max_length=64)
    assert res.compute_dtype == dtype
    r = open_run(tmp_path / "s.zarr")
    assert r.meta["extract"]["compute_dtype"] == dtype and r.fingerprint["compute_dtype"] == dtype
    want = _ref_mean_autocast(model_dir, _texts(str(review_csv), 40), 64, getattr(torch, dtype))
    for site in ("hidden", "ffn"):
        err = _median_rel_err(r.read("train", site, "mean"), want[site])
        assert err < PRECISION_FLOOR, (site, err)


def test_fp16_token_sum_beyond_65504_is_stored(tiny_model, review_csv, tmp_path):
    """FFN activations near 3,000 on texts of up to 64 tokens: token sums pass 65,504 but means do not.
    The float32 pooling sum stores them; it used to stop the run blaming the model."""
    import transformers as T

    big = tmp_path / "big"
    model = T.AutoModel.from_pretrained(tiny_model("bert"))
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.bias += 3000.0
    model.save_pretrained(big)
    T.AutoTokenizer.from_pretrained(tiny_model("bert")).save_pretrained(big)
    texts = _texts(str(review_csv), 24)
    _extract_in_process(str(big), str(review_csv), tmp_path / "s.zarr", "float16", limit=24, max_length=64)
    r = open_run(tmp_path / "s.zarr")
    assert r.is_complete()
    n_tokens = r.n_tokens("train")
    ffn0 = r.read("train", "ffn", "mean", layer=0).astype(np.float64)
    assert np.isfinite(ffn0).all()
    assert (np.abs(ffn0).max(1) * n_tokens > 65504).sum() >= 5      # these rows' sums overflow fp16
    want = _ref_mean_autocast(big, texts, 64, torch.float16)
    for site in ("hidden", "ffn"):
        assert _median_rel_err(r.read("train", site, "mean"), want[site]) < PRECISION_FLOOR, site


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_minilm_reduced_precision_at_float16_floor(tmp_path, minilm_dir, dtype):
    """MiniLM on 40 Rotten Tomatoes rows: every mean-pooled value against an independent autocast forward."""
    _extract_in_process("minilm", "rotten_tomatoes", tmp_path / "s.zarr", dtype, limit=40)
    r = open_run(tmp_path / "s.zarr")
    want = _ref_mean_autocast(minilm_dir, _texts("rotten_tomatoes", 40), 512, getattr(torch, dtype))
    for site in ("hidden", "ffn"):
        err = _median_rel_err(r.read("train", site, "mean"), want[site])
        assert err < PRECISION_FLOOR, (site, err)


# -- the float16 range check: only what float16 would store as inf ----------------------------------

def test_range_check_fires_only_on_values_float16_stores_as_inf():
    from stcstore.errors import Float16OverflowError, StcstoreError
    from stcstore.extract.writer_thread import check_range

    # 65519 rounds to 65504 (finite); 65520 rounds to inf: the threshold is float16's own
    assert torch.isfinite(torch.tensor(65519.0).half()) and torch.isinf(torch.tensor(65520.0).half())
    ok = {("ffn", "mean"): torch.tensor([1.0, 65519.0])}
    check_range(ok, "float16", torch.float16, "train", 0)
    over = {("ffn", "mean"): torch.tensor([1.0, 65520.0])}
    with pytest.raises(Float16OverflowError) as e:
        check_range(over, "float16", torch.float16, "train", 0)
    assert "layer 1" in str(e.value) and "--dtype float32" in str(e.value) and "model" not in str(e.value)
    check_range(over, "float32", torch.float32, "train", 0)       # a float32 store holds it
    inf = {("hidden", "max"): torch.tensor([float("inf"), 1.0])}
    with pytest.raises(StcstoreError, match=r"forward in bfloat16 overflowed.*--dtype float32"):
        check_range(inf, "float16", torch.bfloat16, "train", 0)
    with pytest.raises(StcstoreError, match="weights") as e:
        check_range(inf, "float32", torch.float32, "train", 0)
    assert "--dtype float32" not in str(e.value)                  # it already was float32
