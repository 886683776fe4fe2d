"""Probe speed: the full STC search with `--backend sklearn` against the default backend.

The compared backend is what `--backend auto` picks on --device (the batched torch solver).
Were auto ever to resolve to sklearn, comparing sklearn with itself would say nothing, so the
torch backend is measured instead; `config.compared_backend` and `config.auto_resolves_to`
record which.

Same store, same grid (every site, pool, layer, C, eta and k), same seeded splits; each search
runs alone in a fresh subprocess through `stcstore.probe.run_probe(ProbeConfig(...))`, with
the per-layer statistics cache of the run cleared first so neither backend reuses the
other's work. Full mode: MiniLM over >= 6,000 Rotten Tomatoes rows, default grids; or an
existing store (--store, e.g. all 12,808 rows), optionally restricted to some poolings
(--pools mean: a quarter of the work, the same restriction for both backends). Quick: a
tiny synthetic store (benchmarks/synthetic.py) and a small grid, a smoke test of the path.

  probe_speedup_vs_sklearn          wall time sklearn / compared backend         goal >= 10
  probe_{val,test}_acc_{sklearn,<backend>}   accuracy of the STC winner of each backend
  probe_{val,test}_gap_pt           |<backend> - sklearn| in accuracy points     goal <= 0.5
  probe_seconds_{sklearn,<backend>}, probe_phase_s_<phase>_<backend>, peak_rss_mb_probe_<backend>
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Timer, log, median, run_worker  # noqa: E402

BENCHMARK = "probe_speed"


def worker_probe(spec: dict) -> dict:
    from stcstore.config import ProbeConfig
    from stcstore.probe import run_probe

    common.drop_warnings()
    grid = {k: tuple(spec[k]) for k in ("c_grid", "eta_grid") if spec.get(k)}
    pools = {"pools": tuple(spec["pools"])} if spec.get("pools") else {}
    cfg = ProbeConfig(store=spec["store"], label="label", backend=spec["backend"], device=spec["device"],
                      name=spec["name"], progress=False, plots=False, **grid, **pools)
    with Timer(spec["device"]) as t:
        res = run_probe(cfg)
    rep = res.report
    stc = rep["stc"]
    return {"seconds": t.s, "cpu_s": t.cpu, "val": stc["val"], "test": stc["test"], "backend": rep.get("backend"),
            "device": rep.get("device"), "timing_s": rep.get("timing_s"), "n": rep["n"], "n_configs": rep.get("n_configs"),
            "stc": {k: stc.get(k) for k in ("site", "pool", "eta", "k", "C", "n_features", "val", "test")},
            "baselines": {b: {k: (v or {}).get(k) for k in ("site", "pool", "layer", "C", "n_features", "val", "test")}
                          for b, v in rep["baselines"].items()}}


def worker_extract(spec: dict) -> dict:
    from stcstore.config import ExtractConfig
    from stcstore.extract import extract

    common.drop_warnings()
    res = extract(ExtractConfig(model=spec.get("model_dir") or "minilm", data=spec.get("data") or "rotten_tomatoes",
                                store=spec["store"], limit=spec["rows"],
                                device=spec["device"], progress=False))
    return {"seconds": res.seconds, "rows": res.rows_done_now}


WORKERS = {"probe": worker_probe, "extract": worker_extract}


def _clear_cache(store: Path) -> None:
    """Remove every run's per-layer statistics cache (<run>/_cache), so each search starts cold."""
    for cache in store.glob("*/_cache"):
        shutil.rmtree(cache, ignore_errors=True)


