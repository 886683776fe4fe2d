"""Command line: one module per command, each only parsing options and calling the library."""

from __future__ import annotations

import importlib

from .app import app

__all__ = ["app", "main"]

# each module registers its command on `app`; a missing one (work in progress) is skipped
for _name in ("extract", "info", "probe", "predict", "explain", "demo", "verify", "rm"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise


def main() -> None:
    """Console-script entry point."""
    app()
