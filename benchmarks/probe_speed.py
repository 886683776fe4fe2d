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
  probe_max_rel_gap_<backend>       largest relative duality gap at exit over every problem fitted
  probe_max_rel_gap_not_settled_<backend>, probe_settled_share_<backend>   the same over the problems
                                    that stopped on the gap test, and the share that stopped on a
                                    settled objective instead (torch Newton)
  --parts whole: whole_search_seconds_<backend>   the default backend over every stored pooling (the whole
                                    default search, torch's default threads unless --threads)  goal <= 300
  --parts three-class: the same comparison on a 3-class label (the 2016 debates' speaker party, packaged
                                    with scattertext: Republican / Democratic / Moderator), on the
                                    --pools given and THREE_CLASS_GRID (sklearn's saga would take
                                    hours on the default grid), figures suffixed _3class
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Timer, log, median, run_worker  # noqa: E402

BENCHMARK = "probe_speed"
# the 3-class comparison's grid (see --parts three-class)
THREE_CLASS_GRID = {"c_grid": (0.1, 0.3), "eta_grid": (0.5, 1.0)}


def worker_probe(spec: dict) -> dict:
    from stcstore.config import ProbeConfig
    from stcstore.probe import run_probe
    from stcstore.probe.solvers import get_solver

    common.drop_warnings()
    grid = {k: tuple(spec[k]) for k in ("c_grid", "eta_grid") if spec.get(k)}
    pools = {"pools": tuple(spec["pools"])} if spec.get("pools") else {}
    c_stop = {"c_stop": spec["c_stop"]} if spec.get("c_stop") is not None else {}
    cfg = ProbeConfig(store=spec["store"], label="label", backend=spec["backend"], device=spec["device"],
                      name=spec["name"], progress=False, plots=False, **grid, **pools, **c_stop)
    with Timer(spec["device"]) as t:
        # the solver run_probe would pick, made here so that how its problems stopped can be read after
        solver = get_solver(backend=cfg.backend, device=cfg.device, memory_budget=cfg.memory_budget)
        res = run_probe(cfg, solver=solver, concat_baseline=spec.get("concat_baseline"))
    rep = res.report
    stc = rep["stc"]
    return {"seconds": t.s, "cpu_s": t.cpu, "val": stc["val"], "test": stc["test"], "backend": rep.get("backend"),
            "exit": getattr(solver, "exit_summary", None),
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
    p.add_argument("--c-stop", type=float, default=None,
                   help="probe --c-stop for every search (default: stcstore's; 0 fits every C of the grid)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="a model folder in place of the bundled MiniLM (scripts/gpu_assets.py model: MiniLM-shaped, random weights)")
    p.add_argument("--data", default=None, help="data spec in place of the bundled rotten_tomatoes (a csv with text,label)")
    p.add_argument("--parts", default="compare",
                   help="comma list of compare (both backends on --store/--pools), whole (the default backend "
                        "over every stored pooling), three-class (both backends on the debates' speaker party); "
                        "--quick runs all three")
    p.add_argument("--no-merge", action="store_true",
                   help="do not keep the figures of parts not run from an existing result file")
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
    # CI's smoke run takes every path: each part is seconds at quick sizes
    parts = ["compare", "whole", "three-class"] if args.quick else args.parts.split(",")
    unknown = sorted(set(parts) - {"compare", "whole", "three-class"})
    if unknown:
        sys.exit(f"--parts {','.join(unknown)}: choose from compare, whole, three-class")
    today = time.strftime("%Y-%m-%d")
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
        c_stop = _c_stop(args)
        pools = args.pools.split(",") if args.pools else None
        figures: dict = {}
        details: dict = {}
        config: dict = {}
        threads = args.threads or "torch default"
        if "compare" in parts:
            runs = _compare(script, store, backends, pools, grid, args, repeats)
            fig, n_info = _figures(runs, fast_name, "")
            figures.update(fig)
            details["runs"] = runs
            config.update({"store": data, "rows": rows, "grid": grid or "default C and eta grids (stcstore.config)",
                           "pools": args.pools or "every stored pool",
                           "compared_backend": f"{runs[fast_name][0]['backend']} (--backend {fast})",
                           "auto_resolves_to": auto_is, "device": runs[fast_name][0]["device"], **n_info,
                           "repeats": repeats, "threads": threads, "c_stop": c_stop, "measured": today})
        if "whole" in parts:
            log(f"the whole default search (every stored pooling) with {fast_name}")
            whole = _run(script, store, fast, args.device, None, grid, args, "bench-whole")
            details["whole"] = whole
            config["whole"] = {"store": data, "backend": f"{whole['backend']} (--backend {fast})",
                               "grid": grid or "default C and eta grids", "pools": "every stored pool",
                               "threads": threads, "c_stop": c_stop, "measured": today}
            figures[f"whole_search_seconds_{fast_name}"] = whole["seconds"]
            figures[f"whole_search_val_acc_{fast_name}"] = whole["val"]
            figures[f"whole_search_test_acc_{fast_name}"] = whole["test"]
            for phase, sec_ in (whole.get("timing_s") or {}).items():
                figures[f"whole_search_phase_s_{phase}_{fast_name}"] = sec_
        if "three-class" in parts:
            from accuracy import debates_csv

            tc_store = scratch / "debates.zarr"
            csv_path = debates_csv(scratch, 150 if args.quick else None)
            # sklearn's multinomial backend (saga) took over 17 minutes on 2 C x 2 eta of the mean
            # pooling alone: the default grid would take hours, so this part has its own small grid
            tc_grid = {"c_grid": [0.1] if args.quick else list(THREE_CLASS_GRID["c_grid"]),
                       "eta_grid": [1.0] if args.quick else list(THREE_CLASS_GRID["eta_grid"])}
            tc_pools = ["mean"] if args.quick else pools
            log("extracting the debates (3 classes: speaker party) with minilm")
            run_worker(script, "extract", {"store": str(tc_store), "rows": None, "device": args.device,
                                           "model_dir": str(args.model_dir) if args.model_dir else None,
                                           "data": str(csv_path)}, threads=args.threads)
            # quick: saga's concat baseline (every ffn layer at once) was most of a minute
            tc_runs = _compare(script, tc_store, backends, tc_pools, tc_grid, args, repeats,
                               False if args.quick else None)
            tc_fig, tc_n = _figures(tc_runs, fast_name, "_3class")
            figures.update(tc_fig)
            details["runs_3class"] = tc_runs
            config["three_class"] = {"data": "2016 presidential debates (scattertext), label party: 3 classes",
                                     **tc_n, "grid": tc_grid, "pools": tc_pools or "every stored pool",
                                     "threads": threads, "c_stop": c_stop, "measured": today}
    config["seconds"] = round(time.perf_counter() - t0, 1)
    if not args.no_merge:
        # keep what an earlier run measured for the parts not run now (e.g. --parts whole)
        common.merge_earlier(BENCHMARK, args.device, args.quick, args.out, config, figures, details)
    common.write_result(BENCHMARK, args.device, config, figures, quick=args.quick, out=args.out, details=details)
    return 0


def _c_stop(args) -> float:
    """The --c-stop every search of this run uses (stcstore's default unless given)."""
    import dataclasses

    from stcstore.config import ProbeConfig

    default = next(f.default for f in dataclasses.fields(ProbeConfig) if f.name == "c_stop")
    return float(default if args.c_stop is None else args.c_stop)


def _run(script: Path, store: Path, backend: str, device: str, pools, grid: dict, args, name: str,
         concat_baseline: Optional[bool] = None) -> dict:
    """One search in a fresh process on a cold statistics cache; its experiment is removed after."""
    _clear_cache(Path(store))
    spec = {"store": str(store), "backend": backend, "device": device, "name": name, "pools": pools,
            "concat_baseline": concat_baseline, "c_stop": args.c_stop, **grid}
    r = run_worker(script, "probe", spec, threads=args.threads, timeout=4 * 3600)
    log(f"{name:>16} ({r['backend']} on {r['device']}): {r['seconds']:.1f} s, val {r['val']:.4f} "
        f"test {r['test']:.4f}, STC {r['stc']}, exit {r.get('exit')}")
    # only this benchmark's experiment: a reused store keeps its users' experiments
    for d in Path(store).glob(f"*/probes/{name}"):
        shutil.rmtree(d, ignore_errors=True)
    return r


def _compare(script: Path, store: Path, backends: dict, pools, grid: dict, args, repeats: int,
             concat_baseline: Optional[bool] = None) -> dict[str, list]:
    """Every backend on the same store, pools and grid, `repeats` times in alternating order."""
    runs: dict[str, list] = {b: [] for b in backends}
    for rep in range(repeats):
        order = list(backends) if rep % 2 == 0 else list(reversed(backends))
        for b in order:
            # sklearn is the CPU reference whatever --device says; the default backend runs on --device
            dev = "cpu" if b == "sklearn" else args.device
            runs[b].append(_run(script, store, backends[b], dev, pools, grid, args, f"bench-{b}-{rep}",
                                concat_baseline))
    return runs


def _figures(runs: dict[str, list], f: str, suffix: str) -> tuple[dict, dict]:
    """The comparison's figures (names end in `suffix`) and the split sizes and config count."""
    sec = {b: median(r["seconds"] for r in runs[b]) for b in runs}
    first = {b: runs[b][0] for b in runs}
    figures = {
        "probe_speedup_vs_sklearn": sec["sklearn"] / sec[f],
        "probe_speedup_vs_sklearn_cpu_time": median(r["cpu_s"] for r in runs["sklearn"]) / median(r["cpu_s"] for r in runs[f]),
        "probe_seconds_sklearn": sec["sklearn"],
        f"probe_seconds_{f}": sec[f],
    }
    for b in runs:
        figures[f"probe_val_acc_{b}"] = first[b]["val"]
        figures[f"probe_test_acc_{b}"] = first[b]["test"]
        figures[f"peak_rss_mb_probe_{b}"] = median(r["peak_rss_mb"] for r in runs[b])
        for base, v in (first[b].get("baselines") or {}).items():
            if v and v.get("test") is not None:
                figures[f"baseline_test_acc_{base}_{b}"] = v["test"]
        for phase, s in (first[b].get("timing_s") or {}).items():
            figures[f"probe_phase_s_{phase}_{b}"] = s
        ex = first[b].get("exit")
        if ex and ex.get("problems"):
            figures[f"probe_max_rel_gap_{b}"] = ex["max_rel_gap"]
            figures[f"probe_max_rel_gap_not_settled_{b}"] = ex["max_rel_gap_not_settled"]
            figures[f"probe_settled_share_{b}"] = ex["settled"] / ex["problems"]
    figures["probe_val_gap_pt"] = 100 * abs(first[f]["val"] - first["sklearn"]["val"])
    figures["probe_test_gap_pt"] = 100 * abs(first[f]["test"] - first["sklearn"]["test"])
    return {k + suffix: v for k, v in figures.items()}, {"n": first[f]["n"], "n_configs": first[f]["n_configs"]}


if __name__ == "__main__":
    sys.exit(main())
