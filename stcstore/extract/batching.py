"""Tokenising a window of rows, sorting by length into batches, and padding them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import DataError

__all__ = ["TokenizedWindow", "tokenize_window", "iter_batches"]


@dataclass
class TokenizedWindow:
    """Token ids of a window's rows (source order) and how many were truncated."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    n_tokens: np.ndarray       # (rows,) int32 after truncation
    truncated: int


def tokenize_window(tokenizer: Any, texts: Sequence[str], max_length: int, split: str, start: int) -> TokenizedWindow:
    """Tokenise with right truncation to max_length; count the rows that were cut."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise DataError(
            f"row {start + int(empty[0])} of split {split!r} has no tokens (empty text): drop or fill empty texts"
        )
    truncated = 0
    at_limit = np.flatnonzero(lengths >= max_length)
    if at_limit.size:
        # only rows at the limit can have been cut; tokenise just those again in full
        full = tokenizer([texts[i] for i in at_limit], truncation=False)["input_ids"]
        truncated = sum(len(f) > max_length for f in full)
    return TokenizedWindow(ids, enc.get("token_type_ids"), lengths, truncated)


def iter_batches(
    tw: TokenizedWindow, batch_size: int, pad_id: int, device: torch.device
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield (row positions in the window, padded batch) with rows sorted by length, longest first.

    Sorting inside the window keeps padding small; the positions let the caller un-sort.
    """
    order = np.argsort(-tw.n_tokens, kind="stable")
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = int(tw.n_tokens[idx].max())
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        tt = np.zeros((len(idx), width), dtype=np.int64) if tw.token_type_ids is not None else None
        for r, i in enumerate(idx):
            n = tw.n_tokens[i]
            ids[r, :n] = tw.input_ids[i]
            mask[r, :n] = 1
            if tt is not None:
                tt[r, :n] = tw.token_type_ids[i]
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if tt is not None:
            batch["token_type_ids"] = torch.from_numpy(tt)
        if device.type == "cuda":
            # a non_blocking copy from pageable memory is synchronous: pin first (small: ids and mask)
            batch = {k: v.pin_memory() for k, v in batch.items()}
        yield idx, {k: v.to(device, non_blocking=True) for k, v in batch.items()}
