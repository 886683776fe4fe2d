"""`stcstore explain`: per-token contributions to a classifier's decision on one text."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from .app import app
from .common import err_console, handle_errors, out_console


@app.command("explain")
@handle_errors
def explain_cmd(
    text: str = typer.Argument(..., help="The text to explain."),
    classifier: str = typer.Option(..., "--classifier", help="The classifier/ folder written by `stcstore probe`."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also write a bar chart of the contributions (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print {text, label, logit, intercept, tokens: [{token, contribution}]} (multiclass: lists in class order)."),
    target: Optional[str] = typer.Option(None, "--class", help="Show contributions to this class's score (default: the predicted label) (terminal and plot; --json always gives the raw logits)."),
    centered: bool = typer.Option(False, "--centered", help="Contributions relative to an average training text (activation minus the scaler mean); the intercept is then the classifier's own."),
    top: int = typer.Option(10, "--top", help="Rows of the top-tokens table (tokens that contribute nothing are left out; 0: no table)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Compute dtype auto, float32, bfloat16 or float16 (default: the one the classifier's features were extracted in; another one warns)."),
    model: Optional[str] = typer.Option(None, "--model", help="Where the classifier's model is now, if it moved (its weights must be the same)."),
) -> None:
    """Show how much each token adds to the decision: intercept + contributions = logit, exactly."""
    from ..classifier.predictor import Predictor
    from ..config import DEVICES
    from ..errors import ConfigError
    from ..explain import explain_text, plot_contributions, render_terminal

    if device not in DEVICES:
        raise ConfigError(f"unknown --device {device!r}: choose from {','.join(DEVICES)}")
    from ..explain.render import check_top

    check_top(top)  # before the model loads
    clf = Predictor.load(classifier, device=device, model=model, dtype=dtype)
    expl = explain_text(clf, text, centered=centered)
    expl.view(target)  # an unknown --class fails before anything is printed
    if plot:
        path = plot_contributions(expl, plot, target)
        err_console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(expl.to_json(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        render_terminal(expl, out_console, target, top=top)
