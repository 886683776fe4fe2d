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
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages to stderr."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log only warnings and errors."),
) -> None:
    """Sparsify-then-Classify on cached transformer activations."""
    from .common import setup_logging

    setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
