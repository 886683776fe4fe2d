"""The probe report: contract keys (DESIGN.md), metrics helpers, JSON writing and the rich table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

__all__ = [
    "REPORT_KEYS",
    "STC_KEYS",
    "LAYER_KEYS",
    "BASELINE_NAMES",
    "check_report",
    "write_json",
    "render_table",
    "render_class_table",
]

REPORT_KEYS = ("label", "classes", "n", "metric", "backend", "device", "stc", "baselines", "layers", "timing_s")
STC_KEYS = ("site", "pool", "eta", "k", "C", "n_features", "val", "test", "macro_f1")
LAYER_KEYS = ("site", "pool", "layer", "C", "val", "test", "n_nonzero")
BASELINE_NAMES = ("last_layer", "best_layer", "all_layers_concat")
TIMING_KEYS = ("load", "probes", "aggregate", "total")


def check_report(report: Mapping[str, Any]) -> list[str]:
    """Contract keys missing from a report (empty when complete)."""
    missing = [k for k in REPORT_KEYS if k not in report]
    missing += [f"n.{k}" for k in ("train", "val", "test") if k not in report.get("n", {})]
    missing += [f"stc.{k}" for k in STC_KEYS if k not in report.get("stc", {})]
    missing += [f"baselines.{k}" for k in BASELINE_NAMES if k not in report.get("baselines", {})]
    for i, entry in enumerate(report.get("layers", [])):
        missing += [f"layers[{i}].{k}" for k in LAYER_KEYS if k not in entry]
    missing += [f"timing_s.{k}" for k in TIMING_KEYS if k not in report.get("timing_s", {})]
    return missing


def _clean(v: Any) -> Any:
    """JSON-safe: NumPy scalars to Python, NaN/inf to null, tuples to lists."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON (indented, NaN as null) atomically: readers see the old file or the new one."""
    from ..store.progress import atomic_write_text

    from ..store.location import Location

    path = path if isinstance(path, Location) else Path(path)  # a Location on object storage stays one
    atomic_write_text(path, json.dumps(_clean(obj), indent=2) + "\n")
    return path


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.1f}"


_ROW_NAMES = {"last_layer": "last layer", "best_layer": "best layer", "all_layers_concat": "all layers"}


def render_table(report: Mapping[str, Any]):
    """A rich Table: baselines vs STC, val and test accuracy, features kept (fits 80 columns)."""
    from rich import box
    from rich.table import Table

    n = report.get("n", {})
    title = (
        f"{report.get('label')}: {len(report.get('classes', []))} classes, train {n.get('train')} / "
        f"val {n.get('val')} / test {n.get('test')}, {report.get('backend')} on {report.get('device')}"
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col, just in (("probe", "left"), ("site/pool", "left"), ("layers", "left"), ("eta", "right"),
                      ("C", "right"), ("feats", "right"), ("val %", "right"), ("test %", "right"),
                      ("F1 %", "right"), ("AUC %", "right")):
        table.add_column(col, justify=just, no_wrap=True)
    for name in BASELINE_NAMES:
        b = report.get("baselines", {}).get(name)
        if not b:
            table.add_row(_ROW_NAMES[name], "skipped", "", "", "", "", "", "", "", "", style="dim")
            continue
        table.add_row(_ROW_NAMES[name], f"{b.get('site')}/{b.get('pool')}", _layers_text(b), "",
                      f"{b.get('C'):g}", str(b.get("n_features")), _fmt(b.get("val")), _fmt(b.get("test")),
                      _fmt(b.get("macro_f1")), _fmt(b.get("roc_auc")))
    s = report["stc"]
    table.add_row(
        "STC", f"{s['site']}/{s['pool']}", _layers_text(s), f"{s['eta']:g}", f"{s['C']:g}",
        str(s["n_features"]), _fmt(s["val"]), _fmt(s["test"]), _fmt(s.get("macro_f1")), _fmt(s.get("roc_auc")),
        style="bold",
    )
    notes = []
    if s.get("refit"):
        train_only = f" (train only: STC {_fmt(s['no_refit']['test'])}%)" if "no_refit" in s else ""
        notes.append(f"test: refit on train + val{train_only}")
    if s.get("cv"):
        notes.append(f"val: mean of {s['cv']['k']} folds over train + val (std {100 * s['cv']['val_std']:.1f} pt)")
    sel = s.get("selection") or {}
    if sel.get("rule") == "one_se":
        notes.append(f"chosen: simplest within one SE ({100 * sel['se']:.1f} pt) of the best val {_fmt(sel['best_val'])}%")
    if notes:
        table.caption = "; ".join(notes)
        table.caption_justify = "left"
    return table


def render_class_table(report: Mapping[str, Any]):
    """Per-class precision, recall and F1 of the STC classifier on test, and its confusion matrix row."""
    from rich import box
    from rich.table import Table

    s = report["stc"]
    if "precision" not in s:
        return None
    table = Table(title="STC per class on test (rows: true class)", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    classes = [str(c) for c in report.get("classes", [])]
    for col in ("class", "precision %", "recall %", "F1 %", *(f"-> {c}" for c in classes)):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    for i, c in enumerate(classes):
        table.add_row(c, _fmt(s["precision"][i]), _fmt(s["recall"][i]), _fmt(s["f1"][i]),
                      *(str(n) for n in s["confusion_matrix"][i]))
    return table


def _layers_text(entry: Mapping[str, Any]) -> str:
    if "layer" in entry and entry.get("layer") is not None:
        return f"{str(entry.get('site', '?'))[0]}{entry['layer']}"
    layers = entry.get("layers") or {}
    parts = []
    for site in ("hidden", "ffn"):
        ls = layers.get(site) or []
        if ls:
            parts.append(f"{site[0]}{min(ls)}-{max(ls)}" if len(ls) > 1 else f"{site[0]}{ls[0]}")
    return " ".join(parts) or "-"
