"""Typed errors. Every user mistake is a `UserError`; the CLI prints it as one line, exit 2.

Each class also inherits the builtin it corresponds to, so callers of the library can catch
either (zarr-python's convention).
"""

from __future__ import annotations

import errno

__all__ = [
    "StcstoreError",
    "UserError",
    "ConfigError",
    "ModelNotFoundError",
    "UnsupportedArchitectureError",
    "DataNotFoundError",
    "DataError",
    "StoreNotFoundError",
    "StoreError",
    "FingerprintMismatchError",
    "StoreLockedError",
    "IncompleteRunError",
    "DamagedRunError",
    "LabelError",
    "ClassifierError",
    "Float16OverflowError",
    "MissingDependencyError",
    "MemoryBudgetError",
    "ScratchSpaceError",
    "is_no_room",
]


class StcstoreError(Exception):
    """Base class of every error raised by stcstore."""


class UserError(StcstoreError):
    """Something the user asked for is wrong; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """An option has an invalid value."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """The model path, alias or hub id does not resolve to a model."""


class UnsupportedArchitectureError(UserError, NotImplementedError):
    """The model's architecture has no entry in the architecture table."""


class DataNotFoundError(UserError, FileNotFoundError):
    """The dataset file, alias or hub id does not resolve to data."""


class DataError(UserError, ValueError):
    """The data exists but cannot be used as asked (missing column, empty, bad values)."""


class StoreNotFoundError(UserError, FileNotFoundError):
    """The store, run or split does not exist."""


class StoreError(UserError, ValueError):
    """The store path or its contents cannot be used as asked."""


class FingerprintMismatchError(StoreError):
    """An existing run was made with different settings than the ones given now."""


class StoreLockedError(StoreError, BlockingIOError):
    """Another process is writing this run."""


class IncompleteRunError(StoreError):
    """The run's extraction has not finished."""


class DamagedRunError(StoreError):
    """Chunks of committed windows are missing or do not decode (checksum, codec, non-finite)."""


class LabelError(UserError, ValueError):
    """The label or split column cannot be used for probing."""


class ClassifierError(UserError, ValueError):
    """A saved classifier is missing, damaged or does not fit the model given."""


class Float16OverflowError(StcstoreError, OverflowError):
    """An activation does not fit in float16; rerun with --dtype float32."""


class MissingDependencyError(UserError, ImportError):
    """An optional package is needed for what was asked."""


class MemoryBudgetError(UserError, MemoryError):
    """A fit ran out of host or device memory; the message names the option that makes it fit."""


class ScratchSpaceError(UserError, OSError):
    """The disk of the probe's scratch folder has no room for the columns it must spill."""


def is_no_room(exc: BaseException) -> bool:
    """Whether an error is a write that found no room: a full disk, the user's quota, the file-size limit."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
