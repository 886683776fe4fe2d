"""The problems of a Newton step on several CPU threads at once, each thread's torch ops on one core.

With two or more intra-op threads, a Newton step's large quadratic models (Hessian products,
inner iterations and Cholesky solves on working sets of thousands of columns) leave cores idle
between and inside their ops; work split by model, each thread single-threaded, keeps them all
busy: the Hessians in a pass over X per thread, each for its share of the models
(torch_hessian.build_hessians), then one model's inner solve per thread. On the eta = 1 ffn
design of MiniLM x Rotten Tomatoes (7,685 x 4,892, six masks, five C) streamed from float16
blocks as the search holds it, on two cores: 24.2 to 24.8 s (39 to 40 s on one thread).
Small models are bound by Python and the GIL, and stay on the calling thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional, Sequence, TypeVar

import torch

__all__ = ["ProblemThreads", "THREAD_MIN_WS"]

# a step's models go to threads when at least two of them have working sets this large
THREAD_MIN_WS = 512

T = TypeVar("T")
R = TypeVar("R")


class ProblemThreads:
    """A pool of as many threads as torch has intra-op threads (made on first use), each running its
    torch ops single-threaded; `close` ends it. The process-wide thread setting is left as it was."""

    def __init__(self, n_threads: Optional[int] = None) -> None:
        self.n_threads = torch.get_num_threads() if n_threads is None else int(n_threads)
        self._pool: Optional[ThreadPoolExecutor] = None

    def worth(self, sizes: Sequence[int]) -> bool:
        """Whether models of these working-set sizes are worth spreading over the threads."""
        return self.n_threads > 1 and sum(k >= THREAD_MIN_WS for k in sizes) >= 2

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """fn over items on the pool's threads (results in the order of items)."""
        if self._pool is None:
            self._pool = _single_threaded_pool(self.n_threads)
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        """End the pool's threads (a later `map` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "ProblemThreads":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _single_threaded_pool(n: int) -> ThreadPoolExecutor:
    """n threads whose torch ops use one intra-op thread each; the caller's setting is restored.

    torch.set_num_threads sets the calling thread's OpenMP (and MKL) thread count and a
    process-wide default that threads read on their first parallel op: each pool thread reads
    it first, then sets its own to 1, and the barrier holds them until all n have, so the
    default can be put back right after.
    """
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(n, thread_name_prefix="stcstore-newton")
    ready = threading.Barrier(n)

    def one_thread() -> None:
        torch.get_num_threads()      # this thread's lazy set-up, before the setting below
        torch.set_num_threads(1)
        ready.wait(timeout=60)

    try:
        for f in [pool.submit(one_thread) for _ in range(n)]:
            f.result()
    except BaseException:
        pool.shutdown(wait=False)
        raise
    finally:
        torch.set_num_threads(before)
    return pool
