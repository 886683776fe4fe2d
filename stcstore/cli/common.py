"""What every command shares: stderr console, logging, and turning errors into one line."""

from __future__ import annotations

import functools
import logging
from typing import Callable, TypeVar

import typer
from rich.console import Console

from ..errors import StcstoreError, UserError

__all__ = ["err_console", "out_console", "setup_logging", "handle_errors", "split_csv"]

# stdout carries only results (labels, tables, JSON); everything else goes to stderr
err_console = Console(stderr=True)
out_console = Console()
F = TypeVar("F", bound=Callable)


def setup_logging(level: int = logging.INFO) -> None:
    """Send the library's log records to stderr."""
    from rich.logging import RichHandler

    logger = logging.getLogger("stcstore")
    logger.handlers.clear()
    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # third-party chatter (transformers, datasets) stays at warnings
    for name in ("transformers", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # their own progress bars (weight loading, split generation) would clutter stderr
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def handle_errors(fn: F) -> F:
    """Turn a user error into one stderr line and exit 2, any other stcstore error into exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except StcstoreError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: rerun the same command to resume", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def split_csv(value: str | None) -> tuple[str, ...] | None:
    """'a,b' -> ('a', 'b'); None stays None."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
