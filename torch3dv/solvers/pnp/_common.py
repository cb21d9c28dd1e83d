"""Result types and shared helpers of the PnP solvers (input checks, planarity, cheirality, 3x3 algebra)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_intrinsics, check_same_device_dtype, prepare_correspondences
from torch3dv.camera.pinhole import pixels_to_normalized


class AbsolutePose(NamedTuple):
    """A camera pose from 2D-3D correspondences.

    Attributes:
        R: ``cam_from_world`` rotation (*B, 3, 3); identity where ``success`` is False.
        t: ``cam_from_world`` translation (*B, 3), metres; zeros where ``success`` is False.
        success: (*B,) bool.
    """

    R: Tensor
    t: Tensor
    success: Tensor


class PnPSolutions(NamedTuple):
    """Up to S candidate poses per problem (minimal solvers).

    Attributes:
        R: (*B, S, 3, 3) ``cam_from_world`` rotations; identity for invalid slots.
        t: (*B, S, 3) translations, metres; zeros for invalid slots.
        valid: (*B, S) bool; valid solutions come first.
        success: (*B,) bool, ``valid.any(-1)``.
    """

    R: Tensor
    t: Tensor
    valid: Tensor
    success: Tensor


class PreparedPnP(NamedTuple):
    xn: Tensor  # (*B, N, 2) normalised image coordinates (zeros in unused rows)
    X: Tensor  # (*B, N, 3) world points (zeros in unused rows)
    w: Tensor  # (*B, N) weights, zero for unused rows
    ok: Tensor  # (*B,) finite inputs and intrinsics
    batch: torch.Size


def prepare_pnp(x: Tensor, X: Tensor, K: Tensor, weights: Tensor | None, mask: Tensor | None) -> PreparedPnP:
    """Validates (x, X, K, weights, mask) and returns normalised coordinates with padding zeroed.

    Raises:
        ValueError: caller errors (shapes, dtypes, devices).
    """
    corr = prepare_correspondences({"x": x, "X": X}, {"x": 2, "X": 3}, weights, mask)
    check_intrinsics(K)
    check_same_device_dtype({"x": x, "K": K})
    batch = x.shape[:-2]
    try:
        bK = torch.broadcast_shapes(K.shape[:-2], batch)
    except RuntimeError as e:
        raise ValueError(f"K batch shape {tuple(K.shape[:-2])} does not broadcast to {tuple(batch)}") from e
    if bK != batch:
        raise ValueError(f"K batch shape {tuple(K.shape[:-2])} does not broadcast to {tuple(batch)}")
    xc, Xc = corr.points
    K_ok = torch.isfinite(K).flatten(-2).all(-1) & (K[..., 0, 0] != 0) & (K[..., 1, 1] != 0)
    K_ok = K_ok.expand(batch)
    # a non-finite or singular K is replaced by the identity so arithmetic stays finite
    eye = torch.eye(3, dtype=K.dtype, device=K.device)
    Ks = torch.where(K_ok.reshape(K_ok.shape + (1, 1)), K.expand(*batch, 3, 3), eye)
    xn = pixels_to_normalized(xc, Ks)
    xn = torch.where(corr.weights[..., None] != 0, xn, torch.zeros_like(xn))
    return PreparedPnP(xn, Xc, corr.weights, corr.finite & K_ok, batch)


def check_points_shape(x: Tensor, X: Tensor) -> None:
    if x.ndim < 2 or X.ndim < 2:
        raise ValueError(f"x must be (*B, N, 2) and X (*B, N, 3), got {tuple(x.shape)} and {tuple(X.shape)}")


def weighted_moments(X: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted centroid (*B, 3) and ascending eigen-decomposition of the weighted covariance.

    Returns:
        (centroid, evals (*B, 3) ascending, evecs (*B, 3, 3) columns).
    """
    wsum = w.sum(-1).clamp_min(torch.finfo(X.dtype).tiny)
    c = (w[..., None] * X).sum(-2) / wsum[..., None]
    D = X - c[..., None, :]
    C = (D * w[..., None]).transpose(-1, -2) @ D / wsum[..., None, None]
    C = 0.5 * (C + C.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(C)
    return c, evals, evecs


def planarity_tolerance(dtype: torch.dtype) -> float:
    """Relative smallest-eigenvalue threshold below which a world point set counts as planar."""
    return max(1e-8, 100 * torch.finfo(dtype).eps)


def depths_positive(R: Tensor, t: Tensor, X: Tensor, w: Tensor) -> Tensor:
    """(*B,) True where every used point (w != 0) has positive depth in the camera ``(R, t)``."""
    z = (X @ R[..., 2, :, None])[..., 0] + t[..., 2:3]
    return ((z > 0) | (w == 0)).all(-1)


def reprojection_sq(R: Tensor, t: Tensor, X: Tensor, xn: Tensor, w: Tensor) -> Tensor:
    """Weighted mean squared reprojection error in normalised coordinates (*B,)."""
    Xc = X @ R.transpose(-1, -2) + t[..., None, :]
    z = Xc[..., 2:]
    z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    e = ((Xc[..., :2] / z - xn) ** 2).sum(-1)
    return (w * e).sum(-1) / w.sum(-1).clamp_min(torch.finfo(X.dtype).tiny)


def finalize(R: Tensor, t: Tensor, success: Tensor) -> AbsolutePose:
    """Replaces failed problems by (I, 0) and requires finite outputs for success."""
    success = success & torch.isfinite(R).flatten(-2).all(-1) & torch.isfinite(t).all(-1)
    eye = torch.eye(3, dtype=R.dtype, device=R.device).expand_as(R)
    R = torch.where(success[..., None, None], R, eye)
    t = torch.where(success[..., None], t, torch.zeros_like(t))
    return AbsolutePose(R, t, success)


def det3(A: Tensor) -> Tensor:
    """Determinant of (..., 3, 3) matrices in closed form."""
    return (A[..., 0, 0] * (A[..., 1, 1] * A[..., 2, 2] - A[..., 1, 2] * A[..., 2, 1])
            - A[..., 0, 1] * (A[..., 1, 0] * A[..., 2, 2] - A[..., 1, 2] * A[..., 2, 0])
            + A[..., 0, 2] * (A[..., 1, 0] * A[..., 2, 1] - A[..., 1, 1] * A[..., 2, 0]))


def adj3(A: Tensor) -> Tensor:
    """Adjugate (transposed cofactor matrix) of (..., 3, 3) matrices: ``A @ adj(A) = det(A) I``."""
    r0, r1, r2 = A[..., 0, :], A[..., 1, :], A[..., 2, :]
    c0 = torch.linalg.cross(r1, r2, dim=-1)
    c1 = torch.linalg.cross(r2, r0, dim=-1)
    c2 = torch.linalg.cross(r0, r1, dim=-1)
    return torch.stack([c0, c1, c2], dim=-1)
