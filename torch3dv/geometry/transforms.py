"""Rigid and similarity transforms as (R, t) / (s, R, t) tuples.

A rigid transform ``b_from_a = (R, t)`` maps a point ``X_a`` in frame a to ``X_b = R @ X_a + t``; a similarity
``(s, R, t)`` maps ``X_b = s * R @ X_a + t``. Composition reads right to left like matrices:
``c_from_a = compose_rigid(c_from_b, b_from_a)``. See README, "Conventions".
"""

from __future__ import annotations

import torch
from torch import Tensor


def transform_points(R: Tensor, t: Tensor, X: Tensor) -> Tensor:
    """Applies ``b_from_a`` to points.

    Args:
        R: rotations (*B, 3, 3).
        t: translations (*B, 3).
        X: points in frame a, (*B, N, 3).

    Returns:
        points in frame b, (*B, N, 3).
    """
    return X @ R.transpose(-1, -2) + t[..., None, :]


def transform_points_sim(s: Tensor, R: Tensor, t: Tensor, X: Tensor) -> Tensor:
    """Applies the similarity ``X_b = s R X_a + t``; ``s`` (*B,), R (*B, 3, 3), t (*B, 3), X (*B, N, 3)."""
    return s[..., None, None] * (X @ R.transpose(-1, -2)) + t[..., None, :]


def compose_rigid(R_cb: Tensor, t_cb: Tensor, R_ba: Tensor, t_ba: Tensor) -> tuple[Tensor, Tensor]:
    """``c_from_a = c_from_b ∘ b_from_a``. All R (*B, 3, 3), t (*B, 3). Returns (R_ca, t_ca)."""
    return R_cb @ R_ba, (R_cb @ t_ba[..., None])[..., 0] + t_cb


def invert_rigid(R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``a_from_b`` from ``b_from_a``: (R^T, -R^T t). R (*B, 3, 3), t (*B, 3)."""
    Rt = R.transpose(-1, -2)
    return Rt, -(Rt @ t[..., None])[..., 0]


def compose_sim(
    s_cb: Tensor, R_cb: Tensor, t_cb: Tensor, s_ba: Tensor, R_ba: Tensor, t_ba: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``c_from_a = c_from_b ∘ b_from_a`` for similarities. s (*B,), R (*B, 3, 3), t (*B, 3)."""
    return s_cb * s_ba, R_cb @ R_ba, s_cb[..., None] * (R_cb @ t_ba[..., None])[..., 0] + t_cb


def invert_sim(s: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse similarity: (1/s, R^T, -R^T t / s)."""
    Rt = R.transpose(-1, -2)
    return 1.0 / s, Rt, -(Rt @ t[..., None])[..., 0] / s[..., None]


def rigid_to_matrix(R: Tensor, t: Tensor) -> Tensor:
    """(R (*B, 3, 3), t (*B, 3)) -> homogeneous (*B, 4, 4)."""
    top = torch.cat([R, t[..., :, None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def matrix_to_rigid(T: Tensor) -> tuple[Tensor, Tensor]:
    """Homogeneous (*B, 4, 4) or (*B, 3, 4) -> (R (*B, 3, 3), t (*B, 3))."""
    return T[..., :3, :3], T[..., :3, 3]


def relative_pose(R1: Tensor, t1: Tensor, R2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
    """``cam2_from_cam1`` from two ``cam_from_world`` poses: cam2_from_world ∘ (cam1_from_world)^-1."""
    Ri, ti = invert_rigid(R1, t1)
    return compose_rigid(R2, t2, Ri, ti)


def camera_center(R: Tensor, t: Tensor) -> Tensor:
    """World position (*B, 3) of a camera with pose ``cam_from_world = (R, t)``: C = -R^T t."""
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def projection_matrix(K: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """P = K [R | t], (*B, 3, 4), mapping homogeneous world points to homogeneous pixels."""
    return K @ torch.cat([R, t[..., :, None]], dim=-1)
