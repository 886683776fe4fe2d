"""stcstore: Sparsify-then-Classify on cached, pooled per-layer transformer activations."""

import sys as _sys
import types as _types

from .config import ExtractConfig, ProbeConfig
from .errors import StcstoreError, UserError

__version__ = "0.1.0"

__all__ = ["ExtractConfig", "ProbeConfig", "StcstoreError", "UserError", "extract", "open_run", "STCClassifier", "__version__"]


class _Package(_types.ModuleType):
    """The package's module type: `stcstore.extract` stays the function once the subpackage is imported."""

    # Importing the subpackage `stcstore.extract` makes the import system bind it as this
    # package's attribute `extract`, which would shadow the function (`from stcstore import
    # extract` then gave a module). A property wins over that binding; the subpackage stays
    # reachable as `from stcstore.extract import ...` and through sys.modules.
    @property
    def extract(self):
        """The extraction function, `stcstore.extract.runner.extract` (imported on first use)."""
        from .extract.runner import extract

        return extract

    @extract.setter
    def extract(self, value) -> None:
        pass


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    # heavy imports (torch, transformers, zarr) only when used, so `stcstore --help` is fast
    if name == "open_run":
        from .store import open_run

        return open_run
    if name == "STCClassifier":
        from .classifier.estimator import STCClassifier

        return STCClassifier
    raise AttributeError(name)
