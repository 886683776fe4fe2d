"""The writer thread of `extract` and the per-window range check of what it stores.

The forward hands over each batch as soon as its device-to-host copy is queued; this thread
waits for the copy, places the rows into the window's buffer (un-sorting them), gives the pinned
slab back, and when the window is finished writes its arrays and commits it, so the forward
never waits for the disk. At most one window is assembled or being written here while the
forward fills the next; on CUDA the next one waits in the bounded pinned pool.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Optional

import numpy as np
import torch

from ..errors import Float16OverflowError, StcstoreError
from ..store import RunWriter
from ..store.quiet import quiet_zarr
from .host_copy import HostStager, StagedBatch

__all__ = ["WindowWriter", "window_amax", "check_range", "FP16_MAX", "FP16_OVERFLOW_AT"]

FP16_MAX = 65504.0
# float16 rounds to nearest: finite float32 values below 65520 store as 65504, from 65520 on as inf
FP16_OVERFLOW_AT = 65520.0


class WindowWriter(threading.Thread):
    """Assembles each window from staged batches and writes it to the store."""

    def __init__(self, writer: RunWriter, stager: HostStager):
        super().__init__(daemon=True, name="stcstore-writer")
        self.writer = writer
        self.stager = stager
        self.jobs: queue.Queue = queue.Queue()
        self.error: Optional[BaseException] = None
        self._bufs: dict[Any, np.ndarray] = {}
        self._window: Optional[tuple[str, int]] = None

    # -- the forward's side ----------------------------------------------------------------
    def add_batch(self, split: str, window: int, rows: int, idx: np.ndarray, staged: StagedBatch) -> None:
        """Queue one batch: its rows go to positions idx of the window (rows in all)."""
        self.check()
        self.jobs.put(("batch", split, window, rows, idx, staged))

    def finish(self, split: str, window: int, rows: int, n_tokens: np.ndarray, record: dict) -> None:
        """Queue the commit of a window once the previous one is written: at most two windows in memory."""
        self.jobs.join()
        self.check()
        self.jobs.put(("finish", split, window, rows, n_tokens, record))

    def close(self) -> None:
        """Stop after the queued jobs and wait for the thread."""
        self.jobs.put(None)
        self.join()

    def check(self) -> None:
        """Raise the writer's error in the calling thread, if it had one."""
        if self.error is not None:
            raise self.error

    # -- this thread ----------------------------------------------------------------------
    def run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if job[0] == "batch" and self.error is not None:
                    self.stager.release(job[5])  # keep the forward's pool moving until it sees the error
                elif self.error is None:
                    (self._place if job[0] == "batch" else self._commit)(*job[1:])
            except BaseException as exc:  # surfaced in the forward's thread by check()
                self.error = exc
            finally:
                del job
                self.jobs.task_done()

    def _place(self, split: str, window: int, rows: int, idx: np.ndarray, staged: StagedBatch) -> None:
        try:
            staged.wait()  # the device-to-host copy of this batch has landed
            if self._window != (split, window):
                dt = self.writer.layout.dtype
                self._bufs = {k: np.empty((t.shape[0], rows, t.shape[2]), dtype=dt) for k, t in staged.values.items()}
                self._window = (split, window)
            for key, t in staged.values.items():
                self._bufs[key][:, idx, :] = t.numpy()
        finally:
            self.stager.release(staged)

    def _commit(self, split: str, window: int, rows: int, n_tokens: np.ndarray, record: dict) -> None:
        if self._window != (split, window):
            raise RuntimeError(f"window {window} of split {split!r} was finished before any of its batches arrived")
        bufs, self._bufs, self._window = self._bufs, {}, None
        # one array at a time, each freed once written: the window's memory shrinks as it goes
        with quiet_zarr():
            for key in list(bufs):
                self.writer.write_arrays(split, window, {key: bufs.pop(key)})
            self.writer.finish_window(split, window, n_tokens, record)


def window_amax(values: dict, acc: Optional[dict]) -> dict:
    """Running per-layer max |value| of each (site, pool), kept on the device (no sync per batch)."""
    out = {}
    for key, t in values.items():
        amax = t.detach().abs().amax(dim=(1, 2)).float()
        out[key] = amax if acc is None else torch.maximum(acc[key], amax)
    return out


def check_range(amax: dict, store_dtype: str, compute_dtype: torch.dtype, split: str, start: int) -> None:
    """Refuse non-finite pooled values, and values that the float16 store would hold as inf (once per window).

    Pooling accumulates in float32, so a non-finite pooled value means the forward itself
    produced inf/nan; a finite one that float16 cannot hold is a storage limit, not the model's fault.
    """
    for (site, pool), a in amax.items():
        a = a.cpu()
        bad = ~torch.isfinite(a)
        if bad.any():
            layer = int(torch.nonzero(bad)[0])
            where = f"{site} activations at layer {layer} (split {split!r}, rows from {start})"
            if compute_dtype != torch.float32:
                name = str(compute_dtype).replace("torch.", "")
                raise StcstoreError(
                    f"the forward in {name} overflowed to non-finite {where}: rerun with --dtype float32 and a new --run"
                )
            raise StcstoreError(
                f"the model produced non-finite {where} in float32: check the model's weights (they hold inf or nan "
                f"or overflow on this input)"
            )
        over = a >= FP16_OVERFLOW_AT
        if store_dtype == "float16" and bool(over.any()):
            layer = int(torch.nonzero(over)[0])
            raise Float16OverflowError(
                f"{site}/{pool} layer {layer} has pooled values up to {float(a[layer]):.6g}, beyond what the float16 "
                f"store holds (max {FP16_MAX:.0f}) (split {split!r}, rows from {start}): store float32 with "
                f"--dtype float32 and a new --run"
            )
