"""Homogeneous coordinates."""

from __future__ import annotations

import torch
from torch import Tensor


def to_homogeneous(x: Tensor) -> Tensor:
    """Appends a coordinate of one: (..., d) -> (..., d + 1)."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def from_homogeneous(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Divides by the last coordinate: (..., d + 1) -> (..., d).

    A last coordinate with magnitude below ``eps`` is clamped to ``±eps`` (sign kept, zero counts as positive)
    so the result stays finite; callers that care about points at infinity check the last coordinate first.
    """
    w = x[..., -1:]
    w = torch.where(w.abs() < eps, torch.where(w < 0, -eps, eps).to(w.dtype), w)
    return x[..., :-1] / w
