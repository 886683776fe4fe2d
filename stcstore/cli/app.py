"""The typer application and the options every command shares."""

from __future__ import annotations

import logging

import typer

__all__ = ["app"]

app = typer.Typer(
    name="stcstore",
    help="Sparsify-then-Classify on cached transformer activations: extract, probe, predict, explain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to stderr (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log only warnings and errors."),
) -> None:
    """Sparsify-then-Classify on cached transformer activations."""
    from .common import setup_logging

    # errors must stay one line on stderr, so routine messages need -v
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    setup_logging(logging.ERROR if quiet else level)
