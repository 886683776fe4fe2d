"""Memory scaling: peak RSS of extract and of probe at N and 10N rows (10x the data, same memory?).

Each measured call runs alone in a fresh subprocess; its peak RSS is the kernel's high-water
mark for that process (os.wait4 rusage), interpreter and imports included.

  extract  `stcstore.extract.extract` of MiniLM over Rotten Tomatoes with --limit N and 10N
  probe    `stcstore.probe.run_probe` (default backend) on a synthetic MiniLM-shaped store
           (benchmarks/synthetic.py, written with stcstore.store.RunWriter) of N and 10N rows

  rss_ratio_10x_extract   peak RSS at 10N / at N                                   goal <= 1.15
  rss_ratio_10x_probe     peak RSS at 10N / at N (a layer block itself grows 10x: no goal)
  rss_growth_blocks_10x_probe  (peak RSS at 10N - at N) / one 10N-row float32 block of the
                          widest site (the probe issue's criterion)                goal <= 2
  peak_rss_mb_{extract,probe}_{N}, rss_delta_mb_10x_{extract,probe}, rss_after_import_mb_*
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Timer, log, run_worker  # noqa: E402

BENCHMARK = "memory_scaling"


def worker_extract(spec: dict) -> dict:
    import stcstore.extract.runner  # noqa: F401  (imports before the baseline reading)
    from stcstore.config import ExtractConfig
    from stcstore.extract import extract

    common.drop_warnings()
    base = common.rss_now_mb()
    with Timer(spec["device"]) as t:
        res = extract(ExtractConfig(model="minilm", data="rotten_tomatoes", store=spec["store"], limit=spec["rows"],
                                    device=spec["device"], progress=False))
    return {"seconds": t.s, "rows": res.rows_done_now, "tokens": res.tokens, "rss_after_import_mb": base}


def worker_probe(spec: dict) -> dict:
    import sklearn.linear_model  # noqa: F401  (what the solvers import, before the baseline reading)
    import torch  # noqa: F401

    from stcstore.config import ProbeConfig
    from stcstore.probe import run_probe

    common.drop_warnings()
    base = common.rss_now_mb()
    grid = {k: tuple(spec[k]) for k in ("c_grid", "eta_grid") if spec.get(k)}
    cfg = ProbeConfig(store=spec["store"], label="label", backend=spec.get("backend", "auto"), device=spec["device"],
                      progress=False, plots=False, name=spec.get("name"), **grid)
    with Timer(spec["device"]) as t:
        res = run_probe(cfg, concat_baseline=spec.get("concat_baseline", True))
    stc = res.report["stc"]
    return {"seconds": t.s, "rss_after_import_mb": base, "val": stc["val"], "test": stc["test"],
            "n": res.report["n"], "backend": res.report.get("backend")}


WORKERS = {"extract": worker_extract, "probe": worker_probe}


def probe_available() -> bool:
    try:
        from stcstore.probe import run_probe  # noqa: F401
    except Exception as exc:  # the probe package is being written in parallel
        log(f"stcstore.probe.run_probe not importable ({exc!r}): probe figures skipped")
        return False
    return True


def main(argv=None) -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default="extract,probe", help="comma list of extract,probe")
    p.add_argument("--n-extract", type=int, default=None, help="N for extract (10N must fit in 12,808 rows)")
    p.add_argument("--n-probe", type=int, default=None, help="N for probe")
    p.add_argument("--no-concat-baseline", action="store_true",
                   help="probe without the all-layers-concat baseline (figures get a _noconcat suffix)")
    p.add_argument("--default-grid", action="store_true", help="probe with the default C and eta grids (slow)")
    p.add_argument("--probe-backend", default="auto", help="probe --backend (figures of a non-auto backend get a _<backend> suffix)")
    p.add_argument("--no-merge", action="store_true",
                   help="do not keep the figures of parts not run from an existing result file")
    args = p.parse_args(argv)
    if common.worker_dispatch(args, WORKERS):
        return 0
    common.check_device(args.device)
    parts = args.parts.split(",")
    n_ex = args.n_extract or (64 if args.quick else 1280)
    n_pr = args.n_probe or (200 if args.quick else 1000)
    # quick: a tiny synthetic shape (a smoke test of the path); full: MiniLM's shape. Both use a
    # two-point grid holding the default grid's largest design (C 1, eta 1: the most kept and
    # nonzero features), which sets the peak; the other grid points only add time
    shape = dict(n_layers=2, d=32, d_ff=64) if args.quick else dict(n_layers=6, d=384, d_ff=1536)
    grid = {"c_grid": [0.1, 1.0], "eta_grid": [0.5, 1.0]} if args.quick or not args.default_grid else {}
    script = Path(__file__).resolve()
    figures: dict = {}
    details: dict = {}
    probe_backend = None
    t0 = time.perf_counter()
    with common.scratch_dir(BENCHMARK, args.keep) as scratch:
        if "extract" in parts:
            peaks = {}
            for n in (n_ex, 10 * n_ex):
                store = scratch / f"ex-{n}.zarr"
                r = run_worker(script, "extract", {"rows": n, "store": str(store), "device": args.device}, threads=args.threads)
                log(f"extract {n:>6} rows: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB "
                    f"(after imports {r['rss_after_import_mb']:.0f} MiB)")
                peaks[n] = r
                details[f"extract_{n}"] = r
                shutil.rmtree(store, ignore_errors=True)
            figures["rss_ratio_10x_extract"] = peaks[10 * n_ex]["peak_rss_mb"] / peaks[n_ex]["peak_rss_mb"]
            figures["rss_delta_mb_10x_extract"] = peaks[10 * n_ex]["peak_rss_mb"] - peaks[n_ex]["peak_rss_mb"]
            for n, r in peaks.items():
                figures[f"peak_rss_mb_extract_{n}"] = r["peak_rss_mb"]
            figures["rss_after_import_mb_extract"] = peaks[n_ex]["rss_after_import_mb"]
        if "probe" in parts and probe_available():
            from synthetic import write_synthetic_store

            peaks = {}
            sfx = ("" if args.probe_backend == "auto" else f"_{args.probe_backend}") + (
                "_noconcat" if args.no_concat_baseline else "")
            for n in (n_pr, 10 * n_pr):
                store = scratch / f"syn-{n}.zarr"
                with Timer() as tw:
                    write_synthetic_store(store, n, **shape)
                log(f"synthetic store of {n} rows written in {tw.s:.1f} s ({common.dir_bytes(store) / 2**20:.0f} MiB)")
                r = run_worker(script, "probe", {"store": str(store), "device": args.device, "name": "mem",
                                                 "backend": args.probe_backend,
                                                 "concat_baseline": not args.no_concat_baseline, **grid}, threads=args.threads)
                log(f"probe {n:>6} rows ({r['backend']}): {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB "
                    f"(after imports {r['rss_after_import_mb']:.0f} MiB), val {r['val']:.3f} test {r['test']:.3f}")
                peaks[n] = r
                details[f"probe{sfx}_{n}"] = r
                shutil.rmtree(store, ignore_errors=True)
            figures[f"rss_ratio_10x_probe{sfx}"] = peaks[10 * n_pr]["peak_rss_mb"] / peaks[n_pr]["peak_rss_mb"]
            figures[f"rss_delta_mb_10x_probe{sfx}"] = peaks[10 * n_pr]["peak_rss_mb"] - peaks[n_pr]["peak_rss_mb"]
            block_mb = 10 * n_pr * max(shape["d"], shape["d_ff"]) * 4 / 2**20
            figures[f"rss_growth_blocks_10x_probe{sfx}"] = figures[f"rss_delta_mb_10x_probe{sfx}"] / block_mb
            for n, r in peaks.items():
                figures[f"peak_rss_mb_probe{sfx}_{n}"] = r["peak_rss_mb"]
            figures[f"rss_after_import_mb_probe{sfx}"] = peaks[n_pr]["rss_after_import_mb"]
            probe_backend = peaks[n_pr]["backend"]
    today = time.strftime("%Y-%m-%d")
    config = {"rss": "peak RSS of the measuring subprocess (os.wait4 ru_maxrss), imports included"}
    if "extract" in parts:
        config["extract"] = {"model": "minilm", "data": "rotten_tomatoes (bundled)", "N": n_ex, "sites": "hidden,ffn",
                             "pools": "mean,max,first,last", "measured": today,
                             "seconds": round(time.perf_counter() - t0, 1)}
    if probe_backend is not None:
        config[f"probe{sfx}"] = {"store": f"synthetic ({shape['n_layers']} layers, d {shape['d']}, d_ff {shape['d_ff']}), "
                                           "pool mean, 2 classes", "N": n_pr,
                                 "backend": f"{probe_backend} (--backend {args.probe_backend})",
                                 "grid": grid or "default C and eta grids", "measured": today,
                                 "concat_baseline": not args.no_concat_baseline,
                                 "seconds": round(sum(r["seconds"] for r in peaks.values()), 1)}
    if not args.no_merge:
        # keep what an earlier run measured for the parts not run now (e.g. --parts probe)
        common.merge_earlier(BENCHMARK, args.device, args.quick, args.out, config, figures, details)
    common.write_result(BENCHMARK, args.device, config, figures, quick=args.quick, out=args.out, details=details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
