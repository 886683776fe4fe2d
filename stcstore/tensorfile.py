"""Writing safetensors files with the permissions of every other file we write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

import numpy as np

if TYPE_CHECKING:
    from .store.location import Location

__all__ = ["save_tensors", "tensor_bytes", "load_tensors"]


def tensor_bytes(tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """NumPy arrays as the bytes of a safetensors file."""
    from safetensors.numpy import save

    return save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)


def save_tensors(tensors: Mapping[str, np.ndarray], path: "str | os.PathLike[str] | Location",
                 metadata: Optional[Mapping[str, str]] = None) -> "Path | Location":
    """Write NumPy arrays as a safetensors file at `path`, its mode following the umask (like open()).

    `path` may be a Location on object storage (store.location): one PUT there.
    """
    # safetensors' own save_file creates the file with mode 600 whatever the umask, so a classifier
    # shared through a group folder could not be read by the group; our files are small enough
    # (classifier weights, probe checkpoints, scalers) to serialise in memory and write normally
    data = tensor_bytes(tensors, metadata)
    from .store.location import Location

    if isinstance(path, Location) and not path.is_local:
        path.write_bytes(data)
        return path
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def load_tensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays, metadata) of the bytes of a safetensors file; ValueError when they are not one."""
    import json

    from safetensors.numpy import load

    arrays = load(data)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return arrays, dict(header.get("__metadata__") or {})
