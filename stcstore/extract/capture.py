"""Hooks on the real Hugging Face model: the one mechanism that reads activations during the forward.

Site `hidden`, entry l < L: the input of block l (equals `output_hidden_states[l]`); entry L:
the output of the final norm, or of the last block where there is none (= last_hidden_state).
Site `ffn`, entry l: the input of block l's MLP output projection (act(fc1 x), act(gate x) * up x).

`LayerHooks` installs the hooks and hands each chosen (site, layer)'s raw activation to a
callback as the layer runs; with `stop_early` the forward is cut short after the last one (the
remaining blocks never run: early exit for predict). `ActivationCapture` pools in its callback,
so no layer's (batch, tokens, width) tensor outlives its layer; `explain` keeps the tokens.
"""

from __future__ import annotations

import inspect
from typing import Callable, Mapping, Optional, Sequence

import torch

from ..models.architectures import get_module
from ..models.loading import LoadedModel
from .pooling import TokenMask, pool_all

__all__ = ["ActivationCapture", "LayerHooks", "capture_order", "blocks_needed", "all_layers"]

Callback = Callable[[str, int, torch.Tensor], None]


class _StopForward(Exception):
    """Raised from a hook once every needed activation has been handed over."""


def capture_order(site: str, layer: int) -> int:
    """Position of an activation in forward order: hidden l, ffn l, hidden l+1, ..."""
    return 2 * layer if site == "hidden" else 2 * layer + 1


def blocks_needed(layers: Mapping[str, Sequence[int]]) -> int:
    """How many blocks must run (some only partly) to produce the given activations."""
    last = max((capture_order(s, l) for s, ls in layers.items() for l in ls), default=-1)
    return (last + 1) // 2


def all_layers(n_layers: int) -> dict[str, list[int]]:
    """Every layer entry of each site of a model with n_layers blocks."""
    return {"hidden": list(range(n_layers + 1)), "ffn": list(range(n_layers))}


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class LayerHooks:
    """Context manager: during `forward`, callback(site, layer, activation) for each chosen layer entry.

    The activation is the raw (batch, tokens, width) tensor, in the forward's dtype and on the
    device where that layer ran; the callback must not keep it beyond what it needs.
    """

    def __init__(self, loaded: LoadedModel, layers: Mapping[str, Sequence[int]], callback: Callback,
                 stop_early: bool = True):
        self.loaded = loaded
        self.layers: dict[str, list[int]] = {s: sorted(int(l) for l in ls) for s, ls in layers.items() if ls}
        if not self.layers:
            raise ValueError("no layer entries to hook")
        self.callback = callback
        last = max(capture_order(s, l) for s, ls in self.layers.items() for l in ls)
        self._stop_at = last if stop_early else None
        self._handles: list = []
        self._accepts = set(inspect.signature(loaded.model.forward).parameters)

    def _fire(self, site: str, layer: int, x: torch.Tensor) -> None:
        self.callback(site, layer, x)
        if self._stop_at is not None and capture_order(site, layer) == self._stop_at:
            raise _StopForward

    def __enter__(self) -> "LayerHooks":
        arch, model = self.loaded.arch, self.loaded.model
        blocks = get_module(model, arch.blocks)
        n = len(blocks)
        for layer in self.layers.get("hidden", []):
            if layer < n:
                self._handles.append(
                    blocks[layer].register_forward_pre_hook(
                        lambda m, a, k, _l=layer: self._fire("hidden", _l, _hidden_arg(a, k)), with_kwargs=True
                    )
                )
            else:
                last_mod = get_module(model, arch.final_norm) if arch.final_norm else blocks[n - 1]
                self._handles.append(
                    last_mod.register_forward_hook(lambda m, a, o: self._fire("hidden", n, _first_output(o)))
                )
        for layer in self.layers.get("ffn", []):
            proj = get_module(blocks[layer], arch.ffn_out)
            self._handles.append(
                proj.register_forward_pre_hook(lambda m, a, _l=layer: self._fire("ffn", _l, a[0]))
            )
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

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

    def forward(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Run the model on a tokenised batch, firing the callbacks (inside the context)."""
        try:
            self.loaded.model(**self.model_inputs(batch))
        except _StopForward:
            pass


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
        full = all_layers(loaded.n_layers)
        self.layers: dict[str, list[int]] = {s: sorted(layers[s]) if layers else full[s] for s in sites}
        self.stop_early = stop_early
        self.hooks = LayerHooks(loaded, self.layers, self._store, stop_early=stop_early)
        self._tm: Optional[TokenMask] = None
        self._tm_on: dict[torch.device, TokenMask] = {}  # the batch's mask on other devices
        self._out: dict[tuple[str, str], list[Optional[torch.Tensor]]] = {}

    def _store(self, site: str, layer: int, x: torch.Tensor) -> None:
        idx = self.layers[site].index(layer)
        tm = self._tm
        if x.device != tm.mask.device:  # layers spread over devices (device_map): pool where the layer ran
            if x.device not in self._tm_on:
                self._tm_on[x.device] = TokenMask.from_attention_mask(tm.mask.to(x.device))
            tm = self._tm_on[x.device]
        for p, v in pool_all(x, tm, self.pools).items():
            self._out[(site, p)][idx] = v

    def __enter__(self) -> "ActivationCapture":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keyword arguments of the forward (see `LayerHooks.model_inputs`)."""
        return self.hooks.model_inputs(batch)

    @torch.inference_mode()
    def run(self, batch: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
        """Forward one tokenised batch; return {(site, pool): (n_layers_captured, B, width) float32}."""
        self._tm = TokenMask.from_attention_mask(batch["attention_mask"])
        self._tm_on = {}
        self._out = {(s, p): [None] * len(ls) for s, ls in self.layers.items() for p in self.pools}
        self.hooks.forward(batch)
        missing = [(k, i) for k, v in self._out.items() for i, t in enumerate(v) if t is None]
        if missing:
            raise RuntimeError(f"hooks did not fire for {missing[:3]}: the architecture table entry is wrong")
        # every pooled tensor comes back on the device of the inputs
        dev = batch["attention_mask"].device
        out = {k: torch.stack([t.to(dev) for t in v]) for k, v in self._out.items()}
        self._out = {}
        return out
