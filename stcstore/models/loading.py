"""Resolving a model spec (alias, folder, .gguf file, hub id) and loading model + tokenizer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError, MissingDependencyError, ModelNotFoundError
from .architectures import Architecture, architecture_for, get_module
from .bundled import BUNDLED_MODELS, bundled_model_path

__all__ = ["ModelSource", "LoadedModel", "resolve_model", "load_model", "weight_hash", "tokenizer_hash"]

log = logging.getLogger(__name__)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
# files larger than this are hashed by sampled blocks: a full hash of 100 GB of weights
# would cost minutes on every load, and the sample still changes with any re-quantisation
_FULL_HASH_LIMIT = 256 << 20
_SAMPLE_BLOCK = 1 << 20
_SAMPLES = 16


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a bundled alias, a local folder, a GGUF file or a hub id."""

    spec: str
    kind: str                  # "bundled" | "folder" | "gguf" | "hub"
    path: str                  # folder or hub id given to from_pretrained
    gguf_file: Optional[str] = None


@dataclass
class LoadedModel:
    """A base model (no LM head) in eval mode, its tokenizer and its table entry."""

    model: torch.nn.Module
    tokenizer: Any
    arch: Architecture
    source: ModelSource
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.info["n_layers"])


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec


def resolve_model(spec: str) -> ModelSource:
    """Turn what the user gave into a ModelSource, failing fast on missing local paths."""
    if not spec:
        raise ConfigError("--model is empty: give a bundled alias (minilm, smollm2), a folder, a .gguf file or a hub id")
    if spec in BUNDLED_MODELS:
        folder, gguf = bundled_model_path(spec)
        return ModelSource(spec, "bundled", str(folder), gguf)
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelNotFoundError(f"model file {spec!r} not found: give the path of an existing .gguf file")
        return ModelSource(spec, "gguf", str(p.parent.resolve()), p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {spec!r} has no config.json: give a folder saved with save_pretrained, a .gguf file or a hub id"
            )
        return ModelSource(spec, "folder", str(p.resolve()))
    if p.exists():
        raise ModelNotFoundError(f"model path {spec!r} is a file but not .gguf: give a model folder or a .gguf file")
    if _looks_like_path(spec):
        raise ModelNotFoundError(f"model path {spec!r} not found: give an existing model folder or .gguf file")
    return ModelSource(spec, "hub", spec)


def weight_hash(source: ModelSource, revision: Optional[str] = None, commit: Optional[str] = None) -> str:
    """A hash that changes when the weights change (hub: the resolved commit)."""
    if source.kind == "hub":
        return f"hub:{source.path}@{commit or revision or 'unknown'}"
    folder = Path(source.path)
    files = [folder / source.gguf_file] if source.gguf_file else sorted(
        f for f in folder.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES
    )
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            if size <= _FULL_HASH_LIMIT:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            else:
                for i in range(_SAMPLES):
                    fh.seek((size - _SAMPLE_BLOCK) * i // (_SAMPLES - 1))
                    h.update(fh.read(_SAMPLE_BLOCK))
    return h.hexdigest()[:32]


def tokenizer_hash(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, special tokens and class."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return h.hexdigest()[:32]


def _ffn_width(module: torch.nn.Module) -> int:
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:  # GPT-2's Conv1D stores (in, out)
        return int(weight.shape[0])
    raise ConfigError(f"cannot read the FFN width of {type(module).__name__}")


def load_model(source: ModelSource, **kwargs: Any) -> LoadedModel:
    """Load the base model and tokenizer of a source; raise ModelNotFoundError if it cannot be had.

    Takes `_load_model`'s options. A hub id is fetched only when the hub answers one quick request;
    otherwise only the local cache is read (a mistyped alias fails in a second, not after retries).
    """
    from ..hub import cache_only_unless_reachable

    if source.kind != "hub":
        return _load_model(source, **kwargs)
    with cache_only_unless_reachable():
        return _load_model(source, **kwargs)


def _load_model(
    source: ModelSource,
    *,
    device: torch.device | str = "cpu",
    weights_dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    revision: Optional[str] = None,
    device_map: Optional[str | dict] = None,
    max_memory: Optional[dict] = None,
) -> LoadedModel:
    """Load the base model and tokenizer of a source (see `load_model`).

    `device_map` (e.g. "auto", needs accelerate) spreads the layers over the GPUs and CPU memory
    instead of moving the whole model to `device`; `max_memory` bounds what each device gets.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        config = AutoConfig.from_pretrained(source.path, **kwargs)
    except ImportError as exc:  # gguf / accelerate missing
        raise MissingDependencyError(f"loading {source.spec!r} needs an extra package ({exc}): pip install gguf accelerate") from None
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            from ..hub import did_you_mean, hub_unreachable_note

            aliases = ", ".join(BUNDLED_MODELS)
            why = hub_unreachable_note() or _first_line(exc)
            raise ModelNotFoundError(
                f"model {source.spec!r} not found{did_you_mean(source.spec, BUNDLED_MODELS)}: it is not a bundled "
                f"alias ({aliases}), a local folder or .gguf file, and the Hugging Face hub could not provide it ({why})"
            ) from None
        raise ModelNotFoundError(f"model {source.spec!r} could not be read ({_first_line(exc)}): check the files") from None
    # fail on the architecture before loading gigabytes of weights
    arch = architecture_for(config.model_type)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        placement = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory}
        if device_map is None and _direct_to(device):
            # weights go from the files straight onto the GPU, not through a full copy in host RAM
            # (under torchrun every rank would otherwise hold the whole model in RAM at once)
            placement = {"device_map": {"": torch.device(device)}}
        model = AutoModel.from_pretrained(source.path, config=config, dtype=weights_dtype, **placement, **kwargs)
    except ImportError as exc:
        raise MissingDependencyError(f"loading {source.spec!r} needs an extra package ({exc}): pip install gguf accelerate") from None
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"model {source.spec!r} could not be loaded ({_first_line(exc)}): check the files") from None
    model.eval()
    if device_map is None:
        model.to(device)
    if tokenizer.pad_token is None:
        # decoder tokenizers (GPT-2, Llama) have no pad token; the mask makes its value irrelevant
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {source.spec!r} has neither a pad nor an eos token: set one in the tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    blocks = get_module(model, arch.blocks)
    commit = getattr(config, "_commit_hash", None)
    info = {
        "spec": source.spec,
        "kind": source.kind,
        "path": source.path,
        "gguf_file": source.gguf_file,
        "revision": revision or commit,
        "weight_hash": weight_hash(source, revision, commit),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "model_type": config.model_type,
        "family": arch.family,
        "n_layers": len(blocks),
        "d": int(config.hidden_size),
        "d_ff": _ffn_width(get_module(blocks[0], arch.ffn_out)),
        "max_positions": _max_positions(config, tokenizer),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, source=source, info=info)


def _direct_to(device: torch.device | str) -> bool:
    """Whether from_pretrained can place the weights on `device` while reading them (an accelerator)."""
    import importlib.util

    import transformers

    if torch.device(device).type == "cpu":
        return False
    # a one-device map needs accelerate before transformers 5, and nothing from 5 on
    return int(transformers.__version__.split(".")[0]) >= 5 or importlib.util.find_spec("accelerate") is not None


def _max_positions(config: Any, tokenizer: Any) -> int:
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    valid = [int(v) for v in limits if isinstance(v, int) and 0 < v < 10**7]
    return min(valid) if valid else 512


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
