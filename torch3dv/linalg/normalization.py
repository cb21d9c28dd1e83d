"""Weighted Hartley normalisation of point sets."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class NormalizedPoints(NamedTuple):
    """Result of :func:`normalize_points`.

    Attributes:
        points: normalised points (..., N, d).
        T: (..., d + 1, d + 1) similarity with ``to_homogeneous(points) = to_homogeneous(x) @ T^T``.
    """

    points: Tensor
    T: Tensor


def normalize_points(x: Tensor, weights: Tensor | None = None, eps: float = 1e-12) -> NormalizedPoints:
    """Translates the weighted centroid to the origin and scales the mean distance to sqrt(d).

    Args:
        x: points, shape (..., N, d).
        weights: optional non-negative weights (..., N); zero-weight points do not influence the transform.
        eps: guard for an empty or collapsed set (then the scale is 1/eps-bounded and stays finite).

    Returns:
        ``NormalizedPoints``. Differentiable in ``x`` and ``weights``.
    """
    d = x.shape[-1]
    if weights is None:
        weights = torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
    wsum = weights.sum(-1, keepdim=True).clamp_min(eps)  # (..., 1)
    mean = (weights[..., None] * x).sum(-2) / wsum  # (..., d)
    diff = x - mean[..., None, :]
    # sqrt(sum^2 + eps^2) keeps the gradient finite at zero
    dist = torch.sqrt((diff * diff).sum(-1) + eps * eps)
    mean_dist = (weights * dist).sum(-1, keepdim=True) / wsum
    scale = math.sqrt(d) / mean_dist.clamp_min(eps)  # (..., 1)
    xn = diff * scale[..., None]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    T = torch.cat(
        [
            torch.cat([scale[..., None] * eye, (-scale * mean)[..., :, None]], dim=-1),
            torch.cat([torch.zeros_like(mean)[..., None, :], torch.ones_like(scale)[..., None]], dim=-1),
        ],
        dim=-2,
    )
    return NormalizedPoints(xn, T)
