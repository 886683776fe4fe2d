"""`extract`: stream pooled activations of every layer into a resumable Zarr run."""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import ExtractConfig
from ..errors import ConfigError, MissingDependencyError
from ..models import LoadedModel, load_model, resolve_model
from ..store import RunLayout, RunWriter, WriterLock, check_store_path, chunk_rows_for, committed_windows, open_root
from ..store.layout import FORMAT_VERSION, LOCK_FILE
from ..store.location import Location, open_location
from ..store.lock import break_lock
from ..store.quiet import quiet_zarr
from ..store.writer import check_fingerprint
from .batching import iter_batches, tokenize_window
from .capture import ActivationCapture
from .device import autocast, dtype_name, resolve_compute_dtype, resolve_device
from .distributed import DistEnv, RunProgress, detect, device_map_memory, rank_device
from .host_copy import HostStager, batch_bytes
from .writer_thread import WindowWriter, check_range, window_amax

__all__ = ["ExtractResult", "extract", "default_run_name", "build_fingerprint"]

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    """What one call of `extract` did."""

    store: "Path | str"         # the store's folder, or its URL on object storage
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

    # seconds of the rows' work (model and writes, from the progress bar's start to the last
    # commit): rows/s and tokens/s divide by this, as the bar does; `seconds` also counts loading
    work_seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        """Rows run now per second of work (the progress bar's average rate)."""
        s = self.work_seconds or self.seconds
        return self.rows_done_now / s if s else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Tokens run now per second of work."""
        s = self.work_seconds or self.seconds
        return self.tokens / s if s else 0.0


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
        "compute_dtype": dtype_name(compute_dtype),
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
    store_path: Location          # the store: a local folder or an object-storage URL

    @property
    def run_dir(self) -> Location:
        return self.store_path / self.run


def extract(config: ExtractConfig) -> ExtractResult:
    """Run (or resume) an extraction as configured; return what was done.

    Under torchrun (WORLD_SIZE > 1, read now, not at import) every rank calls this with the
    same config and writes its own share of the windows into the one shared store; see
    `stcstore.extract.distributed`.
    """
    env = detect()
    if env is not None:
        from .dist_runner import extract_distributed

        return extract_distributed(config, env)
    t0 = time.perf_counter()
    prep = _prepare(config, None)
    _refuse_mismatch(prep)
    with quiet_zarr():
        root = open_root(prep.store_path, create=True)
    _break_lock(config, prep)
    with WriterLock(prep.run_dir, prep.run) as lock:
        writer = _open_or_create(config, prep, root)
        writer.lock = lock
        todo, resumed = _todo(writer)
        progress = RunProgress(writer.layout, writer.run_dir, writer.run_name, todo, todo, config.progress)
        try:
            stats = _run_windows(config, prep, writer, todo, progress, rank=0)
        finally:
            progress.close()
    stats["resumed"] = resumed
    return _result(prep, stats, time.perf_counter() - t0, work_seconds=progress.seconds)


def _prepare(config: ExtractConfig, env: Optional[DistEnv], check_store: bool = True) -> _Prepared:
    """Validate, load the source and the model, and build the fingerprint (no store writes)."""
    from ..data import load_source

    config.validate()
    # under torchrun only rank 0 checks the store here: the others look after it is created
    store_path = check_store_path(config.store, must_exist=False, storage_options=config.storage_options) \
        if check_store else open_location(config.store, config.storage_options)
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


def _break_lock(config: ExtractConfig, prep: _Prepared) -> None:
    """--break-lock: remove the run's lock if its writer died, saying what was removed."""
    if config.break_lock:
        log.warning("%s", break_lock(prep.run_dir / LOCK_FILE, f"run {prep.run!r}"))


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
            codec=config.codec,
        )
        meta = {
            "model": prep.loaded.info,
            "dataset": {"spec": config.data, "description": source.description,
                        "content_hash": prep.fingerprint["dataset_content_hash"]},
            "extract": {"max_length": prep.max_length, "dtype": config.dtype,
                        "compute_dtype": dtype_name(prep.compute_dtype), "store_dtype": config.store_dtype,
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


def _result(prep: _Prepared, stats: dict[str, Any], seconds: float, rank: int = 0, world_size: int = 1,
            work_seconds: float = 0.0) -> ExtractResult:
    log.info(
        "run %s: %d rows in %.1f s (%.1f s with loading; %.1f rows/s), %d truncated to %d tokens",
        prep.run, stats["rows"], work_seconds, seconds, stats["rows"] / max(work_seconds or seconds, 1e-9),
        stats["truncated"], prep.max_length,
    )
    loc = prep.store_path
    return ExtractResult(
        store=loc.local_path if loc.is_local else loc.url, run=prep.run, rows_total=sum(len(s) for s in prep.source.splits.values()),
        rows_done_now=stats["rows"], windows_resumed=stats["resumed"], tokens=stats["tokens"],
        truncated=stats["truncated"], seconds=seconds, device=str(prep.device),
        compute_dtype=dtype_name(prep.compute_dtype), rank=rank, world_size=world_size, work_seconds=work_seconds,
    )


def _max_length(config: ExtractConfig, loaded: LoadedModel) -> int:
    limit = loaded.info["max_positions"]
    if config.max_length is None:
        return min(limit, 512)
    if config.max_length > limit:
        raise ConfigError(f"--max-length {config.max_length} exceeds the model's limit of {limit}: use at most {limit}")
    return config.max_length


def _run_windows(config: ExtractConfig, prep: _Prepared, writer: RunWriter, windows: list[tuple[str, int]],
                 progress: RunProgress, rank: int = 0) -> dict[str, Any]:
    """Run the model over the given windows and write each one (whole chunks), then commit it."""
    lay = writer.layout
    loaded, source, device = prep.loaded, prep.source, prep.device
    stats: dict[str, Any] = {"rows": 0, "tokens": 0, "truncated": 0, "windows": []}
    if not windows:
        return stats
    pad_id = loaded.tokenizer.pad_token_id
    # one pinned slab holds a full batch of every (site, pool) in the store dtype
    slab = batch_bytes({(s, p): (lay.n_layers[s], config.batch_size, lay.width[s]) for s in lay.sites for p in lay.pools},
                       np.dtype(lay.dtype).itemsize)
    stager = HostStager(lay.dtype, device, slab)
    thread = WindowWriter(writer, stager)
    thread.start()
    try:
        with ActivationCapture(loaded, lay.sites, lay.pools) as cap, autocast(device, prep.compute_dtype):
            for split, window in windows:
                start, stop = lay.window_bounds(split, window)
                t_win = time.perf_counter()
                tw = tokenize_window(loaded.tokenizer, source.splits[split].texts(start, stop), prep.max_length, split, start)
                amax = None
                for idx, batch in iter_batches(tw, config.batch_size, pad_id, device):
                    values = cap.run(batch)
                    amax = window_amax(values, amax)
                    thread.add_batch(split, window, stop - start, idx, stager.stage(values, thread.check))
                    progress.update(len(idx))
                if amax is not None:
                    check_range(amax, lay.dtype, prep.compute_dtype, split, start)
                tokens = int(tw.n_tokens.sum())
                record = {"rows": stop - start, "tokens": tokens, "truncated": tw.truncated,
                          "seconds": round(time.perf_counter() - t_win, 3), "rank": rank}
                thread.finish(split, window, stop - start, tw.n_tokens, record)
                stats["rows"] += stop - start
                stats["tokens"] += tokens
                stats["truncated"] += tw.truncated
                stats["windows"].append((split, window))
                progress.set_postfix_str(f"{stats['tokens'] / max(progress.seconds, 1e-9):,.0f} tok/s")
    finally:
        thread.close()
    thread.check()
    return stats
