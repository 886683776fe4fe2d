"""glibc heap tuning: solver temporaries reuse the heap inside reuse_heap_while_solving, not outside."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_FAULTS = """
import resource, numpy as np
from stcstore.heap import return_freed_blocks_to_os, reuse_heap_while_solving

def faults(n=40, nbytes=4 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = np.empty(nbytes, np.uint8)
        a.fill(1)          # touch every page
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

return_freed_blocks_to_os()
pinned = faults()
with reuse_heap_while_solving():
    faults(1)              # the first buffer's pages fault once
    inside = faults()
after = faults()
print(pinned, inside, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_solving_reuses_freed_buffers_and_reading_returns_them() -> None:
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pinned, inside, after = map(int, out.stdout.split())
    # 40 buffers of 4 MiB: mapped afresh (pages faulted in again) each time while pinned, from the
    # heap inside (the kernel may fault several pages at once: count against the pinned figure)
    assert pinned > 40 * 100
    assert inside < pinned / 10
    assert after > pinned / 2


# three threads allocate 16 KB buffers (malloc'd from the thread's heap), then glibc reports its heaps
_THREADS_THEN_HEAP_REPORT = """
def work():
    keep = [np.ones(2000) for _ in range(50)]
go = [threading.Thread(target=work) for _ in range(3)]
for t in go: t.start()
for t in go: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fdopen.restype = ctypes.c_void_p
out = libc.fdopen(1, b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fflush(ctypes.c_void_p(out))
"""

_HEAPS = """
import ctypes, sys, threading
import numpy as np
if sys.argv[1] == "tuned":
    from stcstore.heap import return_freed_blocks_to_os
    return_freed_blocks_to_os()
""" + _THREADS_THEN_HEAP_REPORT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_threads_share_one_heap_once_tuned() -> None:
    """Solver threads (torch_threads) free temporaries the others can then reuse: one glibc arena."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    heaps = {}
    for case in ("plain", "tuned"):
        out = subprocess.run([sys.executable, "-c", _HEAPS, case], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        heaps[case] = out.stdout.count("<heap nr=")
    assert heaps["plain"] > 1          # glibc's default: a heap per thread that allocates
    assert heaps["tuned"] == 1


# probes a store (through the library or the command line), then the threads and the heap report
_HEAPS_AFTER_PROBE = """
import ctypes, sys, threading
import numpy as np
store, how = sys.argv[1], sys.argv[2]
args = ["--label", "sentiment", "--split-column", "fold", "--c-grid", "0.1", "--eta-grid", "1",
        "--no-progress", "--no-plots", "--no-concat-baseline", "--backend", "sklearn"]
if how == "library":
    from stcstore.config import ProbeConfig
    from stcstore.probe import run_probe
    run_probe(ProbeConfig(store=store, name="lib", label="sentiment", split_column="fold", c_grid=(0.1,),
                          eta_grid=(1.0,), progress=False, plots=False, backend="sklearn"), concat_baseline=False)
else:
    from stcstore.cli import app
    try:
        app(["probe", "--store", store, "--name", "cli", *args])
    except SystemExit as exc:
        assert not exc.code, exc.code
""" + _THREADS_THEN_HEAP_REPORT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_the_probe_command_tunes_the_heap_and_the_library_leaves_it_alone(tmp_path) -> None:
    """The allocator is a process setting: `stcstore probe` makes it, a program calling run_probe keeps its own."""
    from test_probe import build_store

    store = build_store(tmp_path / "s.zarr", {"train": 300}, sites=("hidden",), pools=("mean",))
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    heaps = {}
    for how in ("library", "cli"):
        out = subprocess.run([sys.executable, "-c", _HEAPS_AFTER_PROBE, str(store), how], capture_output=True,
                             text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        heaps[how] = out.stdout.count("<heap nr=")
    assert heaps["library"] > 1        # glibc's default, as the calling program had it
    assert heaps["cli"] == 1
