"""Store ingest: how fast the real writer takes pooled activations, against a GPU's forward rate.

Pooled float16 activations shaped like MiniLM rows (hidden 7 x 384, ffn 6 x 1,536, pools mean,
max, first, last: 95 KB a row) and like Llama-3-8B rows (hidden 33 x 4,096, ffn 32 x 14,336;
pools mean and last only, 2.4 MB a row, so two windows of 128 rows stay under 1 GB) go through
`stcstore.store.RunWriter` exactly as extract uses it: arrays created at full size, whole
windows written (codec, crc32c, chunk files), each window committed. Each measurement runs in a
fresh process pinned to 1 or 2 cores (sched_setaffinity, and zarr's codec thread pool sized to
match); the data of a window is made before the clock starts.

MiniLM values in full mode are real: a quarter window of MiniLM over Rotten Tomatoes is
extracted first, and every written window is those rows four times over with each feature column
permuted on its own (the same values per neuron, so about the same compressibility, but no
repeated rows for a compressor to find). Llama values (and MiniLM in --quick) are Gaussian per neuron with
lognormal scales, GELU on the FFN site: less compressible than real activations.

  ingest_rows_per_s_minilm            rows/s, default codec, 2 cores
  ingest_mb_per_s_minilm              the same in MB/s of raw float16
  ingest_speedup_2_cores              MiniLM rows/s on 2 cores / on 1 core          goal >= 1.6
  ingest_serial_cpu_fraction_<model>  share of the writer's CPU time (1 core, all threads) spent
                                      outside blosc compression and file writes, the two steps that
                                      release the GIL: Python, zarr's machinery, crc32c, copies.
                                      Counted serial (conservative: some copies release the GIL too)
  ingest_speedup_2_cores_amdahl       1 / (serial + (1 - serial) / 2): the 2-core speedup on an
                                      otherwise idle machine (a loaded one cannot show it)
  ingest_rows_per_s_minilm_<codec>_1core, disk_over_raw_fp16_minilm_<codec>: codec comparison
  projected_h200_forward_rows_per_s_<model>   FLOPs per row = 2 x matmul params x tokens
                                      + attention scores, at --mfu of --peak-tflops (bf16)
  ingest_over_projected_h200_forward_<model>  ingest on the most cores measured (--cores) /
                                      projected forward                           goal >= 1
  cores_to_keep_up_h200_<model>       projected forward / 1-core ingest (linear scaling assumed)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import dir_bytes, log, run_worker  # noqa: E402

BENCHMARK = "store_ingest"
HERE = Path(__file__).resolve()

# Model configs (the numbers of each model's config.json; Llama-3-8B's is not on this machine).
MODELS = {
    "minilm": {"layers": 6, "d": 384, "d_ff": 1536, "d_kv": 384, "gated": False,
               "pools": ["mean", "max", "first", "last"]},
    "llama3_8b": {"layers": 32, "d": 4096, "d_ff": 14336, "d_kv": 1024, "gated": True,
                  "pools": ["mean", "last"]},
}
CODEC_NAMES = ("lz4", "zstd", "zstd1", "none")


def forward_flops_per_row(m: dict, tokens: int) -> float:
    """2 x (matmul parameters) x tokens, plus QK^T and AV (4 x tokens^2 x d per layer)."""
    d, dff, dkv = m["d"], m["d_ff"], m["d_kv"]
    attn = 2 * d * d + 2 * d * dkv            # q, o: d x d; k, v: d x d_kv (grouped-query attention)
    mlp = (3 if m["gated"] else 2) * d * dff  # gate, up, down (gated) or fc1, fc2
    per_layer = 2 * (attn + mlp) * tokens + 4 * tokens * tokens * d
    return float(m["layers"] * per_layer)


def row_bytes(m: dict) -> int:
    """Raw float16 bytes of one row: every hidden entry and FFN layer, every pool."""
    return 2 * len(m["pools"]) * ((m["layers"] + 1) * m["d"] + m["layers"] * m["d_ff"])


def _synthetic(rng, layers: int, rows: int, width: int, site: str, pool: str):
    """(layers, rows, width) float16: Gaussian per neuron with lognormal scales, GELU on the FFN site.

    One (rows, width) block is drawn and each layer gets it with its columns rotated and rescaled:
    the values of one chunk (one layer) never repeat, and an 8B-model window is made in seconds.
    """
    import numpy as np

    scale = np.exp(rng.normal(-0.5 if site == "ffn" else 0.0, 0.6, size=width)).astype(np.float32)
    mu = rng.normal(0.0, 1.0, size=width).astype(np.float32) * scale
    z = mu + (0.3 if pool == "mean" else 1.0) * scale * rng.standard_normal((rows, width), dtype=np.float32)
    if site == "ffn":  # GELU's near-zero negatives, as the FFN site holds act(fc1 x)
        z = 0.5 * z * (1.0 + np.tanh(0.7978845608 * (z + 0.044715 * z ** 3)))
    if pool == "max":
        z = np.abs(z)
    block = z.astype(np.float16)
    out = np.empty((layers, rows, width), dtype=np.float16)
    for layer in range(layers):
        out[layer] = np.roll(block, 97 * layer + 1, axis=1)
        out[layer] *= np.float16(1.0 + 0.05 * layer)
    return out


def _windows(spec: dict, rng) -> list[dict]:
    """Two distinct windows of data (written alternately): real-permuted or synthetic."""
    import numpy as np

    m, rows = spec["shape"], spec["chunk_rows"]
    out = []
    real = None
    if spec.get("real"):
        real = np.load(spec["real"])
    for _ in range(2):
        win = {}
        for site, L, width in (("hidden", m["layers"] + 1, m["d"]), ("ffn", m["layers"], m["d_ff"])):
            for pool in m["pools"]:
                if real is not None:
                    src = real[f"{site}/{pool}"]
                    src = np.concatenate([src] * -(-rows // src.shape[1]), axis=1)[:, :rows, :]
                    # permute each feature column on its own: same values per neuron, new rows
                    perm = np.argsort(rng.random((1, src.shape[1], width)), axis=1)
                    win[(site, pool)] = np.ascontiguousarray(np.take_along_axis(src, np.broadcast_to(perm, src.shape), axis=1))
                else:
                    win[(site, pool)] = _synthetic(rng, L, rows, width, site, pool)
        out.append(win)
    return out


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads by role: main, zarr's event loop, pool workers."""
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    roles = {t.native_id: "main" if t is threading.main_thread() else "loop" if t.name == "zarr_io" else "pool"
             for t in threading.enumerate()}
    out = {"main": 0.0, "loop": 0.0, "pool": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[roles.get(int(tid), "pool")] += (int(fields[11]) + int(fields[12])) / tick
    return out


def _time_gil_free_calls() -> dict[str, float]:
    """Count the CPU seconds spent inside blosc compression and chunk file writes, every thread."""
    import threading

    import numcodecs.blosc
    import zarr.storage._local as local

    spent = {"s": 0.0}
    lock = threading.Lock()

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.thread_time() - t
                with lock:
                    spent["s"] += dt
        return wrapper

    numcodecs.blosc.Blosc.encode = timed(numcodecs.blosc.Blosc.encode)
    local._put = timed(local._put)  # LocalStore's file write, looked up at each call
    return spent


def worker_ingest(spec: dict) -> dict:
    """Write `windows` windows through RunWriter pinned to `cores` cores; time it."""
    import numpy as np
    import zarr

    cores = int(spec["cores"])
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    zarr.config.set({"threading.max_workers": cores})
    from stcstore.store import RunLayout, RunWriter, open_root
    from stcstore.store.quiet import quiet_zarr

    m, rows, n_win = spec["shape"], spec["chunk_rows"], spec["windows"]
    gil_free = _time_gil_free_calls()
    data = _windows(spec, np.random.default_rng(spec["seed"]))
    store = Path(spec["store"])
    layout = RunLayout(splits={"train": rows * n_win}, sites=("hidden", "ffn"), pools=tuple(m["pools"]),
                       n_layers={"hidden": m["layers"] + 1, "ffn": m["layers"]},
                       width={"hidden": m["d"], "ffn": m["d_ff"]}, dtype="float16", chunk_rows=rows,
                       codec=spec["codec"])
    n_tokens = np.full(rows, 64, dtype=np.int32)
    with quiet_zarr():
        root = open_root(store, create=True)
        writer = RunWriter(root, store / "bench", "bench")
        writer.create(layout, {"bench": True}, {}, row_ids={"train": np.arange(rows * n_win)}, columns={})
        arrays_before = dir_bytes(store / "bench" / "train")
        writer.write_window("train", 0, data[1], n_tokens, {"rows": rows})  # untimed: starts zarr's threads
        t0, c0, th0, g0 = time.perf_counter(), time.process_time(), _thread_cpu(), gil_free["s"]
        for w in range(n_win):
            writer.write_window("train", w, data[w % 2], n_tokens, {"rows": rows})
        wall, cpu, th1 = time.perf_counter() - t0, time.process_time() - c0, _thread_cpu()
        gil_free_s = gil_free["s"] - g0
    stored = dir_bytes(store / "bench" / "train") - arrays_before
    raw = row_bytes(m) * rows * n_win
    return {"seconds": wall, "cpu_s": cpu, "rows": rows * n_win, "raw_bytes": raw, "stored_bytes": stored,
            "cores": len(os.sched_getaffinity(0)), "load_avg_1min": os.getloadavg()[0],
            "thread_cpu_s": {k: th1[k] - th0[k] for k in th1}, "gil_free_cpu_s": gil_free_s}


def _real_minilm(scratch: Path, rows: int, model: str = "minilm", data: str = "rotten_tomatoes") -> Path:
    """One window of real MiniLM activations over Rotten Tomatoes, saved as .npz."""
    import numpy as np

    from stcstore.config import ExtractConfig
    from stcstore.extract import extract
    from stcstore.store import open_run

    store = scratch / "real.zarr"
    log(f"extracting {rows} rows of {model} (the values every MiniLM window is made from)")
    extract(ExtractConfig(model=model, data=data, store=str(store), limit=rows, progress=False))
    r = open_run(store)
    path = scratch / "real.npz"
    np.savez(path, **{f"{site}/{pool}": r.read("train", site, pool) for site in r.sites for pool in r.pools})
    return path


def main(argv=None) -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=64, help="tokens per row of the projected forward")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak of the projected GPU")
    p.add_argument("--mfu", type=float, default=0.40, help="fraction of the peak the projected forward reaches")
    p.add_argument("--codecs", default=",".join(CODEC_NAMES), help="codecs compared on one core (MiniLM)")
    p.add_argument("--cores", default="1,2", help="core counts the default codec runs on (1 and 2 always)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="a MiniLM-shaped model folder in place of the bundled MiniLM (scripts/gpu_assets.py model)")
    p.add_argument("--data", default=None, help="data spec in place of the bundled rotten_tomatoes")
    p.add_argument("--note", default=None, help="a note stored with the result (e.g. the machine's load)")
    args = p.parse_args(argv)
    if common.worker_dispatch(args, {"ingest": worker_ingest}):
        return 0
    common.check_device(args.device)  # the writer runs on the host; cuda only labels the machine
    common.drop_warnings()
    from stcstore.store.layout import DEFAULT_CODEC, chunk_rows_for

    reps = args.repeats or (1 if args.quick else 2)
    codecs = [c for c in args.codecs.split(",") if c]
    have = len(os.sched_getaffinity(0))
    core_counts = sorted({min(int(c), have) for c in ("1", "2", *args.cores.split(",")) if c})
    two = min(2, have)
    most = core_counts[-1]
    figures: dict[str, float] = {}
    details: dict[str, dict] = {}
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with common.scratch_dir(BENCHMARK, args.keep) as scratch:
        plan = {"minilm": {"windows": 1 if args.quick else 4, "chunk_rows": 256 if args.quick else None},
                "llama3_8b": {"windows": 1 if args.quick else 2, "chunk_rows": 16 if args.quick else None}}
        real = None
        for name in ("minilm", "llama3_8b"):
            m = MODELS[name]
            rows = plan[name]["chunk_rows"] or chunk_rows_for(min(m["d"], m["d_ff"]), "float16", 10**9)
            if name == "minilm" and not args.quick:
                real = _real_minilm(scratch, max(64, rows // 4), str(args.model_dir or "minilm"),
                                    args.data or "rotten_tomatoes")
            runs = [(c, 1) for c in (codecs if name == "minilm" else [DEFAULT_CODEC])] + \
                [(DEFAULT_CODEC, n) for n in core_counts if n > 1]
            res: dict[tuple[str, int], list] = {}
            for rep in range(reps):  # interleaved rounds: load on the machine hits every variant alike
                for codec, cores in runs:
                    spec = {"shape": m, "chunk_rows": rows, "windows": plan[name]["windows"], "codec": codec,
                            "cores": cores, "seed": rep, "store": str(scratch / f"{name}-{codec}-{cores}-{rep}.zarr"),
                            "real": str(real) if (real and name == "minilm") else None}
                    log(f"{name}: {codec} on {cores} core(s), {spec['windows']} x {rows} rows")
                    out = run_worker(HERE, "ingest", spec, timeout=900)
                    res.setdefault((codec, cores), []).append(out)
                    import shutil

                    shutil.rmtree(spec["store"], ignore_errors=True)
            best = {k: max(v, key=lambda o: o["rows"] / o["seconds"]) for k, v in res.items()}  # best of rounds
            rate = {k: o["rows"] / o["seconds"] for k, o in best.items()}
            for (codec, cores), o in best.items():
                details[f"{name}_{codec}_{cores}core"] = {**o, "rows_per_s": rate[(codec, cores)],
                                                          "all_rows_per_s": [r["rows"] / r["seconds"] for r in res[(codec, cores)]]}
                if cores == 1:
                    figures[f"ingest_rows_per_s_{name}_{codec}_1core"] = rate[(codec, 1)]
                    figures[f"disk_over_raw_fp16_{name}_{codec}"] = o["stored_bytes"] / o["raw_bytes"]
            r1, r2, rmost = rate[(DEFAULT_CODEC, 1)], rate[(DEFAULT_CODEC, two)], rate[(DEFAULT_CODEC, most)]
            fwd = args.peak_tflops * 1e12 * args.mfu / forward_flops_per_row(m, args.tokens)
            figures[f"ingest_rows_per_s_{name}"] = r2
            figures[f"ingest_mb_per_s_{name}"] = r2 * row_bytes(m) / 1e6
            figures[f"ingest_rows_per_s_{name}_1core"] = r1
            for n in core_counts:
                if n > 2:
                    figures[f"ingest_rows_per_s_{name}_{n}cores"] = rate[(DEFAULT_CODEC, n)]
            sfx = "" if name == "minilm" else "_" + name
            figures[f"ingest_speedup_2_cores{sfx}"] = r2 / r1 if two == 2 else None
            # Amdahl from the one-core run's CPU split, which other jobs on the machine do not change:
            # compression and file writes run in parallel across chunks, everything else holds the GIL
            one = best[(DEFAULT_CODEC, 1)]
            total_cpu = max(sum(one["thread_cpu_s"].values()), 1e-9)
            serial = min(1.0, max(0.0, 1.0 - one["gil_free_cpu_s"] / total_cpu))
            figures[f"ingest_serial_cpu_fraction_{name}"] = serial
            figures[f"ingest_speedup_2_cores_amdahl{sfx}"] = 1.0 / (serial + (1.0 - serial) / 2)
            figures[f"projected_h200_forward_rows_per_s_{name}"] = fwd
            # the most cores measured; the cores needed assume linear scaling from one core
            figures[f"ingest_over_projected_h200_forward_{name}"] = rmost / fwd
            figures[f"cores_to_keep_up_h200_{name}"] = fwd / r1
            details[f"{name}_model"] = {**m, "row_bytes_fp16": row_bytes(m), "chunk_rows": rows,
                                        "flops_per_row": forward_flops_per_row(m, args.tokens)}
    config = {"default_codec": DEFAULT_CODEC, "codecs_compared": codecs, "cores": core_counts,
              "ingest_over_projected_uses_cores": most, "rounds": reps,
              "tokens_per_row": args.tokens, "peak_tflops_bf16": args.peak_tflops, "mfu": args.mfu,
              "minilm_values": "synthetic Gaussian" if args.quick else (
                  f"a window of a MiniLM-shaped BERT with random weights ({args.model_dir}), columns permuted: "
                  "compressibility may differ from real MiniLM's" if args.model_dir else "real MiniLM window, columns permuted"),
              "llama3_8b_values": "synthetic Gaussian (pools mean,last)",
              "zarr": __import__("zarr").__version__, "seconds": round(time.perf_counter() - t0, 1),
              # other jobs on the machine take cores from the 2-core runs: the load says how many
              "load_avg_1min": {"start": load0, "end": os.getloadavg()[0]}}
    if args.note:
        config["note"] = args.note
    common.write_result(BENCHMARK, args.device, config, figures, quick=args.quick, out=args.out, details=details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
