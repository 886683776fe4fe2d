"""Choosing the device and the precision of the forward pass (decided when called, never at import)."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ..errors import ConfigError

__all__ = ["resolve_device", "resolve_compute_dtype", "autocast"]

_NAMED = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """'auto' takes CUDA when present; 'cuda' without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible: use --device cpu or --device auto")
    return torch.device(device)


def resolve_compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 (fp16 without bf16 support) on CUDA, float32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _NAMED[dtype]


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed precision for reduced dtypes; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
