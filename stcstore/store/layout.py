"""Names, chunking and codecs of the on-disk layout (store format v1)."""

from __future__ import annotations

import math

__all__ = [
    "FORMAT_VERSION",
    "ROOT_ATTR",
    "RUN_ATTR",
    "PROGRESS_DIR",
    "LOCK_FILE",
    "PROBES_DIR",
    "CACHE_GROUP",
    "ROW_ID",
    "N_TOKENS",
    "COLUMNS_GROUP",
    "TARGET_CHUNK_BYTES",
    "array_path",
    "column_path",
    "chunk_rows_for",
    "compressor",
    "itemsize",
]

FORMAT_VERSION = 1
ROOT_ATTR = "stcstore"          # root group attrs: {"stcstore": {"format_version": 1}}
RUN_ATTR = "stcstore_run"       # run group attrs: fingerprint, model, dataset, shapes
PROGRESS_DIR = "_progress"      # <run>/_progress/<split>/w<index>.json: committed windows
LOCK_FILE = "_writer.lock"      # <run>/_writer.lock: flock held by the one writer
PROBES_DIR = "probes"           # <run>/probes/<name>/: report.json, classifier/, plots
CACHE_GROUP = "_cache"          # <run>/_cache/...: probe statistics reused across experiments
ROW_ID = "row_id"
N_TOKENS = "n_tokens"
COLUMNS_GROUP = "columns"
# Probes read every feature of a block of rows; ~1 MiB chunks keep reads large and few.
TARGET_CHUNK_BYTES = 1 << 20


def array_path(split: str, site: str, pool: str) -> str:
    """Path of one activation array inside a run group."""
    return f"{split}/{site}/{pool}"


def column_path(split: str, name: str) -> str:
    """Path of one stored source column inside a run group."""
    return f"{split}/{COLUMNS_GROUP}/{name}"


def itemsize(dtype: str) -> int:
    """Bytes per element of a stored activation dtype."""
    return {"float16": 2, "float32": 4}[dtype]


def chunk_rows_for(min_width: int, dtype: str, n_rows: int) -> int:
    """Rows per chunk so the narrowest activation chunk is about TARGET_CHUNK_BYTES."""
    rows = math.ceil(TARGET_CHUNK_BYTES / (min_width * itemsize(dtype)))
    # multiples of 64 keep batches aligned inside a window
    rows = max(64, 64 * math.ceil(rows / 64))
    return max(1, min(rows, n_rows))


def compressor(dtype: str):
    """zstd with byte shuffle; blosc takes its typesize from the array dtype (2 for fp16)."""
    from zarr.codecs import BloscCodec, BloscShuffle

    return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)
