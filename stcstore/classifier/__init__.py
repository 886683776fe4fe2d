"""The saved STC classifier (safetensors + JSON): what `probe` writes and `predict` loads."""

from .artifact import CONFIG_NAME, FORMAT_VERSION, SITE_NAMES, WEIGHTS_NAME, ClassifierArtifact

__all__ = [
    "CONFIG_NAME", "FORMAT_VERSION", "SITE_NAMES", "WEIGHTS_NAME", "ClassifierArtifact",
    "STCClassifier", "pooled_features",
]


def __getattr__(name: str):
    # the predictor imports torch and transformers: load it only when asked for
    if name in ("STCClassifier", "pooled_features"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
