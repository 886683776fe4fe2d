"""The saved STC classifier (safetensors + JSON): what `probe` writes and `predict` loads."""

from .artifact import CONFIG_NAME, FORMAT_VERSION, SITE_NAMES, WEIGHTS_NAME, ClassifierArtifact

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "SITE_NAMES", "WEIGHTS_NAME", "ClassifierArtifact"]
