"""Opening a store: validate the path, create the root group, list runs."""

from __future__ import annotations

from pathlib import Path

import zarr

from ..errors import StoreError, StoreNotFoundError
from .layout import FORMAT_VERSION, ROOT_ATTR, RUN_ATTR
from .quiet import quiet_zarr

__all__ = ["check_store_path", "open_root", "list_runs", "resolve_run"]


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
    with quiet_zarr():
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
