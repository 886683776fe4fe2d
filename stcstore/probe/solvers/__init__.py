"""L1 logistic-regression solvers behind one interface: sklearn (CPU reference), torch, cuML.

`get_solver` picks a backend when it is called (never at import): 'auto' is the batched torch
solver, on CUDA when a GPU is there, else on the CPU, where it is also the fastest correct path
we measured (benchmarks/probe_speed.py: the default search over the mean pooling of MiniLM on
all 12,808 Rotten Tomatoes rows ran 7 to 9.5 times faster than with sklearn, val accuracy within
0.5 pt, one thread each; the README's table has the current figures).
"""

from __future__ import annotations

import logging
from typing import Optional

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


def get_solver(backend: str = "auto", device: str = "auto", memory_budget: Optional[int] = None) -> Solver:
    """The solver for `backend` on `device` ('auto': torch, on CUDA if present, else on the CPU).

    `memory_budget`: bytes a torch fit may use on its device (None: a share of what is free).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {backend!r}: choose from {','.join(BACKENDS)}")
    if device not in DEVICES:
        raise ConfigError(f"unknown --device {device!r}: choose from {','.join(DEVICES)}")
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
    solver = TorchSolver(device=device, memory_budget=memory_budget)
    log.debug("solver: %r", solver)
    return solver
