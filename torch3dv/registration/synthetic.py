"""Synthetic registration problems with ground truth (for tests, examples and benchmarks).

The shape is a closed, bumpy, anisotropic blob (a sphere with a few harmonic bumps, squashed to an ellipsoid),
about 1 m across, sampled uniformly in direction. The target is the source moved by a known
``target_from_source = (R, t)``, optionally with its own independent sampling and noise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.geometry.rotations import random_rotation


class RegistrationScene(NamedTuple):
    """source (B, N, 3), target (B, M, 3) points in metres; ``target ~ R source + t`` with R (B, 3, 3), t (B, 3)."""

    source: Tensor
    target: Tensor
    R: Tensor
    t: Tensor


def blob_surface(directions: Tensor) -> Tensor:
    """Points (..., 3) of the blob surface along unit ``directions`` (..., 3)."""
    u = directions
    r = 1.0 + 0.25 * torch.sin(3 * u[..., 0] + 1.0) * torch.cos(2 * u[..., 1]) + 0.12 * torch.sin(5 * u[..., 2])
    axes = torch.tensor([0.5, 0.35, 0.25], dtype=u.dtype, device=u.device)
    return u * r[..., None] * axes


def _sphere(B: int, N: int, g: torch.Generator) -> Tensor:
    u = torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    return u / u.norm(dim=-1, keepdim=True)


def blob_pair(
    batch: int = 1,
    num_points: int = 2000,
    max_angle: float = 0.35,
    max_translation: float = 0.1,
    noise: float = 0.0,
    same_samples: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> RegistrationScene:
    """A batch of blob pairs related by random rigid motions.

    Args:
        batch: pairs.
        num_points: points per cloud.
        max_angle: rotation angle drawn uniformly in [0, max_angle] (radians) about a random axis.
        max_translation: translation drawn uniformly in a ball of this radius (metres).
        noise: std-dev of Gaussian noise (metres) added to both clouds.
        same_samples: target row i is the moved source row i (exact correspondences); otherwise the target
            is an independent sampling of the surface.
        seed: random seed.
    """
    g = torch.Generator().manual_seed(seed)
    X = blob_surface(_sphere(batch, num_points, g))
    Xt = X if same_samples else blob_surface(_sphere(batch, num_points, g))
    R = random_rotation(batch, generator=g, max_angle=max_angle)
    d = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    t = d * max_translation * torch.rand(batch, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    Y = Xt @ R.transpose(-1, -2) + t[:, None]
    if noise > 0:
        X = X + noise * torch.randn(X.shape, generator=g, dtype=torch.float64)
        Y = Y + noise * torch.randn(Y.shape, generator=g, dtype=torch.float64)
    return RegistrationScene(*(v.to(dtype=dtype, device=device) for v in (X, Y, R, t)))
