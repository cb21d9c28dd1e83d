"""Pinhole intrinsics. Pixel convention: the centre of the top-left pixel is (0, 0) (README, "Conventions")."""

from __future__ import annotations

import torch
from torch import Tensor


def intrinsics_matrix(fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor, skew: Tensor | None = None) -> Tensor:
    """Builds K (*B, 3, 3) from focal lengths and principal point (pixels), each (*B,)."""
    z = torch.zeros_like(fx)
    o = torch.ones_like(fx)
    s = z if skew is None else skew
    return torch.stack([fx, s, cx, z, fy, cy, z, z, o], dim=-1).reshape(*fx.shape, 3, 3)


def intrinsics_inverse(K: Tensor) -> Tensor:
    """Closed-form inverse of upper-triangular intrinsics (*B, 3, 3) (differentiable, no LU)."""
    fx, s, cx = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    fy, cy = K[..., 1, 1], K[..., 1, 2]
    z = torch.zeros_like(fx)
    o = torch.ones_like(fx)
    return torch.stack(
        [1 / fx, -s / (fx * fy), (s * cy - cx * fy) / (fx * fy), z, 1 / fy, -cy / fy, z, z, o], dim=-1
    ).reshape(K.shape)


def pixels_to_normalized(x: Tensor, K: Tensor) -> Tensor:
    """Pixels (*B, N, 2) -> normalised image coordinates (*B, N, 2) (z = 1 plane) with K (*B, 3, 3)."""
    fx, s, cx = K[..., 0, 0, None], K[..., 0, 1, None], K[..., 0, 2, None]
    fy, cy = K[..., 1, 1, None], K[..., 1, 2, None]
    y = (x[..., 1] - cy) / fy
    return torch.stack([(x[..., 0] - cx - s * y) / fx, y], dim=-1)


def normalized_to_pixels(xn: Tensor, K: Tensor) -> Tensor:
    """Normalised coordinates (*B, N, 2) -> pixels (*B, N, 2) with K (*B, 3, 3)."""
    fx, s, cx = K[..., 0, 0, None], K[..., 0, 1, None], K[..., 0, 2, None]
    fy, cy = K[..., 1, 1, None], K[..., 1, 2, None]
    return torch.stack([fx * xn[..., 0] + s * xn[..., 1] + cx, fy * xn[..., 1] + cy], dim=-1)


def project_pinhole(X_cam: Tensor, K: Tensor, eps: float = 1e-12) -> Tensor:
    """Projects camera-frame points (*B, N, 3) (OpenCV axes, metres) to pixels (*B, N, 2).

    Points with |z| < eps are divided by ±eps (finite output); check depth yourself for cheirality.
    """
    z = X_cam[..., 2:]
    z = torch.where(z.abs() < eps, torch.where(z < 0, -eps, eps).to(z.dtype), z)
    return normalized_to_pixels(X_cam[..., :2] / z, K)


def unproject_pinhole(x: Tensor, K: Tensor, depth: Tensor | None = None) -> Tensor:
    """Back-projects pixels (*B, N, 2) to camera-frame points (*B, N, 3).

    Args:
        x: pixels.
        K: intrinsics (*B, 3, 3).
        depth: optional z-depth (*B, N) in metres; without it the result lies on the z = 1 plane.
    """
    xn = pixels_to_normalized(x, K)
    X = torch.cat([xn, torch.ones_like(xn[..., :1])], dim=-1)
    return X if depth is None else X * depth[..., None]


def bearing_vectors(x: Tensor, K: Tensor) -> Tensor:
    """Unit-norm viewing rays (*B, N, 3) in the camera frame for pixels (*B, N, 2)."""
    X = unproject_pinhole(x, K)
    return X / X.norm(dim=-1, keepdim=True)
