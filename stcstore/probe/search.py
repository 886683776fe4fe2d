"""The probe search, as the stages of the method; each stage lives in its own module.

(1) one L1 probe per (site, pool, layer), read out of core (layer_probes.py, blocks.py);
(2) per site choice, pool and eta, a kept-feature design fitted over every depth k and C at
once (candidates.py) -- stages 1 and 2 run per split plan in stages.py, once, or once more per
fold with --cv (crossval.py); (3) the winner chosen on val by the selection rule
(selection.py), refitted on train + val and scored once on test (scoring.py, refit.py), with
the baselines treated alike (baselines.py); (4) classifier, search table, test predictions,
plots and report land in the experiment folder, the report last (outputs.py).

Nothing is lost: each finished layer fit is checkpointed in a cache shared by the run's
experiments (checkpoints.py) and each (site choice, pool) aggregation in the experiment folder
(experiment.py, which also holds the lock and the settings). Rerunning the same command
resumes and gives the same report; a finished experiment is returned as it is.

Memory: one layer block at a time, plus the kept columns of one pool's layers (store dtype)
while that pool is aggregated, plus one float32 design and the solver's state. The
all-layers-concat baseline is the exception by definition (every layer of one site/pool at
once); turn it off with `concat_baseline=False` (`--no-concat-baseline`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..config import ProbeConfig
from ..errors import ConfigError, MissingDependencyError, StoreError
from ..store.fingerprint import fingerprint_hash
from ..store.location import Location, open_location
from ..store.reader import RunReader
from .aggregate import site_choices
from .baselines import concat_baseline as _concat_baseline
from .baselines import layer_baselines
from .candidates import SELECTION_ORDER
from .checkpoints import LayerFitCache
from .crossval import cv_candidate, cv_layer_scores, cv_plans
from .experiment import REPORT_NAME, Experiment
from .layer_probes import layer_entry
from .memory import concat_bytes, format_bytes, out_of_memory_as, resolve_budget
from .outputs import CLASSIFIER_DIR, SEARCH_NAME, copy_out, load_outputs, write_outputs
from .report import BASELINE_NAMES
from .scoring import public_entry, score_stc
from .selection import choose
from .splits import SplitPlan, resolve_splits
from .stages import run_stages
from .standardize import StatsCache

__all__ = ["ProbeResult", "run_probe", "REPORT_NAME", "SEARCH_NAME", "CLASSIFIER_DIR"]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}$")


@dataclass
class ProbeResult:
    """What `run_probe` produced: the report, where it was written, the classifier, every config scored."""

    report: dict[str, Any]
    name: str
    path: "Path | Location"          # <store>/<run>/probes/<name> (a Location when the store is in a bucket)
    out: Optional[Path]              # the --out copy, if asked for
    classifier: Any                  # ClassifierArtifact
    search: list[dict[str, Any]] = field(default_factory=list)
    finished_before: bool = False    # True when a finished experiment was returned as it was

    @property
    def stc(self) -> dict[str, Any]:
        """The winning configuration's report entry."""
        return self.report["stc"]


class _Timer:
    """Named wall-clock accumulators."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


# -- settings -------------------------------------------------------------------------------------


def _experiment_name(config: ProbeConfig) -> str:
    if config.name is not None:
        if not _NAME_RE.match(config.name):
            raise ConfigError(
                f"--name {config.name!r} is not a plain folder name: use letters, digits and . _ - = + (no slashes)"
            )
        return config.name
    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", config.label).lstrip("._-") or "probe"
    return name[:100]


def _pick(given: Optional[Sequence[str]], have: Sequence[str], what: str) -> tuple[str, ...]:
    if given is None:
        return tuple(have)
    missing = [g for g in given if g not in have]
    if missing:
        raise ConfigError(
            f"{what} {','.join(missing)} not extracted in this run (it has {','.join(have)}): "
            f"pick from those with --{what}s, or re-extract"
        )
    return tuple(given)


def _get_solver(config: ProbeConfig) -> Any:
    try:
        from .solvers import get_solver
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(__package__ + ".solvers"):
            raise MissingDependencyError(
                "the probe solvers (stcstore.probe.solvers) are not installed: reinstall stcstore"
            ) from None
        raise
    return get_solver(backend=config.backend, device=config.device, memory_budget=config.memory_budget)


def _settings(config: ProbeConfig, reader: RunReader, fp_hash: str, sites: Sequence[str], pools: Sequence[str],
              solver: Any, want_concat: bool) -> dict[str, Any]:
    """Everything that changes an experiment's result (its identity)."""
    return {
        "run": reader.name, "fingerprint_hash": fp_hash, "label": config.label,
        "split_column": config.split_column, "seed": config.seed, "sites": list(sites), "pools": list(pools),
        "c_grid": list(config.c_grid), "eta_grid": list(config.eta_grid), "c_stop": config.c_stop,
        "backend": getattr(solver, "name", type(solver).__name__), "device": str(getattr(solver, "device", "cpu")),
        "concat_baseline": want_concat, "selection": config.selection, "refit": config.refit, "cv": config.cv,
    }


