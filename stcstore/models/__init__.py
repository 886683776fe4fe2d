"""Models: resolving specs, loading, and the per-family architecture table."""

from .architectures import ARCHITECTURES, Architecture, architecture_for, get_module
from .bundled import BUNDLED_MODELS, bundled_model_path
from .loading import LoadedModel, ModelSource, load_model, resolve_model, tokenizer_hash, weight_hash

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BUNDLED_MODELS",
    "LoadedModel",
    "ModelSource",
    "architecture_for",
    "bundled_model_path",
    "get_module",
    "load_model",
    "resolve_model",
    "tokenizer_hash",
    "weight_hash",
]
