"""Writing safetensors files with the permissions of every other file we write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

__all__ = ["save_tensors"]


def save_tensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike[str],
                 metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write NumPy arrays as a safetensors file at `path`, its mode following the umask (like open())."""
    from safetensors.numpy import save

    # safetensors' own save_file creates the file with mode 600 whatever the umask, so a classifier
    # shared through a group folder could not be read by the group; our files are small enough
    # (classifier weights, probe checkpoints, scalers) to serialise in memory and write normally
    data = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(data)
    return path
