"""What a finished search leaves in its experiment folder: classifier, search table, plots, report.

Each file lands atomically and the report comes last, so a folder with a report is whole.
A finished experiment is loaded back from these files instead of being searched again.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, StoreError
from ..store.location import Location, open_location
from .experiment import REPORT_NAME
from .report import write_json

__all__ = ["SEARCH_NAME", "PREDICTIONS_NAME", "CLASSIFIER_DIR", "write_outputs", "load_outputs", "copy_out"]

log = logging.getLogger(__name__)

SEARCH_NAME = "search.json"
PREDICTIONS_NAME = "test_predictions.json"
CLASSIFIER_DIR = "classifier"


def write_outputs(folder: Path, report: dict, search: list, artifact: Any, plots: bool,
                  predictions: Optional[dict] = None) -> Path:
    """Write classifier/, search.json, test_predictions.json, plots and (last) report.json into a folder.

    `predictions`: {"classes", "y": true class indices of the test rows, "models": name -> predicted
    indices}, for error analysis and confidence intervals over the test rows.
    """
    try:
        artifact.save(folder / CLASSIFIER_DIR)
        write_json(search, folder / SEARCH_NAME)
        if predictions is not None:
            write_json(predictions, folder / PREDICTIONS_NAME)
        if plots:
            from .plots import write_plots

            write_plots(report, folder)
        write_json(report, folder / REPORT_NAME)
    except OSError as exc:
        raise StoreError(f"cannot write the experiment into {str(folder)!r} ({exc}): make the store writable") from None
    return folder


def load_outputs(folder: "Path | Location") -> tuple[dict, list, Any]:
    """(report, search, classifier artifact) of a finished experiment folder."""
    from ..classifier.artifact import ClassifierArtifact

    loc = open_location(folder)
    report = json.loads((loc / REPORT_NAME).read_text())
    try:
        search = json.loads((loc / SEARCH_NAME).read_text())
    except FileNotFoundError:
        search = []
    return report, search, ClassifierArtifact.load(loc / CLASSIFIER_DIR)


def copy_out(src: "Path | Location", out: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy an experiment folder's files into --out (created if needed; our files replaced)."""
    loc = open_location(src)
    if not loc.is_local:
        return _download(loc, out, skip)
    src = loc.local_path
    try:
        out.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            if child.name in skip:
                continue
            dest = out / child.name
            if child.is_dir():
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(child, dest)
            else:
                shutil.copy2(child, dest)
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {str(out)!r} ({exc}): give a writable folder") from None
    return out


def _download(src: Location, out: Path, skip: tuple[str, ...]) -> Path:
    """copy_out from a bucket: every object below the experiment into the local --out folder."""
    files = {rel: size for rel, size in src.files().items() if rel.split("/", 1)[0] not in skip}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for top in {rel.split("/", 1)[0] for rel in files if "/" in rel}:
            if (out / top).is_dir():
                shutil.rmtree(out / top)
        for rel in sorted(files):
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes((src / rel).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {str(out)!r} ({exc}): give a writable folder") from None
    return out
