"""Opening a store: validate the path, create the root group, list runs."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import zarr

from ..errors import StoreError, StoreNotFoundError
from .layout import FORMAT_VERSION, ROOT_ATTR, RUN_ATTR
from .quiet import quiet_zarr

__all__ = ["check_store_path", "open_root", "list_runs", "resolve_run", "metadata_errors"]


def _damaged_metadata(store: Path) -> tuple[str, str] | None:
    """The first zarr.json under a store that is not a Zarr v3 node document: (relative path, why)."""
    for dirpath, dirnames, filenames in os.walk(store):
        dirnames[:] = sorted(d for d in dirnames if d != "c")  # "c/" holds chunks, never metadata
        if "zarr.json" not in filenames:
            continue
        path = Path(dirpath) / "zarr.json"
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            return str(path.relative_to(store)), f"not JSON: {exc}"
        if not isinstance(doc, dict) or doc.get("node_type") not in ("group", "array") \
                or not isinstance(doc.get("attributes", {}), dict):
            return str(path.relative_to(store)), "not a Zarr group or array document"
    return None


@contextmanager
def metadata_errors(store: str | Path | None) -> Iterator[None]:
    """Turn zarr's failure to decode a damaged zarr.json of this store into one StoreError naming the file."""
    try:
        yield
    except StoreError:
        raise
    except (ValueError, TypeError, zarr.errors.BaseZarrError) as exc:
        # zarr raises JSONDecodeError, TypeError or its own errors from deep inside; only a file
        # we can point at becomes a user-facing message, anything else stays a real bug
        found = None if store is None else _damaged_metadata(Path(store).expanduser())
        if found is None:
            raise
        raise StoreError(
            f"store {str(store)!r} is damaged: {found[0]} is {found[1]}: restore the file from a copy, "
            f"or delete that run's folder and extract it again"
        ) from exc


def check_store_path(path: str | Path, *, must_exist: bool) -> Path:
    """Validate a store path; raise a one-line error naming the problem and the fix."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise StoreError(f"store path {str(p)!r} is a file: give a directory path such as {p.stem}.zarr")
    if not p.exists():
        if must_exist:
            raise StoreNotFoundError(
                f"store {str(p)!r} does not exist: run `stcstore extract --store {p}` first"
            )
        return p
    has_meta = (p / "zarr.json").is_file()
    if not has_meta and any(p.iterdir()):
        raise StoreError(
            f"{str(p)!r} is a directory but not a stcstore store: give a new or empty path"
        )
    if has_meta:
        with metadata_errors(p):
            attrs = zarr.open_group(str(p), mode="r").attrs.asdict()
        meta = attrs.get(ROOT_ATTR)
        if not isinstance(meta, dict):
            raise StoreError(f"{str(p)!r} is a Zarr group but not a stcstore store: give another path")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"store {str(p)!r} has format {meta.get('format_version')}, newer than this "
                f"stcstore reads ({FORMAT_VERSION}): upgrade stcstore"
            )
    elif must_exist:
        raise StoreNotFoundError(f"store {str(p)!r} is empty: run `stcstore extract --store {p}` first")
    return p


def open_root(path: str | Path, *, create: bool = False) -> zarr.Group:
    """Open the root group of a store (creating it when asked)."""
    p = check_store_path(path, must_exist=not create)
    if create and not (p / "zarr.json").is_file():
        root = zarr.open_group(str(p), mode="a")
        root.attrs[ROOT_ATTR] = {"format_version": FORMAT_VERSION}
        return root
    return zarr.open_group(str(p), mode="a" if create else "r")


def list_runs(root: zarr.Group) -> list[str]:
    """Names of the runs in a store whose arrays were fully created."""
    with quiet_zarr(), metadata_errors(getattr(root.store, "root", None)):
        return sorted(name for name, g in root.groups() if RUN_ATTR in g.attrs)


def resolve_run(root: zarr.Group, run: str | None, store_path: str | Path) -> str:
    """The run to read: the one named, or the store's only run."""
    runs = list_runs(root)
    if run is not None:
        if run not in runs:
            have = ", ".join(runs) or "none"
            raise StoreNotFoundError(f"run {run!r} not in store {str(store_path)!r} (runs: {have}): pick one with --run")
        return run
    if not runs:
        raise StoreNotFoundError(f"store {str(store_path)!r} has no runs: run `stcstore extract` first")
    if len(runs) > 1:
        raise StoreError(f"store {str(store_path)!r} has several runs ({', '.join(runs)}): pick one with --run")
    return runs[0]
