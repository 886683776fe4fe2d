"""Copying pooled batches from the device to the host through a bounded, reused pinned pool.

On CUDA a batch's pooled tensors are cast to the store dtype on the device and copied with
`non_blocking=True` into a *slab* of pinned host memory; an event recorded on the copying
device's stream (not the current device's: under a device_map they differ) says when the copy
has landed. The writer thread waits on that event, copies the batch into its window's buffer
and gives the slab back. Slabs are allocated once (a handful, each the size of one batch) and
reused, so pinned memory is independent of the window size and of the run's length; when every
slab is in flight the forward waits for the writer (back-pressure instead of growth).
On the CPU the tensors are only cast: no pinning, no events.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["PinnedPool", "StagedBatch", "HostStager", "batch_bytes"]

_ALIGN = 64                # byte alignment of each tensor inside a slab
DEFAULT_BUDGET = 256 << 20  # pinned bytes the pool may hold (at least MIN_SLABS slabs)
MIN_SLABS, MAX_SLABS = 2, 8


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def batch_bytes(shapes: dict, itemsize: int) -> int:
    """Slab bytes one batch of pooled tensors needs: {key: shape} in the store dtype, each aligned."""
    total = 0
    for shape in shapes.values():
        n = itemsize
        for s in shape:
            n *= int(s)
        total += _aligned(n)
    return total


class PinnedPool:
    """A bounded set of reusable pinned host slabs; `take` blocks while all of them are in use."""

    def __init__(self, slab_bytes: int, budget_bytes: int = DEFAULT_BUDGET, pin: bool = True):
        self.pin = pin  # False only where no accelerator exists (the pool's own tests)
        self.slab_bytes = _aligned(max(int(slab_bytes), _ALIGN))
        self.max_slabs = max(MIN_SLABS, min(MAX_SLABS, budget_bytes // self.slab_bytes))
        self._free: list[torch.Tensor] = []
        self._allocated = 0
        self._cond = threading.Condition()

    @property
    def allocated_bytes(self) -> int:
        """Pinned bytes this pool holds (in use or free)."""
        return self._allocated * self.slab_bytes

    def take(self, nbytes: int, check: Optional[Callable[[], None]] = None) -> torch.Tensor:
        """A free slab (uint8, pinned) of at least nbytes; waits for one while the pool is full.

        `check` runs while waiting (the writer thread's error check), so a dead consumer raises
        here instead of leaving the forward blocked forever.
        """
        if nbytes > self.slab_bytes:
            raise ValueError(f"a batch needs {nbytes} bytes but slabs hold {self.slab_bytes}")
        with self._cond:
            while True:
                if self._free:
                    return self._free.pop()
                if self._allocated < self.max_slabs:
                    self._allocated += 1
                    break
                self._cond.wait(timeout=0.5)
                if check is not None:
                    check()
        # allocate outside the lock: pinning can take milliseconds
        return torch.empty(self.slab_bytes, dtype=torch.uint8, pin_memory=self.pin)

    def give(self, slab: torch.Tensor) -> None:
        """Return a slab once nobody reads it any more."""
        with self._cond:
            self._free.append(slab)
            self._cond.notify()


@dataclass
class StagedBatch:
    """A batch's pooled tensors on the host (or on their way there), in the store dtype."""

    values: dict                              # {key: host tensor}
    events: list                              # CUDA events to wait for before reading values
    slab: Optional[torch.Tensor] = None       # the pinned slab holding values (given back after use)

    def wait(self) -> None:
        """Block until the device-to-host copies have landed."""
        for event in self.events:
            event.synchronize()


class HostStager:
    """Casts pooled tensors to the store dtype on their device and copies them to host memory."""

    def __init__(self, store_dtype: str, device: torch.device, slab_bytes: int = 0,
                 budget_bytes: int = DEFAULT_BUDGET):
        self.dtype = torch.float16 if store_dtype == "float16" else torch.float32
        self.cuda = device.type == "cuda"
        self.pool = PinnedPool(slab_bytes, budget_bytes) if self.cuda else None

    def stage(self, values: dict, check: Optional[Callable[[], None]] = None) -> StagedBatch:
        """Start copying {key: device tensor} to the host; returns at once on CUDA (copies in flight)."""
        cast = {k: t.to(self.dtype) for k, t in values.items()}
        if not self.cuda:
            return StagedBatch(values=cast, events=[])
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        need = batch_bytes({k: t.shape for k, t in cast.items()}, itemsize)
        slab = self.pool.take(need, check)
        out, devices, off = {}, [], 0
        for key, t in cast.items():
            n = t.numel() * itemsize
            host = slab[off:off + n].view(self.dtype).view(t.shape)
            off += _aligned(n)
            host.copy_(t, non_blocking=True)
            out[key] = host
            if t.device not in devices:
                devices.append(t.device)
        events = []
        for dev in devices:
            # the copy was queued on the current stream of the tensor's device: wait on that one
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(dev))
            events.append(event)
        return StagedBatch(values=out, events=events, slab=slab)

    def release(self, staged: StagedBatch) -> None:
        """Give a staged batch's slab back to the pool (after its values were copied out)."""
        if staged.slab is not None and self.pool is not None:
            staged.values = {}
            self.pool.give(staged.slab)
            staged.slab = None
