"""stcstore: Sparsify-then-Classify on cached, pooled per-layer transformer activations."""

import os as _os

# Idle OpenMP workers of torch spin for a while by default; on small machines they then take
# the cores our writer thread and sklearn's BLAS need (a small torch solve went from 0.1 s to
# 3.4 s next to busy neighbours). Passive waiting only applies if torch is imported after us;
# a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import ExtractConfig, ProbeConfig
from .errors import StcstoreError, UserError

__version__ = "0.1.0"

__all__ = ["ExtractConfig", "ProbeConfig", "StcstoreError", "UserError", "extract", "open_run", "STCClassifier", "__version__"]


def __getattr__(name: str):
    # heavy imports (torch, transformers, zarr) only when used, so `stcstore --help` is fast
    if name == "extract":
        from .extract import extract

        return extract
    if name == "open_run":
        from .store import open_run

        return open_run
    if name == "STCClassifier":
        from .classifier.predictor import STCClassifier

        return STCClassifier
    raise AttributeError(name)
