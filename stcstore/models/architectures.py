"""Where each model family keeps its blocks, its MLP output projection and its final norm.

Paths are attribute paths relative to the base model that `AutoModel` returns (no LM head).
To add a family: find, on `AutoModel.from_config(cfg)`, the list of blocks, the module whose
*input* is the FFN activation (the MLP's output projection) relative to one block, and the
final norm applied to `last_hidden_state` (None if there is none); add an entry below and a
tiny config to tests/test_capture.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import UnsupportedArchitectureError

__all__ = ["Architecture", "ARCHITECTURES", "architecture_for", "get_module"]


@dataclass(frozen=True)
class Architecture:
    """Module paths of one model family."""

    family: str
    blocks: str                 # ModuleList of transformer blocks
    ffn_out: str                # per block: the MLP output projection; its input is the FFN activation
    final_norm: Optional[str]   # applied after the last block to give hidden_states[L]
    # position ids from the attention mask make left padding exact for absolute-position and
    # rotary models; RoBERTa computes its own from the pad token (SPIN's bug was overriding it).
    position_ids_from_mask: bool
    causal: bool


_BERT = Architecture("bert", "encoder.layer", "output.dense", None, True, False)
_ROBERTA = Architecture("roberta", "encoder.layer", "output.dense", None, False, False)
_DISTILBERT = Architecture("distilbert", "transformer.layer", "ffn.lin2", None, True, False)
_GPT2 = Architecture("gpt2", "h", "mlp.c_proj", "ln_f", True, True)
_LLAMA = Architecture("llama", "layers", "mlp.down_proj", "norm", True, True)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
}


def architecture_for(model_type: str) -> Architecture:
    """The table entry for a config's `model_type`, or a clear error naming the supported ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))}): "
            f"add an entry to stcstore/models/architectures.py (blocks, MLP output projection, final norm)"
        ) from None


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """Follow a dotted attribute path from a module."""
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod
