"""The writer's direct chunk path (store/codecs.py): the same bytes as zarr's own write, in parallel."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from stcstore.store import RunLayout, RunWriter, open_root, open_run
from stcstore.store.codecs import DirectChunkWriter


def _layout(codec: str) -> RunLayout:
    # 50 and 7 rows in windows of 16: both splits end in a partial chunk (padded with the fill value)
    return RunLayout(splits={"train": 50, "test": 7}, sites=("hidden", "ffn"), pools=("mean", "max"),
                     n_layers={"hidden": 3, "ffn": 2}, width={"hidden": 8, "ffn": 16}, dtype="float16",
                     chunk_rows=16, codec=codec)


def _write(store: Path, codec: str, zarr_setitem: bool) -> dict:
    """Write every window of a small run, through write_window or zarr's setitem; return the values."""
    lay = _layout(codec)
    rng = np.random.default_rng(0)
    w = RunWriter(open_root(store, create=True), store / "r", "r")
    w.create(lay, {"seed": 0}, {}, row_ids={s: np.arange(n) for s, n in lay.splits.items()}, columns={})
    written: dict = {}
    for split in lay.splits:
        for win in range(lay.n_windows(split)):
            a, b = lay.window_bounds(split, win)
            pooled = {(s, p): rng.standard_normal((lay.n_layers[s], b - a, lay.width[s])).astype(np.float16)
                      for s in lay.sites for p in lay.pools}
            if zarr_setitem:  # the way the writer wrote before the direct path: zarr's own pipeline
                for (s, p), v in pooled.items():
                    w._arrays[(split, s, p)][:, a:b, :] = v
                w.finish_window(split, win, np.full(b - a, 3, np.int32), {})
            else:
                w.write_window(split, win, pooled, np.full(b - a, 3, np.int32), {})
            for key, v in pooled.items():
                written.setdefault((split, *key), []).append(v)
    return {k: np.concatenate(v, axis=1) for k, v in written.items()}


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_direct_chunks_are_bitwise_zarrs_chunks(tmp_path, codec):
    """Every stored chunk file of a run written the direct way equals zarr's own, byte for byte."""
    values = _write(tmp_path / "new.zarr", codec, zarr_setitem=False)
    _write(tmp_path / "old.zarr", codec, zarr_setitem=True)
    new = {p.relative_to(tmp_path / "new.zarr") for p in (tmp_path / "new.zarr").rglob("*") if p.is_file()}
    old = {p.relative_to(tmp_path / "old.zarr") for p in (tmp_path / "old.zarr").rglob("*") if p.is_file()}
    chunks = sorted(p for p in new if "c" in p.parts)
    # train: 4 windows, test: 1; 10 activation arrays each, plus row ids and token counts
    assert len(chunks) == 4 * 10 + 1 * 10 + 2 * (4 + 1)
    assert new == old
    for rel in chunks:
        assert (tmp_path / "new.zarr" / rel).read_bytes() == (tmp_path / "old.zarr" / rel).read_bytes(), rel
    # and zarr reads back what was written (the padding of a partial chunk is not a row)
    r = open_run(tmp_path / "new.zarr", "r")
    for (split, site, pool), v in values.items():
        np.testing.assert_array_equal(r.read(split, site, pool), v)


def test_chunk_tasks_run_on_several_threads(tmp_path):
    """A window's chunks are encoded and stored by the pool's threads, not the caller's."""
    lay = _layout("lz4")
    w = RunWriter(open_root(tmp_path / "s.zarr", create=True), tmp_path / "s.zarr" / "r", "r")
    w.create(lay, {}, {}, row_ids={s: np.arange(n) for s, n in lay.splits.items()}, columns={})
    seen: set = set()
    write = DirectChunkWriter.write

    def spy(self, coords, values):
        seen.add(threading.current_thread().name)
        return write(self, coords, values)

    pooled = {(s, p): np.ones((lay.n_layers[s], 16, lay.width[s]), np.float16) for s in lay.sites for p in lay.pools}
    try:
        DirectChunkWriter.write = spy
        w.write_arrays("train", 0, pooled)
    finally:
        DirectChunkWriter.write = write
    assert seen and all(name.startswith("stcstore-chunk") for name in seen)
    np.testing.assert_array_equal(open_run(tmp_path / "s.zarr", "r").read("train", "ffn", "max")[:, :16], 1.0)


