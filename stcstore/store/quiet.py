"""Silence zarr's warning about the non-Zarr files a run keeps beside its arrays."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

__all__ = ["quiet_zarr"]


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Hide 'not recognized as a component of a Zarr hierarchy' for _progress, probes, locks."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        yield
