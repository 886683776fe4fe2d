"""L1 logistic-regression solvers behind one interface: sklearn (CPU reference), torch, cuML.

`get_solver` picks a backend when it is called (never at import): torch on CUDA when a GPU is
there, else sklearn (see the measurement noted in `get_solver`; benchmarks/solver_speed.py
compares the two solvers alone).
"""

from __future__ import annotations

import logging

from ...config import BACKENDS, DEVICES
from ...errors import ConfigError
from .base import PathFit, Solver, decision_function, l1_logistic_objective, n_outputs, predict_labels

__all__ = [
    "PathFit",
    "Solver",
    "get_solver",
    "l1_logistic_objective",
    "decision_function",
    "predict_labels",
    "n_outputs",
]

log = logging.getLogger(__name__)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def get_solver(backend: str = "auto", device: str = "auto") -> Solver:
    """The solver for `backend` on `device` ('auto': torch on CUDA if present, else sklearn)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {backend!r}: choose from {','.join(BACKENDS)}")
    if device not in DEVICES:
        raise ConfigError(f"unknown --device {device!r}: choose from {','.join(DEVICES)}")
    if backend == "auto" and device != "cuda" and not (device == "auto" and _cuda_available()):
        # measured on 2 CPU cores (MiniLM, 6,000 Rotten Tomatoes rows, full grid): sklearn
        # 859 s vs the batched torch solver 1,535 s, so the CPU default is sklearn
        backend = "sklearn"
    if backend == "sklearn":
        if device == "cuda":
            raise ConfigError("--backend sklearn runs on the CPU only: use --backend torch or cuml for cuda")
        from .sklearn_solver import SklearnSolver

        return SklearnSolver()
    if backend == "cuml":
        if device == "cpu":
            raise ConfigError("--backend cuml runs on a CUDA GPU only: use --backend torch or sklearn for cpu")
        from .cuml_solver import CumlSolver

        return CumlSolver()
    # "torch" and "auto": the batched torch solver; auto only differs in never failing on device
    from .torch_solver import TorchSolver

    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    elif device == "cuda" and not _cuda_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    solver = TorchSolver(device=device)
    log.debug("solver: %r", solver)
    return solver
