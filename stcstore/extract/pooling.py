"""Pooling a (batch, tokens, width) activation over real tokens, for left or right padding."""

from __future__ import annotations

from dataclasses import dataclass

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

    @classmethod
    def from_attention_mask(cls, attention_mask: torch.Tensor) -> "TokenMask":
        """Derive pooling indices from a 0/1 mask; works for left and right padding."""
        m = attention_mask.to(torch.float32)
        t = m.shape[1]
        # argmax returns the first maximal index: the first 1 from the left, and from the right
        first = m.argmax(dim=1)
        last = t - 1 - m.flip(1).argmax(dim=1)
        return cls(mask=m, count=m.sum(1, keepdim=True).clamp_min(1.0), first=first, last=last, keep=m.bool().unsqueeze(-1))


def pool(x: torch.Tensor, tm: TokenMask, how: str) -> torch.Tensor:
    """One pooling of x (B, T, d) over real tokens, as float32 (B, d)."""
    if how == "mean":
        # a batched matmul sums over tokens without a (B, T, d) masked copy; sum in float32
        # because bf16 sums of hundreds of tokens lose more than the fp16 store keeps
        return torch.bmm(tm.mask.unsqueeze(1), x.float()).squeeze(1) / tm.count
    if how == "max":
        return x.masked_fill(~tm.keep, float("-inf")).amax(dim=1).float()
    rows = torch.arange(x.shape[0], device=x.device)
    if how == "first":
        return x[rows, tm.first].float()
    if how == "last":
        return x[rows, tm.last].float()
    raise ValueError(f"unknown pooling {how!r}")


def pool_all(x: torch.Tensor, tm: TokenMask, pools: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every requested pooling of one activation."""
    return {p: pool(x, tm, p) for p in pools}
