"""Memory budgets of the probe: how many bytes a fit may use on its device, and what a design needs.

The default budget is a fraction of what is free when the fit starts: of the GPU's free memory
(torch.cuda.mem_get_info) on CUDA, of the available RAM (psutil) on the CPU. `--memory-budget`
replaces it with a fixed number of bytes.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import MemoryBudgetError

__all__ = ["DEVICE_FRACTION", "HOST_FRACTION", "resolve_budget", "format_bytes", "is_out_of_memory",
           "concat_bytes", "out_of_memory_as"]

log = logging.getLogger(__name__)

# the CUDA caching allocator and cuBLAS workspaces need headroom beyond our own tensors
DEVICE_FRACTION = 0.8
# the host also holds the search's layer blocks and kept columns next to the solver's state
HOST_FRACTION = 0.5


def resolve_budget(device: str, budget: Optional[int] = None) -> int:
    """Bytes a fit on `device` ('cpu', 'cuda', 'cuda:1') may allocate: `budget`, else the default share."""
    if budget is not None:
        return int(budget)
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(DEVICE_FRACTION * free)
    import psutil

    return int(HOST_FRACTION * psutil.virtual_memory().available)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is a host or CUDA out-of-memory error."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def concat_bytes(n_rows: int, n_train: int, n_cols: int, backend: str) -> int:
    """Bytes of memory the all-layers-concat baseline holds.

    scikit-learn (and cuML's conversion) works on float32 rows of every split plus a float64
    copy of the train rows; the torch solver reads raw columns, standardised as it goes, which
    stay in memory up to the probe's in-memory allowance and go to scratch files beyond it.
    """
    rows = n_rows * n_cols * 4
    if backend in ("sklearn", "cuml"):
        return rows + n_train * n_cols * 8
    from .spill import IN_MEMORY_BYTES

    return min(rows, IN_MEMORY_BYTES)


@contextmanager
def out_of_memory_as(message: str) -> Iterator[None]:
    """Turn a host or CUDA out-of-memory error inside the block into MemoryBudgetError(message)."""
    try:
        yield
    except MemoryBudgetError:
        raise
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        log.debug("out of memory: %s", exc)
        raise MemoryBudgetError(message) from None
