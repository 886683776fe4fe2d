"""`stcstore rm`: delete an experiment or a run, refused while its writer runs."""

from __future__ import annotations

from typing import List, Optional

import typer

from .app import app
from .common import STORAGE_OPTION_HELP, err_console, handle_errors, store_location


@app.command("rm")
@handle_errors
def rm_cmd(
    store: str = typer.Option(..., "--store", help="Store: a folder or a URL (s3://bucket/x.zarr, ...)."),
    run: Optional[str] = typer.Option(None, "--run", help="Run to delete, or whose experiment to delete."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="Experiment (probe --name) to delete."),
    storage_option: Optional[List[str]] = typer.Option(None, "--storage-option", help=STORAGE_OPTION_HELP),
    break_lock: bool = typer.Option(False, "--break-lock", help="First remove the locks of writers that died (checks that their heartbeat stopped; says what it removed)."),
) -> None:
    """Delete one experiment (--experiment) or a whole run (--run alone)."""
    from ..errors import ConfigError
    from ..store.remove import remove

    if run is None and experiment is None:
        raise ConfigError("name what to delete: --experiment NAME (of the store's only run) or --run RUN")
    removed = remove(store_location(store, storage_option), run, experiment, break_locks=break_lock)
    err_console.print(f"removed {removed}", highlight=False, markup=False, soft_wrap=True)
