"""The STC classifier: the scikit-learn estimator (`STCClassifier`), the saved classifier (safetensors +
JSON: what `probe` writes and `predict` loads) and the `Predictor` that applies it to texts."""

from .artifact import CONFIG_NAME, FORMAT_VERSION, SITE_NAMES, WEIGHTS_NAME, ClassifierArtifact

__all__ = [
    "CONFIG_NAME", "FORMAT_VERSION", "SITE_NAMES", "WEIGHTS_NAME", "ClassifierArtifact",
    "STCClassifier", "Predictor", "pooled_features",
]


def __getattr__(name: str):
    # the estimator and the predictor import torch, transformers and sklearn: load them only when asked for
    if name == "STCClassifier":
        from .estimator import STCClassifier

        return STCClassifier
    if name in ("Predictor", "pooled_features"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
