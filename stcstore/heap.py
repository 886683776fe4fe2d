"""glibc heap tuning for a probe process: freed blocks go back to the OS, while solver temporaries are reused."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

__all__ = ["return_freed_blocks_to_os", "reuse_heap_while_solving"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# one heap for every thread: with a Newton step's models on two threads (torch_threads) each
# thread kept its freed temporaries in a heap of its own that the other could not reuse (peak
# RSS of memory_scaling's 10N probe 1,135 MiB; 1,015 with one heap, in the same time)
_ARENAS = 1
# reading blocks: buffers from 256 KiB on are mapped, and unmapped when freed
_READ_MMAP = 256 << 10
_READ_TRIM = 128 << 10          # glibc's default
# solving: glibc's largest mmap threshold, and a heap top kept up to 256 MiB
_SOLVE_MMAP = 32 << 20
_SOLVE_TRIM = 256 << 20

_libc: Optional[Any] = None     # set once return_freed_blocks_to_os has pinned the thresholds


def return_freed_blocks_to_os() -> None:
    """Pin glibc's mmap threshold so freed slabs and blocks go back to the OS at once.

    glibc raises its threshold each time a large mmapped buffer is freed, after which equal
    buffers (read slabs, float64 statistics temporaries) come from the heap and stay resident,
    fragmented, between layers: peak RSS then grew by about twice a block's size from N to 4N
    rows. A fixed threshold keeps the peak at one block plus the solver. Threads share one
    heap (_ARENAS) unless MALLOC_ARENA_MAX is set. Process-wide, so the library never calls it:
    the `probe` command does (cli.common.command_process_settings), before NumPy's BLAS starts
    threads; a program that calls run_probe may too. A no-op off glibc.
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(_READ_MMAP))
        if "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(_ARENAS))
        libc.malloc_trim  # noqa: B018  (present on glibc: checked before it is relied on)
        _libc = libc
    except (OSError, AttributeError):  # musl or another libc: keep its defaults
        log.debug("mallopt unavailable; heap retention not tuned")


@contextmanager
def reuse_heap_while_solving() -> Iterator[None]:
    """Inside: solver temporaries come from the heap and are reused; after: the heap is trimmed.

    With the 256 KiB threshold of block reading, every temporary of a Newton step (gathered
    columns, their weighted copies, Hessian copies) was a fresh mapping whose pages the kernel
    zeroed on first touch: the eta = 1 MiniLM ffn design took 46 s instead of 35 s. The
    temporaries do not grow with the row count beyond the solver's own memory budget, and
    malloc_trim hands the freed heap back before the next block is read. Does nothing unless
    return_freed_blocks_to_os pinned the thresholds.
    """
    libc = _libc
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _SOLVE_MMAP)
    libc.mallopt(_M_TRIM_THRESHOLD, _SOLVE_TRIM)
    try:
        yield
    finally:
        libc.mallopt(_M_TRIM_THRESHOLD, _READ_TRIM)
        libc.mallopt(_M_MMAP_THRESHOLD, _READ_MMAP)
        libc.malloc_trim(0)
