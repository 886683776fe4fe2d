"""`stcstore probe`: search per-layer probes, sparsify, aggregate; write the report and classifier."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import typer

from .app import app
from .common import STORAGE_OPTION_HELP, err_console, handle_errors, out_console, split_csv


def _floats(value: Optional[str], flag: str) -> Optional[tuple[float, ...]]:
    from ..errors import ConfigError

    if value is None:
        return None
    try:
        return tuple(float(v) for v in split_csv(value) or ())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, e.g. 0.01,0.1,1 (got {value!r})") from None


@app.command("probe")
@handle_errors
def probe_cmd(
    store: str = typer.Option(..., "--store", help="Store written by `stcstore extract`: a folder or a URL (s3://bucket/x.zarr, ...)."),
    run: Optional[str] = typer.Option(None, "--run", help="Run inside the store (default: its only run)."),
    label: str = typer.Option(..., "--label", help="Stored column holding the labels (ints, bools or strings)."),
    split_column: Optional[str] = typer.Option(
        None, "--split-column", help="Stored column with values train / val (or validation) / test."),
    backend: str = typer.Option("auto", "--backend", help="Probe solver: auto (the batched torch solver, on CUDA if present) | sklearn (CPU reference) | torch | cuml."),
    name: Optional[str] = typer.Option(None, "--name", help="Experiment name under <run>/probes/ (default: the label)."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write report, plots and classifier/ here."),
    c_grid: Optional[str] = typer.Option(None, "--c-grid", help="Inverse L1 strengths, e.g. 0.01,0.1,1."),
    eta_grid: Optional[str] = typer.Option(None, "--eta-grid", help="Kept squared-weight shares in (0,1], e.g. 0.5,0.8,1."),
    c_stop: float = typer.Option(
        1.0, "--c-stop", metavar="N_SE",
        help="End a depth's C path once its val accuracy falls this many standard errors below its best "
             "(its larger C are not fitted); 0 fits every C."),
    sites: Optional[str] = typer.Option(None, "--sites", help="Sites to probe: hidden,ffn (default: all stored)."),
    pools: Optional[str] = typer.Option(None, "--pools", help="Poolings to probe: mean,max,first,last (default: all stored)."),
    seed: int = typer.Option(0, "--seed", help="Seed of carved splits."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda."),
    no_concat_baseline: bool = typer.Option(
        False, "--no-concat-baseline", help="Skip the all-layers-concat baseline (its memory grows with the layers)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Do not draw PNG plots."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json instead of the table."),
    fresh: bool = typer.Option(False, "--fresh", help="Start the experiment over instead of resuming it."),
    selection: str = typer.Option(
        "one_se", "--selection",
        help="How val picks the winner: one_se (the simplest config within one standard error of the best) | best."),
    cv: Optional[int] = typer.Option(
        None, "--cv", help="Choose the configuration by K-fold cross-validation over train + val (K searches more)."),
    no_refit: bool = typer.Option(
        False, "--no-refit", help="Keep the model fitted on train only (default: refit the winner on train + val)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an experiment of this --name that has other settings."),
    memory_budget: Optional[str] = typer.Option(
        None, "--memory-budget",
        help="Memory a probe fit may use on its device, e.g. 2GB or 512MiB (default: 80% of free GPU memory, 50% of available RAM)."),
    storage_option: Optional[List[str]] = typer.Option(None, "--storage-option", help=STORAGE_OPTION_HELP),
) -> None:
    """Probe every layer, sparsify, aggregate the first k layers; pick on val, score test once."""
    from ..config import ProbeConfig
    from ..probe.report import render_class_table, render_table
    from ..probe.search import run_probe
    from ..store.location import parse_storage_options

    kwargs = dict(
        store=store, label=label, run=run, split_column=split_column, backend=backend, name=name, out=out,
        sites=split_csv(sites), pools=split_csv(pools), seed=seed, device=device,
        progress=not no_progress, plots=not no_plots, fresh=fresh, overwrite=overwrite, memory_budget=memory_budget,
        selection=selection, refit=not no_refit, cv=cv, storage_options=parse_storage_options(storage_option),
        c_stop=c_stop,
    )
    cs, etas = _floats(c_grid, "--c-grid"), _floats(eta_grid, "--eta-grid")
    if cs is not None:
        kwargs["c_grid"] = cs
    if etas is not None:
        kwargs["eta_grid"] = etas
    fields = {f.name for f in dataclasses.fields(ProbeConfig)}
    if "concat_baseline" in fields:
        kwargs["concat_baseline"] = not no_concat_baseline
    config = ProbeConfig(**kwargs)
    result = run_probe(config, concat_baseline=not no_concat_baseline)
    if as_json:
        out_console.print_json((result.path / "report.json").read_text(encoding="utf-8"))
    else:
        out_console.print(render_table(result.report))
        classes = render_class_table(result.report)
        if classes is not None:
            out_console.print(classes)
    where = f"{result.path}" + (f" and {result.out}" if result.out else "")
    err_console.print(f"wrote {where}", highlight=False, soft_wrap=True)
