"""A summary of a store: runs, fingerprints, splits, shapes, bytes, completion, experiments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .layout import PROBES_DIR, itemsize
from .location import Location, open_location
from .quiet import quiet_zarr
from .reader import RunReader
from .root import list_runs, open_root

__all__ = ["store_summary"]


def _experiment(loc: Location) -> dict[str, Any]:
    """What `info` shows of one probe experiment, from its report.json (None where unreadable)."""
    try:
        report = json.loads((loc / "report.json").read_text())
        stc = report.get("stc") or {}
        return {"name": loc.name, "label": report.get("label"), "classes": report.get("classes"),
                "val": stc.get("val"), "test": stc.get("test"),
                "stc": {k: stc.get(k) for k in ("site", "pool", "k", "eta", "C", "n_features")}}
    except (OSError, ValueError, AttributeError):
        return {"name": loc.name, "label": None, "classes": None, "val": None, "test": None, "stc": None}


def _bytes_under(files: dict[str, int], prefix: str) -> int:
    prefix = prefix.rstrip("/") + "/"
    return sum(size for name, size in files.items() if name.startswith(prefix))


def store_summary(store: "str | Path | Location") -> dict[str, Any]:
    """Everything `stcstore info` shows, as a JSON-able dict."""
    loc = open_location(store)
    with quiet_zarr():
        runs = list_runs(open_root(loc))
    files = loc.files()  # one listing of the whole store (one request per 1,000 objects on S3)
    out: dict[str, Any] = {"store": loc.url, "bytes_on_disk": sum(files.values()), "runs": []}
    for name in runs:
        r = RunReader(loc, name)
        arrays = []
        for split in r.splits:
            for site in r.sites:
                for pool in r.pools:
                    a = r.array(split, site, pool)
                    raw = int(a.size) * itemsize(r.layout.dtype)
                    arrays.append({"split": split, "site": site, "pool": pool, "shape": list(a.shape),
                                   "dtype": r.layout.dtype, "bytes_raw": raw,
                                   "bytes_stored": _bytes_under(files, f"{name}/{split}/{site}/{pool}")})
        completion = r.completion()
        truncated = sum(rec.get("truncated", 0) for s in r.splits for rec in r.window_records(s).values())
        out["runs"].append({
            "run": name,
            "fingerprint_hash": r.meta.get("fingerprint_hash"),
            "fingerprint": r.fingerprint,
            "model": {k: r.model.get(k) for k in ("spec", "model_type", "n_layers", "d", "d_ff", "weight_hash")},
            "dataset": r.dataset,
            "splits": {s: r.n_rows(s) for s in r.splits},
            "completion": {s: {"windows_done": d, "windows_total": t} for s, (d, t) in completion.items()},
            "complete": r.is_complete(),
            "truncated_rows": truncated,
            "arrays": arrays,
            "bytes_raw": sum(a["bytes_raw"] for a in arrays),
            "bytes_stored": sum(a["bytes_stored"] for a in arrays),
            "experiments": r.experiments(),
            # what --label / --split-column can take, per split
            "columns": {s: r.columns(s) for s in r.splits},
            "experiment_reports": [_experiment(r.run_loc / PROBES_DIR / e) for e in r.experiments()],
        })
    return out
