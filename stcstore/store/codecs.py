"""The crc32c checksum codec computed on zarr's thread pool instead of its event-loop thread.

zarr runs one event loop for all I/O and hands only some codecs to its thread pool: its own
crc32c codec runs on the loop, and that single thread then held about half of the writer's CPU
time (benchmarks/store_ingest.py), which capped the writer at about 1.3x on two cores. This
subclass does the same work in the same format (its metadata name is "crc32c"; any zarr reads
it), only on the pool, so the checksums of a window's chunks are computed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator

from zarr.codecs import Crc32cCodec

__all__ = ["PoolCrc32cCodec", "pool_checksums"]


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
