"""`stcstore demo`: the bundled MiniLM + Rotten Tomatoes walk-through, resumable."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from .app import app
from .common import err_console, handle_errors, out_console, self_command


@app.command("demo")
@handle_errors
def demo_cmd(
    full: bool = typer.Option(False, "--full", help="Use all 12,808 reviews and probe's full search grid (every pooling, C and eta)."),
    rows: Optional[int] = typer.Option(None, "--rows", help="Use the first N reviews (default: 3000; with the demo's reduced grid under a minute on 2 idle CPU cores)."),
    out: str = typer.Option("stcstore-demo", "--out", help="Folder for the report, plots and classifier/."),
    store: Optional[str] = typer.Option(None, "--store", help="Zarr store (default: <out>/store.zarr); an existing run is reused."),
    batch_size: int = typer.Option(32, "--batch-size", help="Rows per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    backend: str = typer.Option("auto", "--backend", help="Probe solver: auto (the batched torch solver, on CUDA if present) | sklearn (CPU reference) | torch | cuml."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
) -> None:
    """Extract MiniLM activations of Rotten Tomatoes reviews, probe them, then predict and explain two reviews."""
    from ..classifier.predictor import Predictor
    from ..demo import DEFAULT_ROWS, DemoConfig, demo_examples, run_demo
    from ..explain import explain_text, render_terminal
    from ..probe.report import render_table

    cfg = DemoConfig(out=out, store=store, rows=rows, full=full, batch_size=batch_size, device=device,
                     backend=backend, progress=not no_progress).validate()
    n = cfg.n_rows
    err_console.print(
        f"stcstore demo: MiniLM (6 layers) on {'all' if n is None else f'{n:,}'} Rotten Tomatoes reviews "
        f"(fresh vs rotten); store {cfg.store_path}, run {cfg.run_name}",
        highlight=False,
    )
    res = run_demo(cfg)
    t = res.timing_s
    ex_t = "reused" if res.extract_reused else f"{t['extract']:.0f} s"
    pr_t = "reused" if res.probe_reused else f"{t['probe']:.0f} s"
    err_console.print(f"extract {ex_t}, probe {pr_t}; outputs in {res.out}", highlight=False)
    out_console.print(render_table(res.report))
    s = res.report["stc"]
    out_console.print(
        f"STC keeps {s['n_features']} neurons of {s['site']}/{s['pool']} in the first {s['k']} layer(s): "
        f"test accuracy {100 * s['test']:.1f}%.",
        highlight=False,
    )

    clf = Predictor.load(res.classifier, device=device)
    examples = demo_examples(n)
    preds = clf.predict([text for text, _ in examples])
    proba = clf.predict_proba([text for text, _ in examples])
    out_console.print(Text.assemble("\n", ("Predictions", "bold"), f" ({clf.blocks_run_} of {clf.n_layers_} blocks run per forward):"))
    for (text, truth), label, p in zip(examples, preds, proba):
        out_console.print(f"  {label!s:<7} P={p.max():.2f}  (true: {truth})  {text}", highlight=False)
    out_console.print(Text.assemble("\n", ("Explanation", "bold"), " of the first review (token contributions relative to an average review):"))
    render_terminal(explain_text(clf, examples[0][0], centered=True), out_console, top=5)
    # commands that work as printed in a fresh shell (no venv active, any folder)
    cmd, cls = self_command(), shlex.quote(str(Path(res.classifier).absolute()))
    out_console.print(
        f"\nTry: {cmd} predict --classifier {cls} \"your review\"\n"
        f"     {cmd} explain --classifier {cls} \"your review\" --plot explain.png"
    )
    if n is not None and n == DEFAULT_ROWS:
        err_console.print(f"run `{cmd} demo --full` for all 12,808 reviews")