def main(argv=None) -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="rows of Rotten Tomatoes (full mode; default 6000)")
    p.add_argument("--store", type=Path, default=None, help="reuse an existing MiniLM store instead of extracting")
    p.add_argument("--pools", default=None,
                   help="search only these poolings (e.g. mean), the same for both backends (default: every stored one)")
    p.add_argument("--c-grid", default=None, help="C values, comma-separated (a reduced grid; default: stcstore's)")
    p.add_argument("--eta-grid", default=None, help="eta values, comma-separated (default: stcstore's)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="a model folder in place of the bundled MiniLM (scripts/gpu_assets.py model: MiniLM-shaped, random weights)")
    p.add_argument("--data", default=None, help="data spec in place of the bundled rotten_tomatoes (a csv with text,label)")
    args = p.parse_args(argv)
    if common.worker_dispatch(args, WORKERS):
        return 0
    common.check_device(args.device)
    try:
        from stcstore.probe import run_probe  # noqa: F401
    except Exception as exc:
        sys.exit(f"stcstore.probe.run_probe is not available yet ({exc!r}): nothing measured")
    script = Path(__file__).resolve()
    repeats = args.repeats or 1
    t0 = time.perf_counter()
    from stcstore.probe.solvers import get_solver

    auto_is = getattr(get_solver("auto", args.device), "name", "auto")
    fast = "auto" if auto_is != "sklearn" else "torch"
    fast_name = auto_is if fast == "auto" else "torch"
    backends = {"sklearn": "sklearn", fast_name: fast}
    log(f"--backend auto on {args.device} resolves to {auto_is}: comparing sklearn with {fast_name} ({fast})")
    with common.scratch_dir(BENCHMARK, args.keep) as scratch:
        if args.store:
            from stcstore.store import open_run

            store = args.store
            reader = open_run(store)
            rows = sum(reader.layout.splits.values())
            data = (f"existing store: {reader.model.get('spec')} over {reader.dataset.get('spec')}, {rows} rows, "
                    f"sites {','.join(reader.sites)}, pools {','.join(reader.pools)}")
        elif args.quick:
            from synthetic import write_synthetic_store

            rows = args.rows or 300
            store = write_synthetic_store(scratch / "syn.zarr", rows, n_layers=2, d=32, d_ff=64, pools=("mean", "max"))
            data = f"synthetic ({rows} rows, 2 layers, d 32, d_ff 64, pools mean,max)"
        else:
            rows = args.rows or 6000
            store = scratch / "rt.zarr"
            log(f"extracting {rows} rows of rotten_tomatoes with minilm (every site and pool)")
            r = run_worker(script, "extract", {"store": str(store), "rows": rows, "device": args.device,
                                               "model_dir": str(args.model_dir) if args.model_dir else None,
                                               "data": args.data},
                           threads=args.threads)
            log(f"extracted in {r['seconds']:.0f} s")
            data = f"minilm over rotten_tomatoes, {rows} rows, every site and pool"
            if args.model_dir:
                # the search's cost depends on the shapes (rows, layers, widths), not on the weights
                data = (f"MiniLM-shaped BERT with random weights ({args.model_dir}) over {args.data or 'rotten_tomatoes'}, "
                        f"{rows} rows, every site and pool: the timings depend on the shapes, not the weights")
        grid = {"c_grid": [0.1, 1.0], "eta_grid": [0.5, 1.0]} if args.quick else {}
        for key, value in (("c_grid", args.c_grid), ("eta_grid", args.eta_grid)):
            if value:
                grid[key] = [float(v) for v in value.split(",")]
        runs: dict[str, list] = {b: [] for b in backends}
        for rep in range(repeats):
            order = list(backends) if rep % 2 == 0 else list(reversed(backends))
            for b in order:
                _clear_cache(Path(store))
                # sklearn is the CPU reference whatever --device says; the default backend runs on --device
                dev = "cpu" if b == "sklearn" else args.device
                name = f"bench-{b}-{rep}"
                spec = {"store": str(store), "backend": backends[b], "device": dev, "name": name,
                        "pools": args.pools.split(",") if args.pools else None, **grid}
                r = run_worker(script, "probe", spec, threads=args.threads, timeout=4 * 3600)
                log(f"{b:>8} ({r['backend']} on {r['device']}): {r['seconds']:.1f} s, val {r['val']:.4f} "
                    f"test {r['test']:.4f}, STC {r['stc']}")
                runs[b].append(r)
                # only this benchmark's experiment: a reused store keeps its users' experiments
                for d in Path(store).glob(f"*/probes/{name}"):
                    shutil.rmtree(d, ignore_errors=True)
    sec = {b: median(r["seconds"] for r in runs[b]) for b in backends}
    first = {b: runs[b][0] for b in backends}
    f = fast_name
    figures = {
        "probe_speedup_vs_sklearn": sec["sklearn"] / sec[f],
        "probe_speedup_vs_sklearn_cpu_time": median(r["cpu_s"] for r in runs["sklearn"]) / median(r["cpu_s"] for r in runs[f]),
        "probe_seconds_sklearn": sec["sklearn"],
        f"probe_seconds_{f}": sec[f],
    }
    for b in backends:
        figures[f"probe_val_acc_{b}"] = first[b]["val"]
        figures[f"probe_test_acc_{b}"] = first[b]["test"]
        figures[f"peak_rss_mb_probe_{b}"] = median(r["peak_rss_mb"] for r in runs[b])
        for base, v in (first[b].get("baselines") or {}).items():
            if v and v.get("test") is not None:
                figures[f"baseline_test_acc_{base}_{b}"] = v["test"]
        for phase, s in (first[b].get("timing_s") or {}).items():
            figures[f"probe_phase_s_{phase}_{b}"] = s
    figures["probe_val_gap_pt"] = 100 * abs(first[f]["val"] - first["sklearn"]["val"])
    figures["probe_test_gap_pt"] = 100 * abs(first[f]["test"] - first["sklearn"]["test"])
    config = {"store": data, "rows": rows, "grid": grid or "default C and eta grids (stcstore.config)",
              "pools": args.pools or "every stored pool",
              "compared_backend": f"{first[f]['backend']} (--backend {fast})", "auto_resolves_to": auto_is,
              "device": first[f]["device"],
              "n": first[f]["n"], "n_configs": first[f]["n_configs"], "repeats": repeats,
              "threads": args.threads or "torch default", "seconds": round(time.perf_counter() - t0, 1)}
    common.write_result(BENCHMARK, args.device, config, figures, quick=args.quick, out=args.out,
                        details={"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