def test_wrong_shape_is_refused(tmp_path):
    """A window of the wrong width is refused before anything is stored (zarr would cut it silently)."""
    lay = _layout("lz4")
    w = RunWriter(open_root(tmp_path / "s.zarr", create=True), tmp_path / "s.zarr" / "r", "r")
    w.create(lay, {}, {}, row_ids={s: np.arange(n) for s, n in lay.splits.items()}, columns={})
    good = np.ones((3, 16, 8), np.float16)
    with pytest.raises(ValueError, match=r"hidden/max window 0 has shape \(3, 16, 9\), not \(3, 16, 8\)"):
        w.write_arrays("train", 0, {("hidden", "mean"): good, ("hidden", "max"): np.ones((3, 16, 9), np.float16)})
    assert not list((tmp_path / "s.zarr" / "r" / "train" / "hidden" / "mean").rglob("c/*"))


def test_store_without_sync_writes_goes_through_zarr(tmp_path):
    """A store that cannot write synchronously (object storage, wrappers) keeps zarr's path: same bytes."""
    from zarr.storage import LocalStore, WrapperStore

    lay = _layout("lz4")
    pooled = {(s, p): np.full((lay.n_layers[s], 16, lay.width[s]), 0.5, np.float16) for s in lay.sites for p in lay.pools}
    files = []
    for name, store in (("local", None), ("wrapped", WrapperStore(LocalStore(tmp_path / "wrapped.zarr")))):
        path = tmp_path / f"{name}.zarr"
        root = open_root(path, create=True) if store is None else zarr.open_group(store=store, mode="a")
        w = RunWriter(root, path / "r", "r")
        w.create(lay, {}, {}, row_ids={s: np.arange(n) for s, n in lay.splits.items()}, columns={})
        w.write_arrays("train", 0, pooled)
        assert DirectChunkWriter(w._arrays[("train", "hidden", "mean")]).ok == (store is None)
        files.append({p.relative_to(path): p.read_bytes() for p in (path / "r" / "train").rglob("c/*/*/*")})
    assert len(files[0]) == 3 * 2 + 2 * 2 and files[0] == files[1]


def _write_in_child(store: str, queue) -> None:
    lay = _layout("lz4")
    w = RunWriter(open_root(Path(store), create=True), Path(store) / "r", "r")
    w.create(lay, {}, {}, row_ids={s: np.arange(n) for s, n in lay.splits.items()}, columns={})
    w.write_arrays("train", 0, {("hidden", "mean"): np.full((3, 16, 8), 2.0, np.float16)})
    queue.put(float(open_run(Path(store), "r").read("train", "hidden", "mean")[:, :16].mean()))


def test_a_forked_child_gets_its_own_chunk_threads(tmp_path):
    """The pool's threads do not survive a fork: a child that writes starts its own (no hang)."""
    import multiprocessing as mp

    from stcstore.store.codecs import chunk_pool

    import time

    pool = chunk_pool()  # every thread of the parent's pool started and idle before the fork
    for task in [pool.submit(time.sleep, 0.2) for _ in range(pool._max_workers)]:
        task.result()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_write_in_child, args=(str(tmp_path / "s.zarr"), queue))
    child.start()
    child.join(30)
    if child.exitcode is None:  # hung: its tasks went to threads that the fork did not copy
        child.kill()
    assert child.exitcode == 0 and queue.get(timeout=5) == 2.0


def test_zarr_v2_and_sharded_arrays_keep_zarrs_path(tmp_path):
    """Arrays whose chunks are not one object each in the v3 layout are never written directly."""
    v2 = zarr.create_array(tmp_path / "v2.zarr", shape=(2, 8, 4), chunks=(1, 8, 4), dtype="float16", zarr_format=2)
    sharded = zarr.create_array(tmp_path / "sh.zarr", shape=(2, 8, 4), chunks=(1, 8, 4), shards=(2, 8, 4),
                                dtype="float16")
    plain = zarr.create_array(tmp_path / "v3.zarr", shape=(2, 8, 4), chunks=(1, 8, 4), dtype="float16")
    assert [DirectChunkWriter(a).ok for a in (v2, sharded, plain)] == [False, False, True]
