"""`stcstore info`: what a store holds."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from .app import app
from .common import STORAGE_OPTION_HELP, handle_errors, out_console, store_location


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _classes(classes, shown: int = 6) -> str:
    if not classes:
        return "-"
    more = f", ... ({len(classes)} in all)" if len(classes) > shown else ""
    return ", ".join(map(str, classes[:shown])) + more


def _columns(per_split: dict[str, list[str]]) -> str:
    """The stored columns: one list when every split has the same, else per split."""
    kinds = {tuple(c) for c in per_split.values()}
    if len(kinds) <= 1:
        return ", ".join(next(iter(kinds), ())) or "none"
    return "; ".join(f"{s}: {', '.join(c) or 'none'}" for s, c in per_split.items())


@app.command("info")
@handle_errors
def info_cmd(
    store: str = typer.Option(..., "--store", help="Store: a folder or a URL (s3://bucket/x.zarr, ...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    storage_option: Optional[List[str]] = typer.Option(None, "--storage-option", help=STORAGE_OPTION_HELP),
) -> None:
    """Runs, fingerprints, splits, shapes, dtype, bytes, completion, stored columns, experiments and their scores."""
    from ..store.info import store_summary
    from ..store.root import check_store_path

    s = store_summary(check_store_path(store_location(store, storage_option), must_exist=True))
    if as_json:
        out_console.print_json(json.dumps(s))
        return
    out_console.print(f"{s['store']}: {len(s['runs'])} run(s), {_mb(s['bytes_on_disk'])} on disk", highlight=False)
    for r in s["runs"]:
        m = r["model"]
        done = sum(c["windows_done"] for c in r["completion"].values())
        total = sum(c["windows_total"] for c in r["completion"].values())
        ratio = r["bytes_stored"] / r["bytes_raw"] if r["bytes_raw"] else 0
        out_console.print(
            f"\nrun {r['run']} (fingerprint {r['fingerprint_hash']}): model {m['spec']} "
            f"({m['model_type']}, {m['n_layers']} layers, d {m['d']}, d_ff {m['d_ff']}), data {r['dataset']['description']}\n"
            f"  completion {done}/{total} windows ({'complete' if r['complete'] else 'INCOMPLETE: rerun the extract command'}), "
            f"{r['truncated_rows']:,} rows truncated; {_mb(r['bytes_stored'])} stored vs {_mb(r['bytes_raw'])} raw ({ratio:.2f}x)",
            highlight=False,
        )
        t = Table("split", "site", "pool", "shape", "dtype", "stored", "raw")
        for a in r["arrays"]:
            t.add_row(a["split"], a["site"], a["pool"], "x".join(map(str, a["shape"])), a["dtype"],
                      _mb(a["bytes_stored"]), _mb(a["bytes_raw"]))
        out_console.print(t)
        out_console.print(f"  columns: {_columns(r['columns'])}")
        if not r["experiment_reports"]:
            out_console.print("  experiments: none")
            continue
        e = Table("experiment", "label", "classes", "STC val", "STC test", "STC uses", title_justify="left")
        for x in r["experiment_reports"]:
            stc = x["stc"] or {}
            uses = (f"{stc.get('site')}/{stc.get('pool')}, first {stc.get('k')} layer(s), {stc.get('n_features')} neurons"
                    if stc else "report unreadable")
            e.add_row(x["name"], str(x["label"]), _classes(x["classes"]), _pct(x["val"]), _pct(x["test"]), uses)
        out_console.print(e)
