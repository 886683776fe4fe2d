"""`extract`: stream pooled activations of every layer into a resumable Zarr run."""

from __future__ import annotations

import importlib.util
import logging
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import ExtractConfig
from ..errors import ConfigError, Float16OverflowError, MissingDependencyError, StcstoreError, StoreError
from ..models import LoadedModel, load_model, resolve_model
from ..store import RunLayout, RunWriter, WriterLock, check_store_path, chunk_rows_for, committed_windows, open_root
from ..store.fingerprint import fingerprint_hash
from ..store.layout import FORMAT_VERSION
from ..store.quiet import quiet_zarr
from ..store.writer import check_fingerprint
from .batching import iter_batches, tokenize_window
from .capture import ActivationCapture
from .device import autocast, resolve_compute_dtype, resolve_device
from .distributed import (
    DistContext,
    DistEnv,
    RunProgress,
    Status,
    assign_windows,
    detect,
    device_map_memory,
    rank_device,
)

__all__ = ["ExtractResult", "extract", "default_run_name", "build_fingerprint"]

log = logging.getLogger(__name__)
_FP16_MAX = 65504.0
_DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class ExtractResult:
    """What one call of `extract` did."""

    store: Path
    run: str
    rows_total: int
    rows_done_now: int
    windows_resumed: int
    tokens: int
    truncated: int
    seconds: float
    device: str
    compute_dtype: str
    rank: int = 0               # under torchrun: this process's rank; counts above are the job's
    world_size: int = 1

    @property
    def rows_per_s(self) -> float:
        return self.rows_done_now / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _slug(spec: str) -> str:
    name = Path(spec.rstrip("/")).name
    name = re.sub(r"\.(gguf|csv|jsonl|json|parquet)(\.\w+)?$", "", name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"


def default_run_name(model: str, data: str) -> str:
    """`<model>__<data>` from the specs' base names, e.g. minilm__rotten_tomatoes."""
    return f"{_slug(model)}__{_slug(data)}"


def build_fingerprint(config: ExtractConfig, loaded: LoadedModel, source, max_length: int,
                      compute_dtype: torch.dtype, chunk_rows: int) -> dict[str, Any]:
    """Everything that changes the stored numbers or their layout."""
    return {
        "format_version": FORMAT_VERSION,
        "model_weight_hash": loaded.info["weight_hash"],
        "model_type": loaded.info["model_type"],
        "tokenizer_hash": loaded.info["tokenizer_hash"],
        "dataset": source.description,
        "dataset_content_hash": source.content_hash(),
        "text_column": config.text_column,
        "splits": {name: len(s) for name, s in source.splits.items()},
        "columns": sorted({c for s in source.splits.values() for c in s.columns}),
        "max_length": max_length,
        "truncation_side": "right",
        "compute_dtype": _DTYPE_NAME[compute_dtype],
        "store_dtype": config.store_dtype,
        "pools": list(config.pools),
        "sites": list(config.sites),
        "chunk_rows": chunk_rows,
    }


@dataclass
class _Prepared:
    """What every process sets up before touching the store: source, model, fingerprint."""

    source: Any
    loaded: LoadedModel
    device: torch.device          # where batches go (the embeddings' device under a device_map)
    compute_dtype: torch.dtype
    max_length: int
    chunk_rows: int
    widths: dict[str, int]
    n_layers: dict[str, int]
    fingerprint: dict[str, Any]
    run: str
    store_path: Path

    @property
    def run_dir(self) -> Path:
        return self.store_path / self.run


def extract(config: ExtractConfig) -> ExtractResult:
    """Run (or resume) an extraction as configured; return what was done.

    Under torchrun (WORLD_SIZE > 1, read now, not at import) every rank calls this with the
    same config and writes its own share of the windows into the one shared store; see
    `stcstore.extract.distributed`.
    """
    env = detect()
    if env is not None:
        return _extract_distributed(config, env)
    t0 = time.perf_counter()
    prep = _prepare(config, None)
    _refuse_mismatch(prep)
    with quiet_zarr():
        root = open_root(prep.store_path, create=True)
    with WriterLock(prep.run_dir, prep.run):
        writer = _open_or_create(config, prep, root)
        todo, resumed = _todo(writer)
        progress = RunProgress(writer.layout, writer.run_dir, writer.run_name, todo, todo, config.progress)
        try:
            stats = _run_windows(config, prep, writer, todo, progress, rank=0)
        finally:
            progress.close()
    stats["resumed"] = resumed
    return _result(prep, stats, time.perf_counter() - t0)


def _prepare(config: ExtractConfig, env: Optional[DistEnv], check_store: bool = True) -> _Prepared:
    """Validate, load the source and the model, and build the fingerprint (no store writes)."""
    from ..data import load_source

    config.validate()
    # under torchrun only rank 0 checks the store here: the others look after it is created
    store_path = check_store_path(config.store, must_exist=False) if check_store else Path(config.store).expanduser()
    source = load_source(
        config.data, text_column=config.text_column, columns=config.columns, splits=config.splits,
        limit=config.limit, trust_remote_code=config.trust_remote_code,
    )
    device = resolve_device(config.device)
    if env is not None:
        device = rank_device(env, device)
    compute_dtype = resolve_compute_dtype(config.dtype, device)
    placement: dict[str, Any] = {}
    if config.device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise MissingDependencyError(f"--device-map {config.device_map} needs accelerate: pip install accelerate")
        placement = {"device_map": config.device_map, "max_memory": device_map_memory(env, device)}
    loaded = load_model(
        resolve_model(config.model), device=device, weights_dtype=compute_dtype,
        trust_remote_code=config.trust_remote_code, revision=config.revision, **placement,
    )
    if placement:
        # batches go where the embeddings are; the hooks bring every pooled tensor back there
        device = loaded.model.get_input_embeddings().weight.device
        log.info("device map: %s", getattr(loaded.model, "hf_device_map", {"": str(device)}))
    max_length = _max_length(config, loaded)
    widths = {"hidden": loaded.info["d"], "ffn": loaded.info["d_ff"]}
    n_layers = {"hidden": loaded.n_layers + 1, "ffn": loaded.n_layers}
    largest = max(len(s) for s in source.splits.values())
    chunk_rows = config.chunk_rows or chunk_rows_for(min(widths[s] for s in config.sites), config.store_dtype, largest)
    fingerprint = build_fingerprint(config, loaded, source, max_length, compute_dtype, chunk_rows)
    run = config.run or default_run_name(config.model, config.data)
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", run) or run.startswith(("_", ".")) or run == "probes":
        raise ConfigError(f"--run {run!r} is not a valid run name: use letters, digits, '.', '_' and '-'")
    return _Prepared(source, loaded, device, compute_dtype, max_length, chunk_rows, widths, n_layers,
                     fingerprint, run, store_path)


def _refuse_mismatch(prep: _Prepared) -> None:
    """Refuse a mismatching run before anything in the store is touched."""
    if (prep.store_path / "zarr.json").is_file():
        with quiet_zarr():
            existing = open_root(prep.store_path)
            if prep.run in existing:
                check_fingerprint(existing[prep.run], prep.run, prep.fingerprint)


def _open_or_create(config: ExtractConfig, prep: _Prepared, root) -> RunWriter:
    """Open the run to resume it, or create its arrays and metadata (call holding the lock)."""
    writer = RunWriter(root, prep.run_dir, prep.run)
    with quiet_zarr():
        if writer.open_existing(prep.fingerprint):
            return writer
        source = prep.source
        layout = RunLayout(
            splits={n: len(s) for n, s in source.splits.items()}, sites=tuple(config.sites),
            pools=tuple(config.pools), n_layers={s: prep.n_layers[s] for s in config.sites},
            width={s: prep.widths[s] for s in config.sites}, dtype=config.store_dtype, chunk_rows=prep.chunk_rows,
        )
        meta = {
            "model": prep.loaded.info,
            "dataset": {"spec": config.data, "description": source.description,
                        "content_hash": prep.fingerprint["dataset_content_hash"]},
            "extract": {"max_length": prep.max_length, "dtype": config.dtype,
                        "compute_dtype": _DTYPE_NAME[prep.compute_dtype], "store_dtype": config.store_dtype,
                        "truncation_side": "right", "padding_side": "right",
                        "text_column": config.text_column, "batch_size": config.batch_size},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        writer.create(
            layout, prep.fingerprint, meta,
            row_ids={n: np.arange(len(s), dtype=np.int64) for n, s in source.splits.items()},
            columns={n: {c: s.column(c) for c in s.columns} for n, s in source.splits.items()},
        )
    return writer


def _todo(writer: RunWriter) -> tuple[list[tuple[str, int]], int]:
    """The windows not yet committed, in split and row order, and how many are."""
    lay = writer.layout
    todo: list[tuple[str, int]] = []
    resumed = 0
    for split in lay.splits:
        done = committed_windows(writer.run_dir, split)
        resumed += len(done)
        todo += [(split, w) for w in range(lay.n_windows(split)) if w not in done]
    if resumed:
        remaining = sum(lay.window_bounds(s, w)[1] - lay.window_bounds(s, w)[0] for s, w in todo)
        log.info("resuming run %s: %d windows already committed, %d rows to go", writer.run_name, resumed, remaining)
    return todo, resumed


def _result(prep: _Prepared, stats: dict[str, Any], seconds: float, rank: int = 0, world_size: int = 1) -> ExtractResult:
    log.info(
        "run %s: %d rows in %.1f s (%.1f rows/s), %d truncated to %d tokens",
        prep.run, stats["rows"], seconds, stats["rows"] / max(seconds, 1e-9), stats["truncated"], prep.max_length,
    )
    return ExtractResult(
        store=prep.store_path, run=prep.run, rows_total=sum(len(s) for s in prep.source.splits.values()),
        rows_done_now=stats["rows"], windows_resumed=stats["resumed"], tokens=stats["tokens"],
        truncated=stats["truncated"], seconds=seconds, device=str(prep.device),
        compute_dtype=_DTYPE_NAME[prep.compute_dtype], rank=rank, world_size=world_size,
    )


# -- under torchrun ------------------------------------------------------------------------------

def _extract_distributed(config: ExtractConfig, env: DistEnv) -> ExtractResult:
    """One rank of a torchrun job: set up, agree, write this rank's windows, wait for the rest."""
    t0 = time.perf_counter()
    use_cuda = config.device != "cpu" and torch.cuda.is_available()
    lock: Optional[WriterLock] = None
    with DistContext(env, use_cuda) as ctx:
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
                    lock = WriterLock(prep.run_dir, prep.run).acquire()  # held for the whole job
                    writer = _open_or_create(config, prep, root)
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
    return _result(prep, total, time.perf_counter() - t0, env.rank, env.world_size)


def _attach(prep: _Prepared) -> RunWriter:
    """A rank other than 0: open the run that rank 0 has created or opened."""
    where = f"{prep.store_path} (seen from {socket.gethostname()})"
    if not (prep.store_path / "zarr.json").is_file():
        raise StoreError(
            f"store {where} not found although rank 0 created it: put the store on a file system "
            f"that every node shares"
        )
    with quiet_zarr():
        root = open_root(prep.store_path, create=True)  # exists: opens for writing, creates nothing
        writer = RunWriter(root, prep.run_dir, prep.run)
        if not writer.open_existing(prep.fingerprint):
            raise StoreError(
                f"run {prep.run!r} not found in store {where} although rank 0 created it: put the store "
                f"on a file system that every node shares"
            )
    return writer


def _max_length(config: ExtractConfig, loaded: LoadedModel) -> int:
    limit = loaded.info["max_positions"]
    if config.max_length is None:
        return min(limit, 512)
    if config.max_length > limit:
        raise ConfigError(f"--max-length {config.max_length} exceeds the model's limit of {limit}: use at most {limit}")
    return config.max_length


class _Writer(threading.Thread):
    """Writes finished windows to the store so the forward pass never waits for the disk."""

    def __init__(self, writer: RunWriter):
        super().__init__(daemon=True, name="stcstore-writer")
        self.writer = writer
        self.jobs: queue.Queue = queue.Queue()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    self._write(*job)
            except BaseException as exc:  # surfaced in the main thread by check()
                self.error = exc
            finally:
                del job
                self.jobs.task_done()

    def _write(self, split, window, rows, parts, n_tokens, record) -> None:
        lay = self.writer.layout
        for _, _, event in parts:
            if event is not None:
                event.synchronize()  # the pinned copy of this batch has landed
        keys = list(parts[0][1]) if parts else []
        # one array at a time, dropping its batch tensors as they are copied: the window's
        # memory shrinks while it is written instead of briefly doubling
        with quiet_zarr():
            for key in keys:
                first = parts[0][1][key]
                buf = np.empty((first.shape[0], rows, first.shape[2]), dtype=lay.dtype)
                for idx, values, _ in parts:
                    buf[:, idx, :] = values.pop(key).numpy()
                self.writer.write_arrays(split, window, {key: buf})
                del buf
            self.writer.finish_window(split, window, n_tokens, record)

    def submit(self, job) -> None:
        """Hand over a window once the previous one is written: at most two windows in memory."""
        self.jobs.join()
        self.check()
        self.jobs.put(job)

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _to_host(values: dict, store_dtype: str, device: torch.device):
    """Cast to the store dtype on the device, then copy to (pinned) host memory."""
    dt = torch.float16 if store_dtype == "float16" else torch.float32
    out, event = {}, None
    for key, t in values.items():
        t = t.to(dt)
        if device.type == "cuda":
            host = torch.empty(t.shape, dtype=dt, pin_memory=True)
            host.copy_(t, non_blocking=True)
            out[key] = host
        else:
            out[key] = t
    if device.type == "cuda":
        event = torch.cuda.Event()
        event.record()
    return out, event


def _window_amax(values: dict, acc: Optional[dict]) -> dict:
    """Running per-layer max |value| of each (site, pool), kept on the device (no sync per batch)."""
    out = {}
    for key, t in values.items():
        amax = t.detach().abs().amax(dim=(1, 2)).float()
        out[key] = amax if acc is None else torch.maximum(acc[key], amax)
    return out


def _check_range(amax: dict, store_dtype: str, split: str, start: int) -> None:
    """Refuse non-finite activations, and values that float16 would store as inf (once per window)."""
    for (site, pool), a in amax.items():
        a = a.cpu()
        bad = ~torch.isfinite(a)
        if bad.any():
            layer = int(torch.nonzero(bad)[0])
            raise StcstoreError(
                f"the model produced non-finite {site} activations at layer {layer} (split {split!r}, rows from {start}): "
                f"rerun with --dtype float32"
            )
        if store_dtype == "float16" and bool((a > _FP16_MAX).any()):
            layer = int(torch.nonzero(a > _FP16_MAX)[0])
            raise Float16OverflowError(
                f"{site}/{pool} layer {layer} has values up to {float(a[layer]):.3g}, beyond float16 "
                f"(split {split!r}, rows from {start}): rerun with --dtype float32 and a new --run"
            )


def _run_windows(config: ExtractConfig, prep: _Prepared, writer: RunWriter, windows: list[tuple[str, int]],
                 progress: RunProgress, rank: int = 0) -> dict[str, Any]:
    """Run the model over the given windows and write each one (whole chunks), then commit it."""
    lay = writer.layout
    loaded, source, device = prep.loaded, prep.source, prep.device
    stats: dict[str, Any] = {"rows": 0, "tokens": 0, "truncated": 0, "windows": []}
    if not windows:
        return stats
    pad_id = loaded.tokenizer.pad_token_id
    thread = _Writer(writer)
    thread.start()
    t_start = time.perf_counter()
    try:
        with ActivationCapture(loaded, lay.sites, lay.pools) as cap, autocast(device, prep.compute_dtype):
            for split, window in windows:
                start, stop = lay.window_bounds(split, window)
                t_win = time.perf_counter()
                tw = tokenize_window(loaded.tokenizer, source.splits[split].texts(start, stop), prep.max_length, split, start)
                parts, amax = [], None
                for idx, batch in iter_batches(tw, config.batch_size, pad_id, device):
                    values = cap.run(batch)
                    amax = _window_amax(values, amax)
                    host, event = _to_host(values, lay.dtype, device)
                    parts.append((idx, host, event))
                    progress.update(len(idx))
                if amax is not None:
                    _check_range(amax, lay.dtype, split, start)
                tokens = int(tw.n_tokens.sum())
                record = {"rows": stop - start, "tokens": tokens, "truncated": tw.truncated,
                          "seconds": round(time.perf_counter() - t_win, 3), "rank": rank}
                thread.submit((split, window, stop - start, parts, tw.n_tokens, record))
                stats["rows"] += stop - start
                stats["tokens"] += tokens
                stats["truncated"] += tw.truncated
                stats["windows"].append((split, window))
                elapsed = time.perf_counter() - t_start
                progress.set_postfix_str(f"{stats['tokens'] / elapsed:,.0f} tok/s")
    finally:
        thread.jobs.put(None)
        thread.join()
    thread.check()
    return stats
