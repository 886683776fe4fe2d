"""Names, chunking and codecs of the on-disk layout (store format v1)."""

from __future__ import annotations

import math

from ..config import CODECS, DEFAULT_CODEC

__all__ = [
    "FORMAT_VERSION",
    "ROOT_ATTR",
    "RUN_ATTR",
    "PROGRESS_DIR",
    "LOCK_FILE",
    "PROBES_DIR",
    "PROBE_LOCK_FILE",
    "CACHE_GROUP",
    "ROW_ID",
    "N_TOKENS",
    "COLUMNS_GROUP",
    "TARGET_CHUNK_BYTES",
    "array_path",
    "column_path",
    "chunk_rows_for",
    "CODECS",
    "DEFAULT_CODEC",
    "compressors",
    "itemsize",
]

FORMAT_VERSION = 1
ROOT_ATTR = "stcstore"          # root group attrs: {"stcstore": {"format_version": 1}}
RUN_ATTR = "stcstore_run"       # run group attrs: fingerprint, model, dataset, shapes
PROGRESS_DIR = "_progress"      # <run>/_progress/<split>/w<index>.json: committed windows
LOCK_FILE = "_writer.lock"      # <run>/_writer.lock: flock held by the one writer
PROBES_DIR = "probes"           # <run>/probes/<name>/: report.json, classifier/, plots
PROBE_LOCK_FILE = "_probe.lock"  # <run>/probes/<name>/_probe.lock: flock held by the experiment's writer
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


# Activation codecs, by name (`extract --codec`, config.CODECS). blosc takes its typesize from
# the array dtype, so byte shuffle sees 2-byte float16 values. Measured on real MiniLM
# activations, one core: the codec alone, blosc zstd 3 stores 0.866 of raw at about 350 MB/s,
# zstd 1 0.879 at 600 MB/s, lz4 0.973 at 1.8 GB/s; through the whole writer
# (benchmarks/store_ingest.py) lz4 ingests 1.7x the rows of zstd 3 at 0.98 of raw; no
# compression is faster still but stores a little more than raw (the checksums). lz4 is the
# fastest codec under raw float16, so it is the default.


def compressors(codec: str = DEFAULT_CODEC) -> tuple:
    """The bytes-to-bytes codecs of an activation array: compression, then a crc32c checksum.

    The checksum comes last so it covers the stored bytes: a flipped bit fails to decode
    (`stcstore verify`) instead of reading back as a wrong number.
    """
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

    comp = {
        "lz4": lambda: BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle),
        "zstd": lambda: BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle),
        "zstd1": lambda: BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle),
        "none": lambda: None,
    }[codec]()
    return (comp, Crc32cCodec()) if comp is not None else (Crc32cCodec(),)
