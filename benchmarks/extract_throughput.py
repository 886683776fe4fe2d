"""Extraction throughput: `stcstore extract` against a bare forward pass and the naive recipe.

Three variants on the same rows, the same tokenisation and the same length-sorted batches
(stcstore.extract.batching, windows of the store's chunk size), each in a fresh subprocess so
its peak RSS is its own, interleaved and repeated (median):

  (a) bare     plain `AutoModel.from_pretrained` + forward, nothing captured;
  (b) naive    what users write today: `output_hidden_states=True` plus forward hooks that keep
               every FFN activation (B, T, d_ff) whole, pooled on the CPU in NumPy after the
               forward, everything kept in RAM as float32, then pickled to disk;
  (c) extract  the library call `stcstore.extract.extract(ExtractConfig(...))` (fp16 Zarr store).

Every variant's time is end to end after imports: load the data and the model, tokenise,
forward, and write (b: the pickle, c: the store). The same ratio without model loading is
also reported (`*_excl_load`), since a GGUF load dominates small SmolLM2 runs.

Figures (MiniLM; the same names with `_smollm2` for SmolLM2 in full mode):
  extract_over_bare_forward     wall time c / a                        goal <= 1.10
  naive_over_bare_forward       wall time b / a
  rows_per_s_{bare,naive,extract}, tokens_per_s_{bare,naive,extract}
  peak_rss_mb_{bare,naive,extract}
"""

from __future__ import annotations

import math
import pickle
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Timer, log, median, run_worker  # noqa: E402

BENCHMARK = "extract_throughput"
VARIANTS = ("bare", "naive", "extract")
MAX_LENGTH = 512  # what extract uses for both models (min(model limit, 512))


