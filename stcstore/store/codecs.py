"""Encoding activation chunks off zarr's single event-loop thread, in the bytes zarr writes.

Two ways, both the same stored format (any zarr reads it):

- `DirectChunkWriter`: the writer's whole chunks encoded with the array's own codecs (bytes,
  blosc, crc32c) and stored with the store's synchronous `set_sync`, one chunk per task on a
  small thread pool. zarr's indexing, batching and event loop stayed serial with one
  `arr[...] = values` per array (about a fifth of the writer's CPU time on MiniLM rows, capping
  two cores at ~1.25x); here compression and file writes run in parallel across chunks, and
  only a few Python calls and the crc32c (about a twentieth of the time) hold the GIL.
- `PoolCrc32cCodec`, for everything else that goes through zarr (reads, `verify`, stores
  without `set_sync`): zarr runs one event loop for all I/O and hands only some codecs to its
  thread pool; its own crc32c codec runs on the loop, and that single thread then held about
  half of the writer's CPU time, capping it at about 1.3x on two cores. This subclass does the
  same work in the same format (its metadata name is "crc32c"), only on the pool, so the
  checksums of many chunks are computed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np
from zarr.codecs import Crc32cCodec

__all__ = ["DirectChunkWriter", "PoolCrc32cCodec", "chunk_pool", "pool_checksums"]


class PoolCrc32cCodec(Crc32cCodec):
    """zarr's crc32c codec, encoded and decoded on zarr's thread pool."""

    async def _encode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_bytes, chunk_spec)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


_registered = False


@contextlib.contextmanager
def pool_checksums() -> Iterator[None]:
    """Arrays opened inside this block compute their crc32c checksums on zarr's thread pool."""
    global _registered
    import zarr
    from zarr.registry import register_codec

    if not _registered:  # registering adds a choice; zarr's config still picks its own by default
        register_codec("crc32c", PoolCrc32cCodec)
        _registered = True
    with zarr.config.set({"codecs.crc32c": f"{PoolCrc32cCodec.__module__}.{PoolCrc32cCodec.__qualname__}"}):
        yield


_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def chunk_pool() -> ThreadPoolExecutor:
    """The process's chunk-writing threads (zarr's threading.max_workers of them, else cores + 4)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            import zarr

            n = zarr.config.get("threading.max_workers", None) or min(32, len(os.sched_getaffinity(0)) + 4)
            _pool = ThreadPoolExecutor(max_workers=int(n), thread_name_prefix="stcstore-chunk")
            os.register_at_fork(after_in_child=_forget_pool)  # a forked child has none of its threads
        return _pool


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


class DirectChunkWriter:
    """Writes whole chunks of one zarr v3 array without zarr's event loop: the bytes zarr would write."""

    def __init__(self, arr):
        from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec
        from zarr.abc.store import SupportsSetSync
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.chunk_grids import RegularChunkGrid

        a = arr._async_array
        meta = a.metadata
        codecs = list(a.codec_pipeline)
        self.ok = (
            getattr(meta, "zarr_format", None) == 3
            and isinstance(meta.chunk_grid, RegularChunkGrid)
            and isinstance(a.store_path.store, SupportsSetSync)
            and not any(isinstance(c, ArrayArrayCodec) for c in codecs)
            and isinstance(codecs[0], ArrayBytesCodec)
            and type(codecs[0]).__name__ == "BytesCodec"  # not sharding: one chunk, one stored object
        )
        self._meta, self._codecs = meta, codecs
        self._store, self._prefix = a.store_path.store, a.store_path.path
        self.chunk_shape: tuple[int, ...] = tuple(meta.chunk_grid.chunk_shape) if self.ok else ()
        if self.ok:  # (zarr v2 arrays keep zarr's own path)
            self.dtype = np.dtype(meta.dtype.to_native_dtype())
            self.fill = meta.fill_value
            self._spec = meta.get_chunk_spec((0,) * len(self.chunk_shape), a.config, default_buffer_prototype())

    def write(self, coords: tuple[int, ...], values: np.ndarray) -> None:
        """Encode and store the chunk at grid position coords; values at its origin, the rest fill."""
        from zarr.core.buffer.cpu import NDBuffer

        values = np.asarray(values, dtype=self.dtype)
        if values.shape != self.chunk_shape:
            # the last chunk along an axis: zarr stores it at full size, padded with the fill value
            full = np.full(self.chunk_shape, self.fill, dtype=self.dtype)
            full[tuple(slice(0, n) for n in values.shape)] = values
            values = full
        spec = self._spec
        data = self._codecs[0]._encode_sync(NDBuffer.from_numpy_array(np.ascontiguousarray(values)), spec)
        spec = self._codecs[0].resolve_metadata(spec)
        for codec in self._codecs[1:]:
            data = codec._encode_sync(data, spec)
            spec = codec.resolve_metadata(spec)
        key = self._meta.encode_chunk_key(coords)
        self._store.set_sync(f"{self._prefix}/{key}" if self._prefix else key, data)

    def submit(self, coords: tuple[int, ...], values: np.ndarray) -> Future:
        """write() on the chunk pool."""
        return chunk_pool().submit(self.write, coords, values)
