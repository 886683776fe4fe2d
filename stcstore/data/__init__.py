"""Datasets: resolve a spec (bundled alias, local file, Hugging Face id) into splits of texts and columns."""

from __future__ import annotations

from .bundled import BUNDLED_DATASETS, BundledDataset, bundled_file
from .source import SUPPORTED_EXTENSIONS, Source, SourceSplit, column_kind, from_datasets, load_source

__all__ = [
    "BUNDLED_DATASETS",
    "BundledDataset",
    "bundled_file",
    "SUPPORTED_EXTENSIONS",
    "Source",
    "SourceSplit",
    "column_kind",
    "from_datasets",
    "load_source",
]
