"""`extract` under torchrun: every rank runs this with the same config (see `distributed` for the protocol)."""

from __future__ import annotations

import socket
import time
from typing import Optional

from ..config import ExtractConfig
from ..errors import StcstoreError, StoreError
from ..store import RunWriter, WriterLock, open_root
from ..store.quiet import quiet_zarr
from .distributed import DistContext, DistEnv, RunProgress, Status, assign_windows
from .runner import (ExtractResult, _break_lock, _open_or_create, _Prepared, _prepare, _refuse_mismatch, _result,
                     _run_windows, _todo)

__all__ = ["extract_distributed"]


def extract_distributed(config: ExtractConfig, env: DistEnv) -> ExtractResult:
    """One rank of a torchrun job: set up, agree, write this rank's windows, wait for the rest."""
    t0 = time.perf_counter()
    lock: Optional[WriterLock] = None
    with DistContext(env) as ctx:
        try:
            # 1. every rank loads source and model; rank 0 alone locks, opens or creates the run,
            #    and lists the windows still to do (nobody writes before step 2 completes)
            prep, writer, status, exc = None, None, Status(env.rank), None
            try:
                prep = _prepare(config, env, check_store=env.is_main)
                if env.is_main:
                    _refuse_mismatch(prep)
                    with quiet_zarr():
                        root = open_root(prep.store_path, create=True)
                    _break_lock(config, prep)
                    lock = WriterLock(prep.run_dir, prep.run).acquire()  # held for the whole job
                    writer = _open_or_create(config, prep, root)
                    writer.lock = lock
                    status.todo, status.resumed = _todo(writer)
            except Exception as e:  # reported to every rank by ctx.check
                status, exc = Status.failed(env.rank, e), e
            statuses = ctx.all_gather(status)
            ctx.check(statuses, exc)
            todo, resumed = statuses[0].todo, statuses[0].resumed

            # 2. the others open the run rank 0 made, with the same fingerprint check
            status, exc = Status(env.rank), None
            if not env.is_main:
                try:
                    writer = _attach(prep)
                except Exception as e:
                    status, exc = Status.failed(env.rank, e), e
            ctx.check(ctx.all_gather(status), exc)

            # 3. every rank writes its share; rank 0's bar follows the whole run
            mine = assign_windows(todo, env.rank, env.world_size)
            progress = RunProgress(writer.layout, writer.run_dir, writer.run_name, todo, mine,
                                   config.progress and env.is_main)
            try:
                stats = _run_windows(config, prep, writer, mine, progress, rank=env.rank)
                ctx.barrier(while_waiting=progress.poll if env.is_main else None)
            except StcstoreError as e:
                # this rank stops; torchrun stops the others, and a rerun resumes what was committed
                if not env.is_main:
                    e.args = (f"rank {env.rank} on {socket.gethostname()}: {e}",)
                raise
            finally:
                progress.close()

            # 4. complete when every window of the plan was committed by some rank
            status, exc = Status(env.rank), None
            reports = ctx.all_gather(stats)
            if env.is_main:
                written = {tuple(w) for st in reports for w in st["windows"]}
                missing = [w for w in todo if w not in written]
                if missing:
                    exc = StcstoreError(
                        f"run {prep.run!r} is incomplete: {len(missing)} windows were not written "
                        f"(first: split {missing[0][0]!r}, window {missing[0][1]}): rerun the same command to finish"
                    )
                    status = Status.failed(env.rank, exc)
            ctx.check(ctx.all_gather(status), exc)
        finally:
            if lock is not None:
                lock.release()
    total = {k: sum(st[k] for st in reports) for k in ("rows", "tokens", "truncated")}
    total["resumed"] = resumed
    return _result(prep, total, time.perf_counter() - t0, env.rank, env.world_size, work_seconds=progress.seconds)


def _attach(prep: _Prepared) -> RunWriter:
    """A rank other than 0: open the run that rank 0 has created or opened."""
    where = f"{prep.store_path} (seen from {socket.gethostname()})"
    if not (prep.store_path / "zarr.json").is_file():
        raise StoreError(
            f"store {where} not found although rank 0 created it: put the store on a file system "
            f"that every node shares, or in object storage (s3://...)"
        )
    with quiet_zarr():
        root = open_root(prep.store_path, create=True)  # exists: opens for writing, creates nothing
        writer = RunWriter(root, prep.run_dir, prep.run)
        if not writer.open_existing(prep.fingerprint):
            raise StoreError(
                f"run {prep.run!r} not found in store {where} although rank 0 created it: put the store "
                f"on a file system that every node shares, or in object storage (s3://...)"
            )
    return writer
