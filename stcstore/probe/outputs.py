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


def load_outputs(folder: Path) -> tuple[dict, list, Any]:
    """(report, search, classifier artifact) of a finished experiment folder."""
    from ..classifier.artifact import ClassifierArtifact

    report = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    search_path = folder / SEARCH_NAME
    search = json.loads(search_path.read_text(encoding="utf-8")) if search_path.is_file() else []
    return report, search, ClassifierArtifact.load(folder / CLASSIFIER_DIR)


def copy_out(src: Path, out: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy an experiment folder's files into --out (created if needed; our files replaced)."""
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