# -- the search -----------------------------------------------------------------------------------
def run_probe(config: ProbeConfig, *, concat_baseline: Optional[bool] = None, solver: Any = None) -> ProbeResult:
    """Probe every layer, sparsify, aggregate, pick the winner on val, score test once, write outputs.

    `concat_baseline` overrides `config.concat_baseline` (default True): the all-layers-concat
    baseline holds every layer of one site/pool in memory. `solver` replaces the one
    `config.backend` picks (any `Solver`). An experiment of the same name and settings resumes
    (or is returned when finished); other settings are refused unless `config.overwrite`.
    Process settings are the caller's: the `probe` and `demo` commands first call
    `stcstore.heap.return_freed_blocks_to_os` (it bounds the peak memory of large searches).
    """
    timer = _Timer()
    t_start = time.perf_counter()
    config = config.validate()
    want_concat = bool(getattr(config, "concat_baseline", True) if concat_baseline is None else concat_baseline)
    name = _experiment_name(config)
    out_extra = Path(config.out).expanduser() if config.out else None
    if out_extra is not None and out_extra.exists() and not out_extra.is_dir():
        raise ConfigError(f"--out {str(out_extra)!r} is a file: give a folder path")

    with timer("load"):
        reader = RunReader(open_location(config.store, config.storage_options), config.run)
        reader.require_complete()
        sites = _pick(config.sites, reader.sites, "site")
        pools = _pick(config.pools, reader.pools, "pool")
        plan = resolve_splits(reader, config.label, config.split_column, config.seed)
    if solver is None:
        solver = _get_solver(config)
    fp_hash = reader.meta.get("fingerprint_hash") or fingerprint_hash(reader.fingerprint)
    settings = _settings(config, reader, fp_hash, sites, pools, solver, want_concat)
    with Experiment(reader.probes_dir(), name).open(settings, fresh=config.fresh, overwrite=config.overwrite) as exp:
        finished_before = exp.finished
        if finished_before:
            report, search, artifact = load_outputs(exp.path)
            log.info("experiment %r is finished with these settings: returning its result", name)
        else:
            with out_of_memory_as("out of memory while probing: rerun the same command with a smaller "
                                  "--memory-budget (it resumes where it stopped), or probe fewer --pools/--sites"):
                report, search, artifact = _search(config, reader, plan, solver, exp, sites, pools, fp_hash,
                                                   want_concat, timer, t_start)
        out_copy = copy_out(exp.path, out_extra, skip=_PRIVATE) if out_extra is not None else None
    stc = report["stc"]
    log.info("STC %s/%s eta %g k %d C %g: val %.4f test %.4f (%d features); in %s",
             stc["site"], stc["pool"], stc["eta"], stc["k"], stc["C"], stc["val"], stc["test"],
             stc["n_features"], exp.path)
    return ProbeResult(report=report, name=name, path=exp.path, out=out_copy, classifier=artifact, search=search,
                       finished_before=finished_before)


_PRIVATE = ("_probe.lock", "_checkpoints", "experiment.json")


