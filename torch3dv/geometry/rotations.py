"""Rotation conversions. Rotation matrices (..., 3, 3) are the API currency; other parametrisations only
enter and leave through the explicitly named converters below (thin wrappers over roma)."""

from __future__ import annotations

import roma
import torch
from torch import Tensor


def quat_xyzw_to_matrix(q: Tensor) -> Tensor:
    """Quaternion (x, y, z, w) -> rotation matrix. ``q`` (..., 4) is normalised first. Returns (..., 3, 3)."""
    return roma.unitquat_to_rotmat(roma.quat_normalize(q))


def quat_wxyz_to_matrix(q: Tensor) -> Tensor:
    """Quaternion (w, x, y, z) -> rotation matrix. ``q`` (..., 4) is normalised first. Returns (..., 3, 3)."""
    return quat_xyzw_to_matrix(roma.quat_wxyz_to_xyzw(q))


def matrix_to_quat_xyzw(R: Tensor) -> Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (x, y, z, w) (..., 4), sign chosen with w >= 0."""
    q = roma.rotmat_to_unitquat(R)
    return torch.where(q[..., 3:] < 0, -q, q)


def matrix_to_quat_wxyz(R: Tensor) -> Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (w, x, y, z) (..., 4), sign chosen with w >= 0."""
    return roma.quat_xyzw_to_wxyz(matrix_to_quat_xyzw(R))


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rotation vector (axis * angle in radians) (..., 3) -> rotation matrix (..., 3, 3) (Rodrigues)."""
    return roma.rotvec_to_rotmat(rotvec)


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Rotation matrix (..., 3, 3) -> rotation vector (axis * angle, radians, angle in [0, pi]) (..., 3)."""
    return roma.rotmat_to_rotvec(R)


def project_to_rotation(M: Tensor) -> Tensor:
    """Closest rotation matrix (Frobenius norm, det = +1) to each (..., 3, 3) matrix (special Procrustes)."""
    return roma.special_procrustes(M)


def random_rotation(
    *shape: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    max_angle: float | None = None,
) -> Tensor:
    """Random rotations (*shape, 3, 3).

    Args:
        shape: batch shape.
        generator: optional torch generator for reproducibility.
        max_angle: if given, the rotation angle is uniform in [0, max_angle] (radians) around a uniform axis;
            otherwise rotations are uniform on SO(3) (Haar measure).
    """
    if max_angle is None:
        q = torch.randn(*shape, 4, generator=generator, dtype=dtype, device=device)
        return quat_xyzw_to_matrix(q)
    axis = torch.randn(*shape, 3, generator=generator, dtype=dtype, device=device)
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    angle = torch.rand(*shape, 1, generator=generator, dtype=dtype, device=device) * max_angle
    return axis_angle_to_matrix(axis * angle)
