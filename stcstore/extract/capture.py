"""Hooks on the real Hugging Face model that pool each layer's activations as it runs.

Site `hidden`, entry l < L: the input of block l (equals `output_hidden_states[l]`); entry L:
the output of the final norm, or of the last block where there is none (= last_hidden_state).
Site `ffn`, entry l: the input of block l's MLP output projection (act(fc1 x), act(gate x) * up x).
Each hook pools at once, so no layer's (batch, tokens, width) tensor outlives its layer.
With `stop_after`, the forward is cut short after the last activation needed: the remaining
blocks never run (early exit for predict).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch

from ..models.architectures import get_module
from ..models.loading import LoadedModel
from .pooling import TokenMask, pool_all

__all__ = ["ActivationCapture", "capture_order", "blocks_needed"]


class _StopForward(Exception):
    """Raised from a hook once every needed activation is pooled."""


def capture_order(site: str, layer: int) -> int:
    """Position of an activation in forward order: hidden l, ffn l, hidden l+1, ..."""
    return 2 * layer if site == "hidden" else 2 * layer + 1


def blocks_needed(layers: Mapping[str, Sequence[int]]) -> int:
    """How many blocks must run (some only partly) to produce the given activations."""
    last = max((capture_order(s, l) for s, ls in layers.items() for l in ls), default=-1)
    return (last + 1) // 2


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class ActivationCapture:
    """Context manager: hooks that pool the chosen layers of the chosen sites during `run`."""

    def __init__(
        self,
        loaded: LoadedModel,
        sites: Sequence[str],
        pools: Sequence[str],
        layers: Optional[Mapping[str, Sequence[int]]] = None,
        stop_early: bool = True,
    ):
        self.loaded = loaded
        self.pools = tuple(pools)
        n = loaded.n_layers
        full = {"hidden": list(range(n + 1)), "ffn": list(range(n))}
        self.layers: dict[str, list[int]] = {s: sorted(layers[s]) if layers else full[s] for s in sites}
        self.stop_early = stop_early
        last = max(capture_order(s, l) for s, ls in self.layers.items() for l in ls)
        self._stop_at = last if stop_early else None
        self._handles: list = []
        self._tm: Optional[TokenMask] = None
        self._tm_on: dict[torch.device, TokenMask] = {}  # the batch's mask on other devices
        self._out: dict[tuple[str, str], list[Optional[torch.Tensor]]] = {}
        params = inspect.signature(loaded.model.forward).parameters
        self._accepts = set(params)

    # -- hooks -----------------------------------------------------------------------------
    def _store(self, site: str, layer: int, x: torch.Tensor) -> None:
        idx = self.layers[site].index(layer)
        tm = self._tm
        if x.device != tm.mask.device:  # layers spread over devices (device_map): pool where the layer ran
            if x.device not in self._tm_on:
                self._tm_on[x.device] = TokenMask.from_attention_mask(tm.mask.to(x.device))
            tm = self._tm_on[x.device]
        for p, v in pool_all(x, tm, self.pools).items():
            self._out[(site, p)][idx] = v
        if self._stop_at is not None and capture_order(site, layer) == self._stop_at:
            raise _StopForward

    def __enter__(self) -> "ActivationCapture":
        arch, model = self.loaded.arch, self.loaded.model
        blocks = get_module(model, arch.blocks)
        n = len(blocks)
        for layer in self.layers.get("hidden", []):
            if layer < n:
                self._handles.append(
                    blocks[layer].register_forward_pre_hook(
                        lambda m, a, k, _l=layer: self._store("hidden", _l, _hidden_arg(a, k)), with_kwargs=True
                    )
                )
            else:
                last_mod = get_module(model, arch.final_norm) if arch.final_norm else blocks[n - 1]
                self._handles.append(
                    last_mod.register_forward_hook(lambda m, a, o: self._store("hidden", n, _first_output(o)))
                )
        for layer in self.layers.get("ffn", []):
            proj = get_module(blocks[layer], arch.ffn_out)
            self._handles.append(
                proj.register_forward_pre_hook(lambda m, a, _l=layer: self._store("ffn", _l, a[0]))
            )
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- running ---------------------------------------------------------------------------
    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keyword arguments of the forward: tokenizer outputs it accepts, position ids, no cache."""
        inputs = {k: v for k, v in batch.items() if k in self._accepts}
        mask = batch["attention_mask"]
        if self.loaded.arch.position_ids_from_mask and "position_ids" in self._accepts:
            # positions count real tokens only, so left padding gives the same numbers as right
            inputs["position_ids"] = (mask.long().cumsum(1) - 1).clamp_min(0)
        if "use_cache" in self._accepts:
            inputs["use_cache"] = False
        return inputs

    @torch.inference_mode()
    def run(self, batch: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
        """Forward one tokenised batch; return {(site, pool): (n_layers_captured, B, width) float32}."""
        self._tm = TokenMask.from_attention_mask(batch["attention_mask"])
        self._tm_on = {}
        self._out = {(s, p): [None] * len(ls) for s, ls in self.layers.items() for p in self.pools}
        try:
            self.loaded.model(**self.model_inputs(batch))
        except _StopForward:
            pass
        missing = [(k, i) for k, v in self._out.items() for i, t in enumerate(v) if t is None]
        if missing:
            raise RuntimeError(f"hooks did not fire for {missing[:3]}: the architecture table entry is wrong")
        # every pooled tensor comes back on the device of the inputs
        dev = batch["attention_mask"].device
        out = {k: torch.stack([t.to(dev) for t in v]) for k, v in self._out.items()}
        self._out = {}
        return out
