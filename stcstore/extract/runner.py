"""`extract`: stream pooled activations of every layer into a resumable Zarr run."""

from __future__ import annotations

import logging
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import ExtractConfig
from ..errors import ConfigError, Float16OverflowError, StcstoreError
from ..models import LoadedModel, load_model, resolve_model
from ..store import RunLayout, RunWriter, WriterLock, check_store_path, chunk_rows_for, committed_windows, open_root
from ..store.fingerprint import fingerprint_hash
from ..store.layout import FORMAT_VERSION
from ..store.quiet import quiet_zarr
from ..store.writer import check_fingerprint
from .batching import iter_batches, tokenize_window
from .capture import ActivationCapture
from .device import autocast, resolve_compute_dtype, resolve_device

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


def extract(config: ExtractConfig) -> ExtractResult:
    """Run (or resume) an extraction as configured; return what was done."""
    from ..data import load_source

    config.validate()
    t0 = time.perf_counter()
    store_path = check_store_path(config.store, must_exist=False)
    source = load_source(
        config.data, text_column=config.text_column, columns=config.columns, splits=config.splits,
        limit=config.limit, trust_remote_code=config.trust_remote_code,
    )
    device = resolve_device(config.device)
    compute_dtype = resolve_compute_dtype(config.dtype, device)
    loaded = load_model(
        resolve_model(config.model), device=device, weights_dtype=compute_dtype,
        trust_remote_code=config.trust_remote_code, revision=config.revision,
    )
    max_length = _max_length(config, loaded)
    widths = {"hidden": loaded.info["d"], "ffn": loaded.info["d_ff"]}
    n_layers = {"hidden": loaded.n_layers + 1, "ffn": loaded.n_layers}
    largest = max(len(s) for s in source.splits.values())
    chunk_rows = config.chunk_rows or chunk_rows_for(min(widths[s] for s in config.sites), config.store_dtype, largest)
    fingerprint = build_fingerprint(config, loaded, source, max_length, compute_dtype, chunk_rows)
    run = config.run or default_run_name(config.model, config.data)
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", run) or run.startswith(("_", ".")) or run == "probes":
        raise ConfigError(f"--run {run!r} is not a valid run name: use letters, digits, '.', '_' and '-'")

    # refuse a mismatching run before anything in the store is touched
    if (store_path / "zarr.json").is_file():
        with quiet_zarr():
            existing = open_root(store_path)
            if run in existing:
                check_fingerprint(existing[run], run, fingerprint)
    with quiet_zarr():
        root = open_root(store_path, create=True)
    run_dir = store_path / run
    with WriterLock(run_dir, run):
        writer = RunWriter(root, run_dir, run)
        with quiet_zarr():
            resumed = writer.open_existing(fingerprint)
            if not resumed:
                layout = RunLayout(
                    splits={n: len(s) for n, s in source.splits.items()}, sites=tuple(config.sites),
                    pools=tuple(config.pools), n_layers={s: n_layers[s] for s in config.sites},
                    width={s: widths[s] for s in config.sites}, dtype=config.store_dtype, chunk_rows=chunk_rows,
                )
                meta = {
                    "model": loaded.info,
                    "dataset": {"spec": config.data, "description": source.description,
                                "content_hash": fingerprint["dataset_content_hash"]},
                    "extract": {"max_length": max_length, "dtype": config.dtype,
                                "compute_dtype": _DTYPE_NAME[compute_dtype], "store_dtype": config.store_dtype,
                                "truncation_side": "right", "padding_side": "right",
                                "text_column": config.text_column, "batch_size": config.batch_size},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                writer.create(
                    layout, fingerprint, meta,
                    row_ids={n: np.arange(len(s), dtype=np.int64) for n, s in source.splits.items()},
                    columns={n: {c: s.column(c) for c in s.columns} for n, s in source.splits.items()},
                )
        stats = _run_windows(config, loaded, source, writer, max_length, device, compute_dtype)
    seconds = time.perf_counter() - t0
    log.info(
        "run %s: %d rows in %.1f s (%.1f rows/s), %d truncated to %d tokens",
        run, stats["rows"], seconds, stats["rows"] / max(seconds, 1e-9), stats["truncated"], max_length,
    )
    return ExtractResult(
        store=store_path, run=run, rows_total=sum(len(s) for s in source.splits.values()),
        rows_done_now=stats["rows"], windows_resumed=stats["resumed"], tokens=stats["tokens"],
        truncated=stats["truncated"], seconds=seconds, device=str(device), compute_dtype=_DTYPE_NAME[compute_dtype],
    )


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
        self.jobs: queue.Queue = queue.Queue(maxsize=2)  # bounds memory to ~2 windows in flight
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                self._write(*job)
            except BaseException as exc:  # surfaced in the main thread by check()
                self.error = exc

    def _write(self, split, window, rows, parts, n_tokens, record) -> None:
        lay = self.writer.layout
        pooled: dict[tuple[str, str], np.ndarray] = {}
        for idx, values, event in parts:
            if event is not None:
                event.synchronize()  # the pinned copy of this batch has landed
            for key, t in values.items():
                buf = pooled.get(key)
                if buf is None:
                    buf = pooled[key] = np.empty((t.shape[0], rows, t.shape[2]), dtype=lay.dtype)
                buf[:, idx, :] = t.numpy()
        with quiet_zarr():
            self.writer.write_window(split, window, pooled, n_tokens, record)

    def submit(self, job) -> None:
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


def _check_range(values: dict, store_dtype: str, split: str, start: int) -> None:
    """Refuse non-finite activations, and values that float16 would store as inf."""
    for (site, pool), t in values.items():
        amax = t.abs().amax(dim=(1, 2))
        bad = ~torch.isfinite(amax)
        if bad.any():
            layer = int(torch.nonzero(bad)[0])
            raise StcstoreError(
                f"the model produced non-finite {site} activations at layer {layer} (split {split!r}, rows from {start}): "
                f"rerun with --dtype float32"
            )
        if store_dtype == "float16" and bool((amax > _FP16_MAX).any()):
            layer = int(torch.nonzero(amax > _FP16_MAX)[0])
            raise Float16OverflowError(
                f"{site}/{pool} layer {layer} has values up to {float(amax[layer]):.3g}, beyond float16 "
                f"(split {split!r}, rows from {start}): rerun with --dtype float32 and a new --run"
            )


def _run_windows(config, loaded, source, writer: RunWriter, max_length, device, compute_dtype) -> dict[str, int]:
    from tqdm.auto import tqdm

    lay = writer.layout
    todo = []
    resumed = 0
    for split in lay.splits:
        done = committed_windows(writer.run_dir, split)
        resumed += len(done)
        todo += [(split, w) for w in range(lay.n_windows(split)) if w not in done]
    total_rows = sum(lay.splits.values())
    remaining = sum(lay.window_bounds(s, w)[1] - lay.window_bounds(s, w)[0] for s, w in todo)
    if resumed:
        log.info("resuming run %s: %d windows already committed, %d rows to go", writer.run_name, resumed, remaining)
    stats = {"rows": 0, "tokens": 0, "truncated": 0, "resumed": resumed}
    if not todo:
        return stats
    pad_id = loaded.tokenizer.pad_token_id
    bar = tqdm(total=total_rows, initial=total_rows - remaining, unit="row", disable=not config.progress,
               file=sys.stderr, desc=f"extract {writer.run_name}", dynamic_ncols=True)
    thread = _Writer(writer)
    thread.start()
    t_start = time.perf_counter()
    try:
        with ActivationCapture(loaded, lay.sites, lay.pools) as cap, autocast(device, compute_dtype):
            for split, window in todo:
                start, stop = lay.window_bounds(split, window)
                t_win = time.perf_counter()
                tw = tokenize_window(loaded.tokenizer, source.splits[split].texts(start, stop), max_length, split, start)
                parts = []
                for idx, batch in iter_batches(tw, config.batch_size, pad_id, device):
                    values = cap.run(batch)
                    _check_range(values, lay.dtype, split, start)
                    host, event = _to_host(values, lay.dtype, device)
                    parts.append((idx, host, event))
                    bar.update(len(idx))
                tokens = int(tw.n_tokens.sum())
                record = {"rows": stop - start, "tokens": tokens, "truncated": tw.truncated,
                          "seconds": round(time.perf_counter() - t_win, 3)}
                thread.submit((split, window, stop - start, parts, tw.n_tokens, record))
                stats["rows"] += stop - start
                stats["tokens"] += tokens
                stats["truncated"] += tw.truncated
                elapsed = time.perf_counter() - t_start
                bar.set_postfix_str(f"{stats['tokens'] / elapsed:,.0f} tok/s", refresh=False)
    finally:
        thread.jobs.put(None)
        thread.join()
        bar.close()
    thread.check()
    return stats
