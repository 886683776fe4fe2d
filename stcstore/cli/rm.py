"""`stcstore rm`: delete an experiment or a run, refused while its writer runs."""

from __future__ import annotations

from typing import Optional

import typer

from .app import app
from .common import err_console, handle_errors


@app.command("rm")
@handle_errors
def rm_cmd(
    store: str = typer.Option(..., "--store", help="Store directory."),
    run: Optional[str] = typer.Option(None, "--run", help="Run to delete, or whose experiment to delete."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="Experiment (probe --name) to delete."),
) -> None:
    """Delete one experiment (--experiment) or a whole run (--run alone)."""
    from ..errors import ConfigError
    from ..store.remove import remove

    if run is None and experiment is None:
        raise ConfigError("name what to delete: --experiment NAME (of the store's only run) or --run RUN")
    removed = remove(store, run, experiment)
    err_console.print(f"removed {removed}", highlight=False, markup=False, soft_wrap=True)
