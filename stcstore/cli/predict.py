"""`stcstore predict`: apply a saved classifier to texts or a data file (stdout: labels only)."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from .app import app
from .common import err_console, handle_errors


def _fmt(label) -> str:
    # one line per row whatever the label holds
    return str(label).replace("\r", " ").replace("\n", " ")


@app.command("predict")
@handle_errors
def predict_cmd(
    texts: Optional[List[str]] = typer.Argument(None, help="Texts to classify ('-' reads one text per line from stdin)."),
    classifier: str = typer.Option(..., "--classifier", help="The classifier/ folder written by `stcstore probe`."),
    data: Optional[str] = typer.Option(None, "--data", help="csv / jsonl / parquet file (or dataset alias / hub id): predict every row of every split."),
    text_column: Optional[str] = typer.Option(
        None, "--text-column", help="Column holding the text (with --data) (default: the one the classifier's run was extracted from)."),
    split: Optional[List[str]] = typer.Option(None, "--split", help="Only these splits of --data (repeatable) (default: all)."),
    out: Optional[str] = typer.Option(None, "--out", help="Write predictions to a .csv / .tsv / .jsonl / .json / .parquet file instead of stdout."),
    proba: bool = typer.Option(False, "--proba", help="Also give class probabilities (stdout: label, then one tab-separated column per class)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document {classes, n, predictions: [{label, proba, decision}]}."),
    batch_size: int = typer.Option(32, "--batch-size", help="Rows per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Compute dtype auto, float32, bfloat16 or float16 (default: the one the classifier's features were extracted in; another one warns)."),
    model: Optional[str] = typer.Option(None, "--model", help="Where the classifier's model is now, if it moved (its weights must be the same)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Classify texts with a saved STC classifier; only the first layers it needs run."""
    from ..classifier.predictor import (
        Predictor,
        check_out_path,
        load_inputs,
        predict_data,
        predict_texts,
        write_predictions,
    )
    from ..config import DEVICES
    from ..errors import ConfigError

    if device not in DEVICES:
        raise ConfigError(f"unknown --device {device!r}: choose from {','.join(DEVICES)}")
    if bool(texts) == bool(data):
        raise ConfigError("give either TEXT arguments or --data FILE (not both, not neither)")
    if texts and "-" in texts:
        if texts != ["-"]:
            raise ConfigError("'-' (read texts from stdin) cannot be mixed with TEXT arguments")
        texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise ConfigError("no texts on stdin: pipe one text per line, or give TEXT arguments")
    if out:
        check_out_path(out)
    # the inputs are checked before the model loads: a wrong column fails in a second
    if data and text_column is None:
        from ..classifier.artifact import ClassifierArtifact

        # the column the classifier's activations were extracted from (recorded in its config)
        text_column = ClassifierArtifact.load(classifier).extract.get("text_column") or "text"
    source = load_inputs(data, text_column=text_column, splits=split) if data else None
    clf = Predictor.load(classifier, device=device, model=model, batch_size=batch_size, dtype=dtype,
                             progress=bool(data) and not no_progress)
    preds = predict_data(clf, source) if source is not None else predict_texts(clf, texts)
    n = len(preds)
    err_console.print(
        f"{n:,} row(s) in {preds.seconds:.1f} s ({n / max(preds.seconds, 1e-9):,.1f} rows/s): "
        f"{clf.blocks_run_} of {clf.n_layers_} blocks run, {clf.n_features_} neurons read",
        highlight=False, soft_wrap=True,
    )
    if out:
        path = write_predictions(preds, out, proba=proba)
        err_console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(preds.to_json(proba=True), ensure_ascii=False) + "\n")
    elif not out:
        if proba:
            err_console.print("columns: label, " + ", ".join(f"P({c})" for c in preds.classes), highlight=False,
                              soft_wrap=True)
        lines = []
        for i, label in enumerate(preds.labels):
            line = _fmt(label)
            if proba:
                line += "\t" + "\t".join(f"{p:.6f}" for p in preds.proba[i])
            lines.append(line)
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
