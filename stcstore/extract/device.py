"""Choosing the device and the precision of the forward pass (decided when called, never at import).

What is cast and what is autocast: the model's weights are loaded in the compute dtype (cast once,
at load), and the forward runs under `torch.autocast` in that dtype, so ops autocast keeps in
float32 (softmax, norms, ...) still get float32. Pooling is taken out of autocast and accumulates in
float32 (see `pooling.pool`).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ..errors import ConfigError

__all__ = ["resolve_device", "resolve_compute_dtype", "native_bf16", "autocast", "dtype_name", "DTYPE_NAMES"]

_NAMED = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in _NAMED.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16' or 'float16': the name a run and a classifier record."""
    return DTYPE_NAMES[dtype]


def resolve_device(device: str) -> torch.device:
    """'auto' takes CUDA when present; 'cuda' without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible: use --device cpu or --device auto")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 in hardware (compute capability 8.0, Ampere, or later).

    Not `torch.cuda.is_bf16_supported()`: that also says yes where bf16 is only emulated
    (pre-Ampere GPUs), which is slower than fp16 there.
    """
    if device.type != "cuda":
        return False
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on a CUDA device with native bf16, else fp16 on CUDA, float32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if native_bf16(device) else torch.float16
        return torch.float32
    if dtype not in _NAMED:
        raise ConfigError(f"unknown dtype {dtype!r}: choose from auto, {', '.join(_NAMED)}")
    return _NAMED[dtype]


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed precision for reduced dtypes; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
