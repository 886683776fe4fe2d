"""The torch solver's data: the design on its device, and the passes over it every engine shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import DataError
from .base import n_outputs

log = logging.getLogger(__name__)


@dataclass
class _Data:
    """The design shared by every problem: X, labels and the constants the dual point needs."""

    X: torch.Tensor        # (n, d) float32
    y: torch.Tensor        # (n,) int64
    Y: torch.Tensor        # (n, K) float32: one-hot, or y itself for one logit
    K: int                 # number of logits
    colsum: torch.Tensor   # (d,) float64, X^T 1
    XtY: torch.Tensor      # (K, d) float64, (X^T Y)^T
    ybar: torch.Tensor     # (K,) float64, mean of Y's columns

    @property
    def binary(self) -> bool:
        return self.K == 1



def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _to_tensor(X: Any, device: torch.device) -> torch.Tensor:
    """X as a float32 tensor on `device`; CuPy arrays arrive through DLPack without a copy."""
    if isinstance(X, torch.Tensor):
        t = X
    elif isinstance(X, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    elif hasattr(X, "__dlpack__"):
        t = torch.from_dlpack(X)
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(X), dtype=np.float32))
    return t.to(device=device, dtype=torch.float32).contiguous()


def _prepare(X: Any, y: np.ndarray, n_classes: int, device: torch.device) -> _Data:
    Xt = _to_tensor(X, device)
    if not all(bool(torch.isfinite(c).all()) for c in Xt.split(1024)):
        raise DataError("X has NaN or infinite values (in float32): check the stored activations")
    yt = torch.as_tensor(y, device=device)
    K = n_outputs(n_classes)
    Y = yt[:, None].float() if K == 1 else F.one_hot(yt, n_classes).float()
    # row chunks: a float64 copy of the whole X would double the probe's peak memory
    colsum = sum(c.sum(0, dtype=torch.float64) for c in Xt.split(1024))
    XtY = (Y.T @ Xt).double()
    return _Data(X=Xt, y=yt, Y=Y, K=K, colsum=colsum, XtY=XtY, ybar=Y.double().mean(0))


def _prior_intercept(data: _Data) -> torch.Tensor:
    """The intercept of the all-zero model: a good start for the smallest C."""
    p = data.ybar.clamp(1e-12, 1 - 1e-12)
    if data.binary:
        return torch.log(p / (1 - p)).float()
    lp = torch.log(p)
    return (lp - lp.mean()).float()



def _logits(data: _Data, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits (n, P, K) of P problems with one matmul against the shared X."""
    P, K, d = W.shape
    return (data.X @ W.reshape(P * K, d).T).view(-1, P, K) + b


def _probs_loss(data: _Data, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (n, P, K) and summed loss per problem (P,) in float64."""
    if data.binary:
        z = Z[..., 0]
        loss = (F.softplus(z) - data.Y * z).sum(0, dtype=torch.float64)
        return torch.sigmoid(z)[..., None], loss
    lse = torch.logsumexp(Z, dim=-1)
    zy = Z.gather(-1, data.y[:, None, None].expand(-1, Z.shape[1], 1))[..., 0]
    loss = (lse - zy).sum(0, dtype=torch.float64)
    return torch.exp(Z - lse[..., None]), loss


def _xt(data: _Data, R: torch.Tensor) -> torch.Tensor:
    """X^T R for residuals (n, P, K): (P, K, d), again one matmul."""
    n, P, K = R.shape
    return (R.reshape(n, P * K).T @ data.X).view(P, K, -1)



def _loss64(data: _Data, Z: torch.Tensor) -> torch.Tensor:
    """Per-row losses (n, p) in float64 from float64 logits (n, p, K)."""
    if data.binary:
        z = Z[..., 0]
        return F.softplus(z) - data.Y.double() * z
    zy = Z.gather(-1, data.y[:, None, None].expand(-1, Z.shape[1], 1))[..., 0]
    return torch.logsumexp(Z, dim=-1) - zy



def _soft(x: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (x.abs() - thr).clamp(min=0)