def _search(config: ProbeConfig, reader: RunReader, plan: SplitPlan, solver: Any, exp: Experiment,
            sites: Sequence[str], pools: Sequence[str], fp_hash: str, want_concat: bool, timer: Any,
            t_start: float) -> tuple[dict, list, Any]:
    """The search proper, resuming from the experiment's checkpoints; returns report, search, artifact."""
    K = plan.n_classes
    etas = tuple(config.eta_grid)
    y_tr, y_va, y_te = plan.y["train"], plan.y["val"], plan.y["test"]
    log.info(
        "probing %r of run %r: %d classes, train %d / val %d / test %d rows (%s splits), backend %s on %s",
        config.label, reader.name, K, len(y_tr), len(y_va), len(y_te), plan.source,
        getattr(solver, "name", "?"), getattr(solver, "device", "?"),
    )
    n_layers = {s: reader.n_layers(s) for s in sites}
    choices = [c for c in site_choices(sites) if c != "both" or _both_ok(n_layers)]
    plans = [("", plan)] + ([(f"fold{i}.", p) for i, p in enumerate(cv_plans(plan, config.cv, config.seed))]
                            if config.cv else [])
    per_plan = sum(n_layers[s] for s in sites) * len(pools) + len(choices) * len(pools) * len(etas)
    with _progress(config.progress, per_plan * len(plans)) as bar:
        stages = {tag: run_stages(config, reader, p, solver, exp, sites, pools, fp_hash, n_layers, choices, timer, bar,
                               tag)
                  for tag, p in plans}
    main = stages[""]
    probes, search, front, resumed, fits = main.probes, main.search, main.front, main.resumed, main.fits
    cache, row_maps = main.cache, main.row_maps
    if not front:
        raise StoreError("no probe kept any neuron (every layer probe is all zeros): try a larger --c-grid")

    # -- 3. the chosen config and the layer baselines on the test split, once (refit on train + val) -
    n_val = plan.n("val")
    if config.cv:
        folds = [stages[tag] for tag, _ in plans[1:]]
        # the folds' tables go into search.json too, each entry with its fold
        search = search + [{**e, "fold": i} for i, f in enumerate(folds) for e in f.search]
        best, runner_up, rule = cv_candidate(folds, probes, choices, pools, etas, config.selection,
                                              plan.n("train") + n_val)
        # the layer baselines are chosen on their fold means too
        scores = cv_layer_scores([f.probes for f in folds])
        probes = {k: dataclasses.replace(p, val=scores[k][0], n_nonzero=int(round(scores[k][1])))
                  for k, p in probes.items()}
        n_val = plan.n("train") + n_val
    else:
        best, runner_up, rule = choose(front, *SELECTION_ORDER,
                                       config.selection, n_val)
        runner_up = None if runner_up is None else runner_up.entry
    preds: dict[str, Any] = {}          # every reported model's test predictions
    with timer("test"):
        stc, artifact = score_stc(best, config, reader, plan, row_maps, solver, fp_hash, preds)
    stc["selection"] = {**rule, "runner_up": None if runner_up is None else public_entry(runner_up)}
    with timer("baselines"):
        baselines: dict[str, Any] = layer_baselines(probes, sites, pools, n_layers, reader, plan, row_maps, cache,
                                                    solver, config.selection, config.refit, preds, n_val=n_val)
    baselines["all_layers_concat"] = None

    # -- 4. report and classifier first; the concat baseline (optional, memory-hungry) after --------
    report = _report(config, reader, plan, solver, exp.name, fp_hash, sites, pools, probes, n_layers, stc,
                     baselines, search, cache, fits, resumed, timer, t_start)
    if want_concat:
        report["pending"] = ["all_layers_concat"]
    # plots are an extra too: drawn once, with the final report
    predictions = {"classes": plan.classes, "y": plan.y["test"], "models": preds}
    write_outputs(exp.path, report, search, artifact, config.plots and not want_concat, predictions)
    if want_concat:
        b = baselines["best_layer"]
        too_big = _concat_too_big(solver, config, plan, reader.width(b["site"]) * n_layers[b["site"]])
        if too_big:
            log.warning("%s", too_big)
            report.setdefault("notes", []).append(too_big)
        else:
            oom = (f"out of memory in the all-layers-concat baseline (the report and classifier are written in "
                   f"{exp.path}): rerun with a smaller --memory-budget to finish it, or add --no-concat-baseline "
                   f"--overwrite to go without it")
            with timer("concat_baseline"), out_of_memory_as(oom):
                report["baselines"]["all_layers_concat"] = _concat_baseline(
                    solver, reader, plan, row_maps, cache, b["site"], b["pool"], n_layers[b["site"]], config.c_grid,
                    config.selection, config.refit, preds, c_stop=config.c_stop)
            report["test_scored"].append("all_layers_concat")
        report.pop("pending")
        report["timing_s"] = _timings(timer, t_start)
        write_outputs(exp.path, report, search, artifact, config.plots, predictions)
    return report, search, artifact


