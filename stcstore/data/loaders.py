"""Loading a dataset spec into `datasets` splits: a bundled alias, a local file or folder, or a hub id."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, DataNotFoundError
from .bundled import BUNDLED_DATASETS, load_bundled_frame

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["SUPPORTED_EXTENSIONS", "resolve_spec"]

logger = logging.getLogger(__name__)

# file suffix -> (datasets packaged builder, builder kwargs)
_FILE_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FILE_BUILDERS)
# suffixes that mark a spec as a file path even when nothing is there (never a hub id)
_PATH_LIKE_SUFFIXES = set(SUPPORTED_EXTENSIONS) | {
    ".txt", ".xlsx", ".xls", ".arrow", ".feather", ".gz", ".bz2", ".xz", ".zst", ".zip", ".tar", ".pq",
}

def _one_line(text: object, limit: int = 300) -> str:
    """First non-empty line of an exception text, shortened: messages stay one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else type(text).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _alternatives() -> str:
    aliases = ", ".join(sorted(BUNDLED_DATASETS))
    return f"give a path to a csv/jsonl/parquet file, a Hugging Face dataset id, or the alias {aliases}"


def _looks_like_path(spec: str) -> bool:
    """True when a spec can only mean a file: a data suffix, a leading / . ~, a backslash, 2+ '/'."""
    if Path(spec).suffix.lower() in _PATH_LIKE_SUFFIXES:
        return True
    if spec.startswith(("/", ".", "~")) or "\\" in spec or (os.sep != "/" and os.sep in spec):
        return True
    return spec.count("/") >= 2


def _datasets_major() -> int:
    import datasets

    try:
        return int(datasets.__version__.split(".")[0])
    except ValueError:  # pragma: no cover
        return 0


def _as_dict(loaded: Any) -> dict[str, "datasets.Dataset"]:
    """A DatasetDict (or one Dataset, named train) as an ordered dict of splits."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return {str(name): ds for name, ds in loaded.items()}


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: datasets wraps parser errors in DatasetGenerationError."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _describe(exc: BaseException) -> str:
    cause = _root_cause(exc)
    text = _one_line(cause) if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _has_no_rows(path: Path, builder: str) -> bool:
    """Cheap checks for a file without rows (datasets 5.x fails on those with obscure errors)."""
    if path.stat().st_size == 0:
        return True
    if builder == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except (pa.ArrowException, OSError):
            return False  # let datasets report the damaged file
    return False


def _load_file(path: Path, cache_dir: str | None) -> dict[str, "datasets.Dataset"]:
    import datasets

    builder, kwargs = _FILE_BUILDERS[path.suffix.lower()]
    no_rows = DataError(f"data file '{path}' has no rows: give a file with at least one row")
    if _has_no_rows(path, builder):
        raise no_rows
    try:
        # datasets keys its cache of a local file on path + mtime only: a file rewritten within
        # one mtime tick would come back stale, so local files are always re-read.
        loaded = datasets.load_dataset(
            builder,
            # data_files are glob patterns: a name such as reviews[v2].csv must match only itself
            data_files={"train": glob.escape(str(path))},
            cache_dir=cache_dir,
            download_mode="force_redownload",
            **kwargs,
        )
    except Exception as exc:  # datasets wraps parser errors in several types
        text = _describe(exc)
        if "corresponds to no data" in text or isinstance(_root_cause(exc), StopIteration):
            raise no_rows from exc
        raise DataError(
            f"cannot read data file '{path}' as {builder} ({text}): fix the file or convert it to "
            f"{'/'.join(e.lstrip('.') for e in SUPPORTED_EXTENSIONS)}"
        ) from exc
    return _as_dict(loaded)


def _load_folder(path: Path, cache_dir: str | None) -> dict[str, "datasets.Dataset"]:
    import datasets

    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _as_dict(datasets.load_from_disk(str(path)))
        return _as_dict(datasets.load_dataset(str(path), cache_dir=cache_dir, download_mode="force_redownload"))
    except Exception as exc:  # datasets raises many types for a folder it cannot read
        raise DataError(
            f"cannot load the folder '{path}' as a dataset ({_describe(exc)}): "
            f"give a folder of data files, a save_to_disk folder, or a single file"
        ) from exc


def _load_hub(spec: str, cache_dir: str | None, trust_remote_code: bool) -> dict[str, "datasets.Dataset"]:
    import datasets

    kwargs: dict[str, Any] = {}
    if trust_remote_code:
        if _datasets_major() >= 4:
            logger.warning(
                "trust_remote_code is ignored: datasets %s no longer runs dataset loading scripts",
                datasets.__version__,
            )
        else:  # pragma: no cover - old datasets only
            kwargs["trust_remote_code"] = True
    from ..hub import cache_only_unless_reachable, did_you_mean, hub_unreachable_note

    try:
        with cache_only_unless_reachable():
            loaded = datasets.load_dataset(spec, cache_dir=cache_dir, **kwargs)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataNotFoundError(
            f"dataset {spec!r} is neither a local file nor a reachable Hugging Face dataset"
            f"{did_you_mean(spec, BUNDLED_DATASETS)} ({hub_unreachable_note() or _one_line(exc)}): {_alternatives()}"
        ) from exc
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot load Hugging Face dataset {spec!r}: {_one_line(exc)}; fix the id or load it locally and save it as a file") from exc
    return _as_dict(loaded)


def _load_bundled(alias: str) -> tuple[dict[str, "datasets.Dataset"], str]:
    import datasets

    frame, description = load_bundled_frame(alias)
    return {"train": datasets.Dataset.from_pandas(frame, preserve_index=False)}, description


def resolve_spec(spec: str, cache_dir: str | None, trust_remote_code: bool) -> tuple[dict[str, "datasets.Dataset"], str]:
    """Load every split of the spec; returns the splits and a description."""
    if spec in BUNDLED_DATASETS:
        return _load_bundled(spec)
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            return _load_folder(path, cache_dir), f"dir:{path}"
        suffix = path.suffix.lower()
        if suffix not in _FILE_BUILDERS:
            raise DataError(
                f"data file '{spec}' has an unsupported type {suffix or '(no extension)'!r}: "
                f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}"
            )
        return _load_file(path, cache_dir), f"{_FILE_BUILDERS[suffix][0]}:{path}"
    if _looks_like_path(spec):
        raise DataNotFoundError(f"data file '{spec}' not found: {_alternatives()}")
    return _load_hub(spec, cache_dir, trust_remote_code), f"hub:{spec}"
