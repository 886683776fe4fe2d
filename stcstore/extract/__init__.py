"""Extraction: hooks that pool every layer during the forward, batching, and the resumable runner."""

from .capture import ActivationCapture, LayerHooks, blocks_needed, capture_order
from .pooling import TokenMask, pool, pool_all
from .runner import ExtractResult, build_fingerprint, default_run_name, extract

__all__ = [
    "ActivationCapture",
    "ExtractResult",
    "LayerHooks",
    "TokenMask",
    "blocks_needed",
    "build_fingerprint",
    "capture_order",
    "default_run_name",
    "extract",
    "pool",
    "pool_all",
]