def _concat_too_big(solver: Any, config: ProbeConfig, plan: SplitPlan, n_cols: int) -> Optional[str]:
    """Why the concat baseline is skipped (its rows would not fit the host budget), or None."""
    n_rows = sum(plan.n(r) for r in ("train", "val", "test"))
    need = concat_bytes(n_rows, plan.n("train"), n_cols, getattr(solver, "name", ""))
    budget = resolve_budget("cpu", config.memory_budget)
    if need <= budget:
        return None
    return (f"all_layers_concat skipped: its {n_rows} x {n_cols} rows need about {format_bytes(need)}, over the "
            f"memory budget of {format_bytes(budget)} (set --memory-budget, or --no-concat-baseline)")


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    """One progress display over layer probes and aggregation steps (log lines when not a terminal)."""
    from ..progress import progress_bar

    with progress_bar(total, desc="probe", unit="step", enabled=enabled, leave=False) as bar:
        yield bar


def _both_ok(n_layers: dict[str, int]) -> bool:
    ok = n_layers["hidden"] == n_layers["ffn"] + 1
    if not ok:
        log.warning("skipping site 'both': hidden has %d entries, ffn %d (expected L+1 and L)",
                    n_layers["hidden"], n_layers["ffn"])
    return ok


def _timings(timer: Any, t_start: float) -> dict[str, float]:
    timings = dict(timer.t)
    timings["total"] = time.perf_counter() - t_start
    for k in ("load", "probes", "aggregate"):
        timings.setdefault(k, 0.0)
    return timings


def _report(config: ProbeConfig, reader: RunReader, plan: SplitPlan, solver: Any, name: str, fp_hash: str,
            sites: Sequence[str], pools: Sequence[str], probes: dict, n_layers: dict[str, int], stc: dict,
            baselines: dict, search: list, cache: StatsCache, fits: LayerFitCache, resumed: int, timer: Any,
            t_start: float) -> dict[str, Any]:
    """The report.json document (DESIGN.md's contract keys first)."""
    return {
        "label": config.label,
        "classes": plan.classes,
        "n": {"train": plan.n("train"), "val": plan.n("val"), "test": plan.n("test")},
        "metric": "accuracy",
        "backend": getattr(solver, "name", str(solver)),
        "device": str(getattr(solver, "device", "cpu")),
        "stc": stc,
        "baselines": {k: baselines.get(k) for k in BASELINE_NAMES},
        "layers": [layer_entry(probes[(s, p, l)]) for s in sites for p in pools for l in range(n_layers[s])],
        "timing_s": _timings(timer, t_start),
        "run": reader.name,
        "store": str(reader.store_path),
        "name": name,
        "split_source": plan.source,
        "split_notes": plan.notes,
        "seed": config.seed,
        "sites": list(sites),
        "pools": list(pools),
        "c_grid": list(config.c_grid),
        "eta_grid": list(config.eta_grid),
        "c_stop": config.c_stop,
        # configurations fitted and scored (with c_stop > 0, paths that turned down skip their larger Cs)
        "n_configs": len(search),
        "test_scored": ["stc", "last_layer", "best_layer"],
        "selection": config.selection,
        "refit": config.refit,
        "cache": {"key": cache.key, "hits": cache.hits, "misses": cache.misses},
        "reused": {"layer_probes": fits.reused, "layer_probes_fitted": fits.fitted, "aggregations": resumed},
        "model": reader.meta.get("model"),
        "fingerprint_hash": fp_hash,
    }
