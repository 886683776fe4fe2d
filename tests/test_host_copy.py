"""The pinned staging pool: bounded, reused, blocking when full; the CPU path of the stager."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from stcstore.extract.host_copy import HostStager, PinnedPool, batch_bytes


def test_pool_reuses_slabs_and_stays_bounded_over_a_long_run():
    """10,000 batches through a pool of 3 slabs: memory stays at 3 slabs, slabs are the same objects."""
    pool = PinnedPool(slab_bytes=1000, budget_bytes=3 * 1024, pin=False)
    assert pool.max_slabs == 3 and pool.slab_bytes == 1024   # rounded up to the 64-byte alignment
    seen: set[int] = set()
    in_flight = []
    for i in range(10_000):
        slab = pool.take(1000)
        seen.add(slab.data_ptr())
        in_flight.append(slab)
        if len(in_flight) == 3:              # the writer gives back the oldest
            pool.give(in_flight.pop(0))
    assert pool.allocated_bytes == 3 * 1024
    assert len(seen) == 3


def test_take_waits_for_a_slab_while_the_pool_is_full():
    pool = PinnedPool(slab_bytes=64, budget_bytes=128, pin=False)
    a = pool.take(64)
    pool.take(64)
    got = []
    t = threading.Thread(target=lambda: got.append(pool.take(64)))
    t.start()
    time.sleep(0.3)
    assert not got and pool.allocated_bytes == 128       # blocked, nothing new allocated
    pool.give(a)
    t.join(timeout=5)
    assert got and got[0] is a


def test_take_raises_the_consumers_error_instead_of_waiting_forever():
    pool = PinnedPool(slab_bytes=64, budget_bytes=128, pin=False)
    pool.take(64), pool.take(64)

    def check():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        pool.take(64, check)
    with pytest.raises(ValueError):
        pool.take(65)                                   # bigger than a slab: a sizing bug, said at once


def test_batch_bytes_fits_every_tensor_aligned():
    shapes = {("hidden", "mean"): (7, 32, 384), ("ffn", "max"): (6, 32, 1536)}
    n = batch_bytes(shapes, 2)
    assert n >= 2 * (7 * 32 * 384 + 6 * 32 * 1536) and n % 64 == 0


def test_cpu_stager_casts_without_pinning_or_events():
    st = HostStager("float16", torch.device("cpu"), slab_bytes=1 << 20)
    x = torch.randn(2, 3, 4)
    staged = st.stage({("hidden", "mean"): x})
    assert st.pool is None and staged.events == [] and staged.slab is None
    assert torch.equal(staged.values[("hidden", "mean")], x.to(torch.float16))
    st.release(staged)
