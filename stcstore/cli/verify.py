"""`stcstore verify`: every committed window's chunks present and intact."""

from __future__ import annotations

from typing import List, Optional

import typer

from .app import app
from .common import STORAGE_OPTION_HELP, err_console, handle_errors, out_console, store_location


@app.command("verify")
@handle_errors
def verify_cmd(
    store: str = typer.Option(..., "--store", help="Store: a folder or a URL (s3://bucket/x.zarr, ...)."),
    run: Optional[str] = typer.Option(None, "--run", help="Only this run (default: every run of the store)."),
    repair: bool = typer.Option(False, "--repair", help="Forget the damaged windows' commit records, so rerunning the same extract command redoes them."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    storage_option: Optional[List[str]] = typer.Option(None, "--storage-option", help=STORAGE_OPTION_HELP),
) -> None:
    """Check that every committed window's chunks exist and decode (crc32c checksum where stored); exit 2 when not."""
    from ..errors import DamagedRunError
    from ..progress import progress_bar
    from ..store.quiet import quiet_zarr
    from ..store.reader import RunReader
    from ..store.root import check_store_path, list_runs, open_root
    from ..store.verify import damage_message, drop_windows, verify_run, verify_units

    store = check_store_path(store_location(store, storage_option), must_exist=True)
    with quiet_zarr():
        runs = [run] if run is not None else list_runs(open_root(store))
    readers = [RunReader(store, name) for name in runs]
    bad = []
    for reader in readers:
        with progress_bar(verify_units(reader), desc=f"verify {reader.name}", unit="array-window",
                          enabled=not no_progress) as bar:
            res = verify_run(reader, progress=bar.update)
        if res.ok:
            incomplete = "" if res.windows_committed == res.windows_total else \
                f" (INCOMPLETE: {res.windows_committed}/{res.windows_total} windows committed: rerun the extract command)"
            how = "checksums and decoding" if res.checksummed else "decoding only: no checksums in this older store"
            out_console.print(
                f"run {res.run}: {res.windows_committed} committed windows, {res.chunks_checked:,} chunks intact "
                f"({how}){incomplete}", highlight=False, soft_wrap=True)
            continue
        if repair:
            n = drop_windows(reader, res.damaged_windows)
            err_console.print(
                f"run {res.run}: {len(res.damage)} damaged chunks; forgot {n} window(s) "
                f"({', '.join(f'{s} {w}' for s, w in res.damaged_windows)}): rerun the same `stcstore extract` "
                f"command to re-extract them", highlight=False, soft_wrap=True)
            continue
        bad.append(damage_message(res.run, store, res.damage))
    if bad:
        # one line: the first damaged run (a store rarely has several; verify names them one by one)
        raise DamagedRunError(bad[0] + (f"; {len(bad) - 1} more run(s) damaged" if len(bad) > 1 else ""))
