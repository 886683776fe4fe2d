"""Resolve a dataset spec (bundled alias, local file or folder, Hugging Face id) into splits."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError
from .loaders import SUPPORTED_EXTENSIONS, _alternatives, _as_dict, _one_line, resolve_spec

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["SourceSplit", "Source", "load_source", "from_datasets", "SUPPORTED_EXTENSIONS", "column_kind"]

logger = logging.getLogger(__name__)

_INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_FLOAT_DTYPES = {"float16", "float32", "float64"}
_STR_DTYPES = {"string", "large_string"}
_HASH_BATCH = 8192


def column_kind(feature: Any) -> str | None:
    """'str' / 'int' / 'bool' / 'float' for a scalar `datasets` feature, None for anything else."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "int"
    if isinstance(feature, datasets.Value):
        dtype = feature.dtype
        if dtype in _STR_DTYPES:
            return "str"
        if dtype == "bool":
            return "bool"
        if dtype in _INT_DTYPES:
            return "int"
        if dtype in _FLOAT_DTYPES:
            return "float"
    return None


@dataclass
class SourceSplit:
    """One split: an arrow-backed `datasets.Dataset`, its text column and the stored columns."""

    name: str
    dataset: "datasets.Dataset"
    text_column: str
    columns: tuple[str, ...]
    _arrow: Any = field(init=False, repr=False, compare=False)
    _kinds: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.columns = tuple(self.columns)
        self._arrow = self.dataset.with_format("arrow")
        features = self.dataset.features
        self._kinds = {}
        for name in (self.text_column, *self.columns):
            if name not in features:
                raise DataError(
                    f"column {name!r} not found in split {self.name!r}: columns are "
                    f"{', '.join(features)}; pass --text-column / --columns with existing names"
                )
            kind = column_kind(features[name])
            if kind is None:
                raise DataError(
                    f"column {name!r} of split {self.name!r} is not a scalar column "
                    f"({features[name]}): pass --columns with int, bool, float or string columns"
                )
            self._kinds[name] = kind
        if self._kinds[self.text_column] != "str":
            raise DataError(
                f"text column {self.text_column!r} of split {self.name!r} holds "
                f"{features[self.text_column]}, not strings: pass --text-column NAME of a string column"
            )

    def __len__(self) -> int:
        """Number of rows."""
        return len(self.dataset)

    def kind(self, name: str) -> str:
        """'str' / 'int' / 'bool' / 'float': the kind of a text or stored column."""
        return self._kinds[name]

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """Names of the classes of stored ClassLabel columns (the column holds their indices)."""
        import datasets

        out: dict[str, tuple[str, ...]] = {}
        for name in self.columns:
            feature = self.dataset.features[name]
            if isinstance(feature, datasets.ClassLabel):
                out[name] = tuple(feature.names)
        return out

    def table(self, start: int, stop: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows [start, stop) of the given columns (default: text and stored) as a pyarrow Table."""
        n = len(self)
        if not (0 <= start <= stop <= n):
            raise IndexError(f"rows [{start}, {stop}) out of range for split {self.name!r} of {n} rows")
        names = list(columns) if columns is not None else [self.text_column, *self.columns]
        return self._arrow[start:stop].select(names)

    def texts(self, start: int, stop: int) -> list[str]:
        """Texts of rows [start, stop) in source order."""
        return self.table(start, stop, [self.text_column]).column(0).to_pylist()

    def column(self, name: str) -> np.ndarray:
        """A whole stored column: int64 / bool / float64 (nulls -> NaN) / str (nulls -> '')."""
        if name not in self._kinds:
            raise DataError(
                f"column {name!r} is not stored for split {self.name!r}: stored columns are "
                f"{', '.join(self.columns) or '(none)'}; pass --columns to choose them"
            )
        arr = self.table(0, len(self), [name]).column(0)
        return _to_numpy(arr, self._kinds[name], f"column {name!r} of split {self.name!r}")


def _to_numpy(arr: pa.ChunkedArray, kind: str, what: str) -> np.ndarray:
    """Convert an arrow column to the numpy dtype of its kind."""
    if kind == "str":
        if arr.null_count:
            logger.warning("%s has %d empty (null) values: read as ''", what, arr.null_count)
            arr = pc.fill_null(arr, "")
        values = arr.to_pylist()
        return np.array(values, dtype=np.str_) if values else np.array([], dtype=np.str_)
    if arr.null_count:
        logger.warning("%s has %d null values: read as NaN (float64)", what, arr.null_count)
        return np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if kind == "int":
        try:
            arr = pc.cast(arr, pa.int64())
        except pa.ArrowInvalid as exc:
            raise DataError(f"{what} does not fit in int64 ({_one_line(exc)}): store it as a float or string column") from exc
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    if kind == "bool":
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)
    return np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


class _ColumnHasher:
    """Hash of one column as streams (validity, lengths, bytes) that do not depend on batching."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.valid = hashlib.sha256()
        self.lengths = hashlib.sha256()
        self.data = hashlib.sha256()

    def update(self, arr: pa.ChunkedArray | pa.Array) -> None:
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
        self.valid.update(np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        if self.kind == "str":
            a = pc.fill_null(arr.cast(pa.large_string()), "")
            bufs = a.buffers()
            offsets = np.frombuffer(bufs[1], dtype=np.int64)[a.offset : a.offset + len(a) + 1]
            self.lengths.update(np.diff(offsets).astype("<i8").tobytes())
            if bufs[2] is not None and len(a):
                self.data.update(memoryview(bufs[2])[int(offsets[0]) : int(offsets[-1])])
            return
        target = {"int": pa.int64(), "bool": pa.uint8(), "float": pa.float64()}[self.kind]
        a = pc.fill_null(pc.cast(arr, target), 0)
        dtype = {"int": "<i8", "bool": "u1", "float": "<f8"}[self.kind]
        self.data.update(np.asarray(a.to_numpy(zero_copy_only=False)).astype(dtype).tobytes())

    def digest(self) -> bytes:
        return self.valid.digest() + self.lengths.digest() + self.data.digest()


def _framed(h: "hashlib._Hash", text: str) -> None:
    raw = text.encode("utf-8")
    h.update(len(raw).to_bytes(8, "little"))
    h.update(raw)


@dataclass
class Source:
    """A resolved dataset: what the user gave, a description, and its splits in source order."""

    spec: str
    description: str
    splits: dict[str, SourceSplit]

    def content_hash(self, batch_size: int = _HASH_BATCH) -> str:
        """sha256 hex over every split's texts and stored columns (independent of batch size)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}: pass a positive integer")
        h = hashlib.sha256(b"stcstore-source-content-v1\0")
        for split_name, split in self.splits.items():
            _framed(h, split_name)
            h.update(len(split).to_bytes(8, "little"))
            names = [split.text_column, *split.columns]
            hashers = [_ColumnHasher(split.kind(name)) for name in names]
            for start in range(0, len(split), batch_size):
                table = split.table(start, min(start + batch_size, len(split)), names)
                for i, hasher in enumerate(hashers):
                    hasher.update(table.column(i))
            for i, (name, hasher) in enumerate(zip(names, hashers)):
                _framed(h, "text" if i == 0 else "column")
                _framed(h, name)
                _framed(h, hasher.kind)
                h.update(hasher.digest())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# resolving the spec


def _first_null(arr: pa.ChunkedArray) -> int:
    return int(pc.index(pc.is_null(arr), True).as_py())


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be a positive integer, got {limit!r}: pass --limit N with N >= 1")


def load_source(
    spec: str,
    text_column: str = "text",
    columns: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Source:
    """Resolve a bundled alias, local csv/tsv/jsonl/json/parquet file or folder, or hub id into a Source."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"no dataset given: {_alternatives()}")
    _check_limit(limit)
    spec = spec.strip()
    loaded, description = resolve_spec(spec, None if cache_dir is None else str(cache_dir), trust_remote_code)
    return from_datasets(
        loaded, spec=spec, description=description, text_column=text_column, columns=columns,
        splits=splits, limit=limit,
    )


def from_datasets(
    data: "datasets.Dataset | datasets.DatasetDict | Mapping[str, datasets.Dataset]",
    spec: str = "<memory>",
    description: str | None = None,
    text_column: str = "text",
    columns: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
) -> Source:
    """A Source over datasets already in hand (one Dataset is split train), with load_source's checks."""
    import datasets

    _check_limit(limit)
    loaded = _as_dict(data)
    description = description if description is not None else f"memory:{spec}"
    if splits is not None:
        wanted = list(dict.fromkeys(splits))
        unknown = [s for s in wanted if s not in loaded]
        if unknown:
            raise DataError(
                f"split {', '.join(map(repr, unknown))} not in {spec!r}: available splits are "
                f"{', '.join(loaded)}; pass --split with one of them"
            )
        loaded = {name: ds for name, ds in loaded.items() if name in wanted}

    if limit is not None:
        loaded = {name: (ds.select(range(limit)) if len(ds) > limit else ds) for name, ds in loaded.items()}

    nonempty = {name: ds for name, ds in loaded.items() if len(ds) > 0}
    if not nonempty:
        raise DataError(
            f"dataset {spec!r} has no rows in split(s) {', '.join(loaded) or '(none)'}: "
            f"give a dataset with at least one row"
        )
    for name in loaded:
        if name not in nonempty:
            logger.warning("split %r of %s is empty: skipped", name, spec)

    wanted_columns = None if columns is None else [c for c in dict.fromkeys(columns) if c != text_column]
    out: dict[str, SourceSplit] = {}
    for name, ds in nonempty.items():
        if not isinstance(ds, datasets.Dataset):  # pragma: no cover - streaming is never asked for
            raise DataError(f"split {name!r} of {spec!r} is not a map-style dataset: load it without streaming")
        features = ds.features
        if text_column not in features:
            raise DataError(
                f"text column {text_column!r} not found in split {name!r}: columns are "
                f"{', '.join(features)}; pass --text-column NAME"
            )
        if wanted_columns is None:
            stored = tuple(c for c, f in features.items() if c != text_column and column_kind(f) is not None)
        else:
            missing = [c for c in wanted_columns if c not in features]
            if missing:
                raise DataError(
                    f"column {', '.join(map(repr, missing))} not found in split {name!r}: columns are "
                    f"{', '.join(features)}; pass --columns with existing names"
                )
            stored = tuple(wanted_columns)
        split = SourceSplit(name=name, dataset=ds, text_column=text_column, columns=stored)
        text = split.table(0, len(split), [text_column]).column(0)
        if text.null_count:
            raise DataError(
                f"text column {text_column!r} of split {name!r} has {text.null_count} empty (null) "
                f"value(s), first at row {_first_null(text)}: drop or fill those rows"
            )
        out[name] = split
    source = Source(spec=spec, description=description, splits=out)
    logger.info("loaded %s: %s", description, ", ".join(f"{n} {len(s)} rows" for n, s in out.items()))
    return source
