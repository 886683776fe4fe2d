"""Opening a store: validate the path, create the root group, list runs."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import zarr

from ..errors import StoreError, StoreNotFoundError
from .layout import FORMAT_VERSION, ROOT_ATTR, RUN_ATTR
from .location import Location, open_location
from .quiet import quiet_zarr

__all__ = ["check_store_path", "open_root", "list_runs", "resolve_run", "metadata_errors"]


def _damaged_metadata(store: Location) -> tuple[str, str] | None:
    """The first zarr.json under a store that is not a Zarr v3 node document: (relative path, why)."""
    # "c/" holds chunks, never metadata
    names = sorted(k for k in store.files() if k.rsplit("/", 1)[-1] == "zarr.json" and "/c/" not in f"/{k}")
    for rel in names:
        try:
            doc = json.loads((store / rel).read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            return rel, f"not JSON: {exc}"
        if not isinstance(doc, dict) or doc.get("node_type") not in ("group", "array") \
                or not isinstance(doc.get("attributes", {}), dict):
            return rel, "not a Zarr group or array document"
    return None


@contextmanager
def metadata_errors(store: "str | Path | Location | None") -> Iterator[None]:
    """Turn zarr's failure to decode a damaged zarr.json of this store into one StoreError naming the file."""
    try:
        yield
    except StoreError:
        raise
    except (ValueError, TypeError, zarr.errors.BaseZarrError) as exc:
        # zarr raises JSONDecodeError, TypeError or its own errors from deep inside; only a file
        # we can point at becomes a user-facing message, anything else stays a real bug
        found = None if store is None else _damaged_metadata(open_location(store))
        if found is None:
            raise
        raise StoreError(
            f"store {str(store)!r} is damaged: {found[0]} is {found[1]}: restore the file from a copy, "
            f"or delete that run's folder and extract it again"
        ) from exc


def check_store_path(path: "str | Path | Location", *, must_exist: bool,
                     storage_options: Optional[Mapping[str, Any]] = None) -> Location:
    """Validate a store path or URL; raise a one-line error naming the problem and the fix."""
    p = open_location(path, storage_options)
    if p.is_local and p.local_path.exists() and not p.local_path.is_dir():
        raise StoreError(f"store path {p.url!r} is a file: give a directory path such as {p.local_path.stem}.zarr")
    meta_file = p / "zarr.json"
    has_meta = meta_file.is_file()
    if not has_meta and not p.exists():
        if must_exist:
            raise StoreNotFoundError(
                f"store {p.url!r} does not exist: run `stcstore extract --store {p.url}` first"
            )
        bucket = p.bucket()
        if bucket is not None and not bucket.exists():
            raise StoreNotFoundError(
                f"bucket {bucket.url!r} does not exist (or these credentials cannot see it): create it first, "
                f"or check --store and AWS_ENDPOINT_URL / --storage-option endpoint_url"
            )
        return p
    if not has_meta and p.children():
        raise StoreError(
            f"{p.url!r} is a directory but not a stcstore store: give a new or empty path"
        )
    if has_meta:
        with metadata_errors(p):
            attrs = zarr.open_group(p.zarr_store(read_only=True), mode="r").attrs.asdict()
        meta = attrs.get(ROOT_ATTR)
        if not isinstance(meta, dict):
            raise StoreError(f"{p.url!r} is a Zarr group but not a stcstore store: give another path")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"store {p.url!r} has format {meta.get('format_version')}, newer than this "
                f"stcstore reads ({FORMAT_VERSION}): upgrade stcstore"
            )
    elif must_exist:
        raise StoreNotFoundError(f"store {p.url!r} is empty: run `stcstore extract --store {p.url}` first")
    return p


def open_root(path: "str | Path | Location", *, create: bool = False) -> zarr.Group:
    """Open the root group of a store (creating it when asked)."""
    p = check_store_path(path, must_exist=not create)
    if create and not (p / "zarr.json").is_file():
        root = zarr.open_group(p.zarr_store(), mode="a")
        root.attrs[ROOT_ATTR] = {"format_version": FORMAT_VERSION}
        return root
    return zarr.open_group(p.zarr_store(read_only=not create), mode="a" if create else "r")


def list_runs(root: zarr.Group) -> list[str]:
    """Names of the runs in a store whose arrays were fully created."""
    with quiet_zarr(), metadata_errors(_store_location(root)):
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


def _store_location(root: zarr.Group) -> Optional[Location]:
    """The Location of an opened root group (for naming a damaged file), where zarr tells it."""
    store = root.store
    local = getattr(store, "root", None)
    if local is not None:
        return open_location(Path(local))
    return None
