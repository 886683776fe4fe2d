"""Pooling a (batch, tokens, width) activation over real tokens, for left or right padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["TokenMask", "pool", "pool_all"]


@dataclass
class TokenMask:
    """The attention mask of a batch and what pooling derives from it, computed once per batch."""

    mask: torch.Tensor        # (B, T) float32, 1 for real tokens
    count: torch.Tensor       # (B, 1) float32 number of real tokens
    first: torch.Tensor       # (B,) index of the first real token
    last: torch.Tensor        # (B,) index of the last real token
    keep: torch.Tensor        # (B, T, 1) bool, for max pooling
    # token positions [a, b) that are real in every row (CPU only: finding it on a GPU would sync)
    span: Optional[tuple[int, int]] = None

    @classmethod
    def from_attention_mask(cls, attention_mask: torch.Tensor) -> "TokenMask":
        """Derive pooling indices from a 0/1 mask; works for left and right padding."""
        m = attention_mask.to(torch.float32)
        t = m.shape[1]
        # argmax returns the first maximal index: the first 1 from the left, and from the right
        first = m.argmax(dim=1)
        last = t - 1 - m.flip(1).argmax(dim=1)
        span = None
        if m.device.type == "cpu" and bool((m.sum(1) > 0).all()):
            a, b = int(first.max()), int(last.min()) + 1
            # every real token lies between first and last only if the mask has no holes
            if a < b and bool(m[:, a:b].all()):
                span = (a, b)
        return cls(mask=m, count=m.sum(1, keepdim=True).clamp_min(1.0), first=first, last=last,
                   keep=m.bool().unsqueeze(-1), span=span)


def pool(x: torch.Tensor, tm: TokenMask, how: str) -> torch.Tensor:
    """One pooling of x (B, T, d) over real tokens, as float32 (B, d), never under autocast.

    The hooks fire inside the forward, i.e. inside autocast: without the guard the batched
    matmul of the mean would run as a bf16/fp16 GEMM (its float32 inputs cast back down), which
    loses more than the float16 store keeps and overflows fp16 past a token sum of 65,504.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        if how == "mean":
            # a batched matmul sums over tokens without a (B, T, d) masked copy; in float32
            return torch.bmm(tm.mask.unsqueeze(1), x.float()).squeeze(1) / tm.count
        if how == "max":
            # max is exact in any dtype: take it in the native one, then widen
            return _masked_max(x, tm).float()
        rows = torch.arange(x.shape[0], device=x.device)
        if how == "first":
            return x[rows, tm.first].float()
        if how == "last":
            return x[rows, tm.last].float()
    raise ValueError(f"unknown pooling {how!r}")


def _masked_max(x: torch.Tensor, tm: TokenMask) -> torch.Tensor:
    """Max over real tokens; the masked copy covers only the columns where some row is padding.

    Batches are sorted by length, so the positions real in every row are most of the tensor:
    their max needs no copy, and max is exact in any order, so the result is bitwise the
    same as masking everything.
    """
    if tm.span is None:
        return x.masked_fill(~tm.keep, float("-inf")).amax(dim=1)
    a, b = tm.span
    out = x[:, a:b].amax(dim=1)
    for lo, hi in ((0, a), (b, x.shape[1])):
        if hi > lo:
            edge = x[:, lo:hi].masked_fill(~tm.keep[:, lo:hi], float("-inf")).amax(dim=1)
            out = torch.maximum(out, edge)
    return out


def pool_all(x: torch.Tensor, tm: TokenMask, pools: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every requested pooling of one activation."""
    return {p: pool(x, tm, p) for p in pools}