# ---------------------------------------------------------------------------------------------
# shared by the bare and naive workers: the same data, model, windows and batches as extract
# ---------------------------------------------------------------------------------------------
def _plain_model(spec: dict):
    """Model and tokenizer the way a user loads them: AutoModel/AutoTokenizer.from_pretrained."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from stcstore.models import bundled_model_path

    folder, gguf = (Path(spec["model_dir"]), None) if spec.get("model_dir") else bundled_model_path(spec["model"])
    kw = {"gguf_file": gguf} if gguf else {}
    dtype = torch.bfloat16 if spec["device"] == "cuda" else torch.float32
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    model = AutoModel.from_pretrained(folder, dtype=dtype, **kw).eval().to(spec["device"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return model, tok


def _windows(spec: dict, source, d_min: int):
    """(start, stop) of the windows extract uses: one chunk of rows each."""
    from stcstore.store import chunk_rows_for

    n = len(source.splits["train"])
    chunk = chunk_rows_for(d_min, "float16", n)
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)], chunk


def _inputs(model, batch: dict) -> dict:
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    out = {k: v for k, v in batch.items() if k in accepted}
    if "use_cache" in accepted:
        out["use_cache"] = False
    return out


def _autocast(device: str):
    import contextlib

    import torch

    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _np_pool(x, mask, n_tokens, how: str):
    """Pooling in NumPy over real tokens (right padding): what the naive recipe does after the forward."""
    import numpy as np

    if how == "mean":
        return (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None]
    if how == "max":
        return np.where(mask[:, :, None] > 0, x, -np.inf).max(1).astype(np.float32)
    if how == "first":
        return x[:, 0].copy()
    if how == "last":
        return x[np.arange(x.shape[0]), n_tokens - 1].copy()
    raise ValueError(how)


def _loop(spec: dict, naive: bool) -> dict:
    import numpy as np
    import torch

    from stcstore.data import load_source
    from stcstore.extract.batching import iter_batches, tokenize_window
    from stcstore.models import architecture_for, get_module

    common.drop_warnings()
    device = spec["device"]
    t_all = Timer(device).__enter__()
    source = load_source(spec.get("data") or "rotten_tomatoes", limit=spec["rows"])
    with Timer(device) as t_load:
        model, tok = _plain_model(spec)
    arch = architecture_for(model.config.model_type)
    blocks = get_module(model, arch.blocks)
    d, d_ff = int(model.config.hidden_size), None
    windows, chunk = _windows(spec, source, d)
    split = source.splits["train"]
    pools = ("mean", "max", "first", "last")
    kept: dict[tuple[str, str], list] = {}
    order_all: list[np.ndarray] = []
    ffn_acts: list = []
    hooks = []
    if naive:
        # the naive recipe: keep every FFN activation whole until the forward is done
        for b in blocks:
            proj = get_module(b, arch.ffn_out)
            hooks.append(proj.register_forward_pre_hook(lambda m, a: ffn_acts.append(a[0].detach())))
    tokens = 0
    with Timer(device) as t_loop, torch.inference_mode(), _autocast(device):
        for start, stop in windows:
            tw = tokenize_window(tok, split.texts(start, stop), MAX_LENGTH, "train", start)
            tokens += int(tw.n_tokens.sum())
            for idx, batch in iter_batches(tw, spec["batch_size"], tok.pad_token_id, torch.device(device)):
                inputs = _inputs(model, batch)
                if not naive:
                    model(**inputs)
                    continue
                ffn_acts.clear()
                out = model(**inputs, output_hidden_states=True)
                mask = batch["attention_mask"].cpu().numpy().astype(np.float32)
                n_tok = mask.sum(1).astype(np.int64)
                sites = {"hidden": out.hidden_states, "ffn": list(ffn_acts)}
                for site, acts in sites.items():
                    for layer, act in enumerate(acts):
                        x = act.float().cpu().numpy()  # (B, T, width) fp32 on the host
                        for p in pools:
                            kept.setdefault((site, p), []).append((layer, _np_pool(x, mask, n_tok, p)))
                order_all.append(start + idx)
                del out, sites
                ffn_acts.clear()
    for h in hooks:
        h.remove()
    t_save = 0.0
    if naive:
        with Timer(device) as t_s:
            order = np.concatenate(order_all)
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            result = {}
            for (site, p), items in kept.items():
                n_layers = max(layer for layer, _ in items) + 1
                per_layer = [np.concatenate([v for l2, v in items if l2 == layer])[inverse] for layer in range(n_layers)]
                result[(site, p)] = np.stack(per_layer).astype(np.float32)  # (L, N, width) fp32
            with open(spec["pickle_path"], "wb") as fh:
                pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
            d_ff = result[("ffn", "mean")].shape[2]
        t_save = t_s.s
    t_all.__exit__(None, None, None)
    return {"total_s": t_all.s, "cpu_s": t_all.cpu, "load_s": t_load.s, "loop_s": t_loop.s, "save_s": t_save, "rows": len(split),
            "tokens": tokens, "chunk_rows": chunk, "d": d, "d_ff": d_ff,
            "pickle_bytes": Path(spec["pickle_path"]).stat().st_size if naive else None,
            "cuda_peak_mb": _cuda_peak(device)}


def _cuda_peak(device: str):
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def worker_bare(spec: dict) -> dict:
    return _loop(spec, naive=False)


def worker_naive(spec: dict) -> dict:
    return _loop(spec, naive=True)


def worker_extract(spec: dict) -> dict:
    from stcstore.extract import runner
    from stcstore.config import ExtractConfig

    common.drop_warnings()
    device = spec["device"]
    load_times = []
    real_load = runner.load_model

    def timed_load(*a, **k):  # measure model loading inside extract (this process only)
        with Timer(device) as t:
            out = real_load(*a, **k)
        load_times.append(t.s)
        return out

    runner.load_model = timed_load
    cfg = ExtractConfig(model=spec.get("model_dir") or spec["model"], data=spec.get("data") or "rotten_tomatoes",
                        store=spec["store"], limit=spec["rows"],
                        batch_size=spec["batch_size"], max_length=MAX_LENGTH, device=device, progress=False)
    with Timer(device) as t:
        res = runner.extract(cfg)
    from stcstore.store.info import store_summary

    summary = store_summary(spec["store"])
    return {"total_s": t.s, "cpu_s": t.cpu, "load_s": sum(load_times), "rows": res.rows_done_now, "tokens": res.tokens,
            "bytes_on_disk": summary["bytes_on_disk"], "bytes_raw_fp16": summary["runs"][0]["bytes_raw"],
            "compute_dtype": res.compute_dtype, "cuda_peak_mb": _cuda_peak(device)}


WORKERS = {"bare": worker_bare, "naive": worker_naive, "extract": worker_extract}


# ---------------------------------------------------------------------------------------------
def measure_model(model: str, rows: int, batch_size: int, repeats: int, args, scratch: Path) -> tuple[dict, dict]:
    """Interleaved repeats of a, b, c on one model; return figures and raw runs."""
    script = Path(__file__).resolve()
    runs: dict[str, list] = {v: [] for v in VARIANTS}
    base = {"model": model, "rows": rows, "batch_size": batch_size, "device": args.device,
            "model_dir": str(args.model_dir) if args.model_dir and model == "minilm" else None, "data": args.data}
    if not args.quick:
        # one untimed run warms the page cache (model file, dataset, Python bytecode)
        log(f"{model}: warm-up")
        run_worker(script, "bare", {**base, "rows": min(rows, 64)}, threads=args.threads)
    for rep in range(repeats):
        order = VARIANTS[rep % 3:] + VARIANTS[: rep % 3]  # rotate, so no variant always runs first
        for v in order:
            spec = dict(base)
            if v == "extract":
                spec["store"] = str(scratch / f"{model}-{rep}.zarr")
            if v == "naive":
                spec["pickle_path"] = str(scratch / f"{model}-{rep}.pkl")
            r = run_worker(script, v, spec, threads=args.threads)
            log(f"{model} rep {rep} {v:<7}: total {r['total_s']:7.2f} s (load {r['load_s']:.2f} s, cpu {r['cpu_s']:.1f} s), "
                f"peak RSS {r['peak_rss_mb']:.0f} MiB")
            runs[v].append(r)
            if v == "extract":
                shutil.rmtree(spec["store"], ignore_errors=True)
            if v == "naive":
                Path(spec["pickle_path"]).unlink(missing_ok=True)
    tot = {v: median(r["total_s"] for r in runs[v]) for v in VARIANTS}
    work = {v: median(r["total_s"] - r["load_s"] for r in runs[v]) for v in VARIANTS}
    cpu = {v: median(r["cpu_s"] for r in runs[v]) for v in VARIANTS}
    n_rows = runs["bare"][0]["rows"]
    n_tok = runs["bare"][0]["tokens"]
    assert all(r["rows"] == n_rows and r["tokens"] == n_tok for v in VARIANTS for r in runs[v]), "variants saw different data"
    sfx = "" if model == "minilm" else f"_{model}"
    fig = {
        f"extract_over_bare_forward{sfx}": tot["extract"] / tot["bare"],
        f"naive_over_bare_forward{sfx}": tot["naive"] / tot["bare"],
        f"extract_over_bare_forward_excl_load{sfx}": work["extract"] / work["bare"],
        f"naive_over_bare_forward_excl_load{sfx}": work["naive"] / work["bare"],
        # CPU time (all threads) over the same span: robust to other jobs on a shared machine
        f"extract_over_bare_forward_cpu_time{sfx}": cpu["extract"] / cpu["bare"],
        f"naive_over_bare_forward_cpu_time{sfx}": cpu["naive"] / cpu["bare"],
    }
    for v in VARIANTS:
        fig[f"rows_per_s_{v}{sfx}"] = n_rows / tot[v]
        fig[f"tokens_per_s_{v}{sfx}"] = n_tok / tot[v]
        fig[f"peak_rss_mb_{v}{sfx}"] = median(r["peak_rss_mb"] for r in runs[v])
        if args.device == "cuda":
            fig[f"cuda_peak_mb_{v}{sfx}"] = median(r["cuda_peak_mb"] for r in runs[v])
    fig[f"naive_pickle_over_store_bytes{sfx}"] = runs["naive"][0]["pickle_bytes"] / runs["extract"][0]["bytes_on_disk"]
    return fig, {"rows": n_rows, "tokens": n_tok, "runs": runs}


def main(argv=None) -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated subset of minilm,smollm2 (default: both; quick: minilm)")
    p.add_argument("--rows", type=int, default=None, help="rows per model (default: minilm 2000, smollm2 128; quick 128)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (a GPU wants more)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="a model folder in place of the bundled MiniLM (scripts/gpu_assets.py model: MiniLM-shaped, "
                        "random weights; a forward's cost depends on the shapes, not the weights)")
    p.add_argument("--data", default=None, help="data spec in place of the bundled rotten_tomatoes (a csv with a text column)")
    args = p.parse_args(argv)
    if common.worker_dispatch(args, WORKERS):
        return 0
    common.check_device(args.device)
    bs = args.batch_size
    if args.quick:
        plan = [("minilm", args.rows or 128, bs, args.repeats or 1)]
    else:
        plan = [("minilm", args.rows or 2000, bs, args.repeats or 3),
                ("smollm2", args.rows or 128, bs, max(1, (args.repeats or 3) - 1))]
    if args.models:
        plan = [step for step in plan if step[0] in args.models.split(",")]
    figures, details = {}, {}
    t0 = time.perf_counter()
    with common.scratch_dir(BENCHMARK, args.keep) as scratch:
        for model, rows, bs, reps in plan:
            fig, det = measure_model(model, rows, bs, reps, args, scratch)
            figures.update(fig)
            details[model] = det
    config = {"data": args.data or "rotten_tomatoes (bundled)", "max_length": MAX_LENGTH, "pools": "mean,max,first,last",
              "sites": "hidden,ffn", "store_dtype": "float16",
              "compute_dtype": "bfloat16 (autocast)" if args.device == "cuda" else "float32",
              "models": {m: {"rows": r, "batch_size": b, "repeats": k} for m, r, b, k in plan},
              "timing": "end to end after imports (data + model load, tokenise, forward, write); median of repeats",
              "threads": args.threads or "torch default", "seconds": round(time.perf_counter() - t0, 1)}
    if args.model_dir:
        config["minilm_weights"] = (f"{args.model_dir}: MiniLM's shapes, random weights (the bundled model's weights "
                                    "are not on this machine); a forward's cost depends on the shapes, not the weights")
    common.write_result(BENCHMARK, args.device, config, figures, quick=args.quick, out=args.out, details=details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
