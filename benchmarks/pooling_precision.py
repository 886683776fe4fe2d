"""Precision of stored features from a reduced-precision forward, against an independent forward.

`stcstore extract` of MiniLM on Rotten Tomatoes rows, `--device cpu --dtype bfloat16` and
`float16` (CPU autocast takes the same path as CUDA autocast), against a plain transformers
forward of each row alone (`model(..., output_hidden_states=True)`, weights in the same dtype,
under the same autocast), pooled here in float64. Figure: the median over every mean-pooled
value (hidden and ffn, every layer, every row) of |stored - reference| / |reference|, for
|reference| > 1e-2 (values near zero have no meaningful relative error). The float16 store
alone puts the floor near 1.7e-4 (rounding to float16 moves a value by at most 2^-11 = 4.9e-4
of itself, and by less for most values).

With `--batch-size 1` extract's forward is the reference's own (one row, no padding), so the
figure isolates pooling and storage; at 32 it also holds what padding and batch shape change in a
bf16 forward (GEMM blocking, masked attention), which no pooling can remove.

`--old-pooling` runs the pooling of commit f135e95 (its masked-mean bmm ran inside autocast, i.e.
as a bf16/fp16 GEMM), copied below, for the before figure.

  pooling_median_rel_err_<dtype>_batch<b>[_old_pooling]      goal <= 4e-4 at batch 1

Run: python benchmarks/pooling_precision.py [--batch-size 1] [--old-pooling]  (about 3 min a dtype
on 2 cores; every run's figures are merged into results/pooling_precision-cpu.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCHMARK = "pooling_precision"


def _old_pool_all(x, tm, pools):
    """f135e95's pool(), verbatim in effect: the mean's bmm runs under the forward's autocast."""
    from stcstore.extract.pooling import _masked_max

    out = {}
    for how in pools:
        if how == "mean":
            out[how] = torch.bmm(tm.mask.unsqueeze(1), x.float()).squeeze(1) / tm.count
        elif how == "max":
            out[how] = _masked_max(x, tm).float()
        else:
            rows = torch.arange(x.shape[0], device=x.device)
            out[how] = x[rows, tm.first if how == "first" else tm.last].float()
    return out


def reference_mean(model_dir: Path, texts: list[str], max_length: int, dtype: torch.dtype) -> dict:
    """{site: (layers, rows, width) float64} mean-pooled from a plain forward of each row alone."""
    import transformers as T

    tok = T.AutoTokenizer.from_pretrained(model_dir)
    model = T.AutoModel.from_pretrained(model_dir, dtype=dtype).eval()
    blocks = model.encoder.layer
    out: dict[str, list] = {"hidden": [], "ffn": []}
    for text in texts:
        enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
        ffn: list = []
        hooks = [b.output.dense.register_forward_pre_hook(lambda m, a: ffn.append(a[0][0].double().numpy()))
                 for b in blocks]
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                hs = model(**enc, output_hidden_states=True).hidden_states
        finally:
            for h in hooks:
                h.remove()
        out["hidden"].append(np.stack([h[0].double().numpy().mean(0) for h in hs]))
        out["ffn"].append(np.stack([a.mean(0) for a in ffn]))
    return {k: np.stack(v, axis=1) for k, v in out.items()}


def median_rel_err(got: np.ndarray, want: np.ndarray, floor: float = 1e-2) -> float:
    """Median of |got - want| / |want| over the values with |want| > floor."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    sel = np.abs(want) > floor
    return float(np.median(np.abs(got[sel] - want[sel]) / np.abs(want[sel])))


def measure(rows: int, dtype_name: str, old: bool, batch_size: int = 32) -> dict:
    from stcstore.config import ExtractConfig
    from stcstore.data import load_source
    from stcstore.extract import capture
    from stcstore.extract.runner import extract
    from stcstore.models import bundled_model_path
    from stcstore.store import open_run

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype_name]
    saved = capture.pool_all
    if old:
        capture.pool_all = _old_pool_all
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ExtractConfig(model="minilm", data="rotten_tomatoes", store=str(Path(tmp) / "s.zarr"),
                                device="cpu", dtype=dtype_name, limit=rows, pools=("mean",),
                                batch_size=batch_size, progress=False)
            extract(cfg)
            r = open_run(cfg.store)
            got = {s: r.read("train", s, "mean").astype(np.float64) for s in ("hidden", "ffn")}
    except Exception as exc:  # the old pooling's fp16 overflow stops the run: that is a result too
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        capture.pool_all = saved
    texts = load_source("rotten_tomatoes", limit=rows).splits["train"].texts(0, rows)
    want = reference_mean(bundled_model_path("minilm")[0], texts, 512, dtype)
    res = {s: median_rel_err(got[s], want[s]) for s in got}
    res["all"] = median_rel_err(np.concatenate([got[s].ravel() for s in got]),
                                np.concatenate([want[s].ravel() for s in got]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=120)
    ap.add_argument("--dtype", action="append", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batch-size", type=int, default=32,
                    help="extract's batch size; 1 makes its forward the reference's own, isolating the pooling")
    ap.add_argument("--old-pooling", action="store_true", help="measure f135e95's pooling (the before figure)")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: results/pooling_precision-cpu.json)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    path = common.result_path(BENCHMARK, "cpu", False, args.out)
    # figures of earlier runs (other dtypes, batch sizes, the old pooling) are kept: one file, every figure
    figures = json.loads(path.read_text()).get("figures", {}) if path.exists() else {}
    details = {}
    for name in args.dtype or ["bfloat16", "float16"]:
        res = measure(args.rows, name, args.old_pooling, args.batch_size)
        common.log(f"{name} batch {args.batch_size} {'old pooling' if args.old_pooling else 'current'}: {res}")
        key = f"pooling_median_rel_err_{name}_batch{args.batch_size}{'_old_pooling' if args.old_pooling else ''}"
        figures[key] = res.get("all")
        details[key] = res
    common.write_result(BENCHMARK, "cpu", {"rows": args.rows, "model": "minilm", "data": "rotten_tomatoes"}, figures,
                        quick=False, out=args.out, details=details)


if __name__ == "__main__":
    main()
