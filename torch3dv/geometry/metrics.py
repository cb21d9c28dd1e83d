"""Error metrics between poses. Angles are returned in radians (degrees only in reports)."""

from __future__ import annotations

import torch
from torch import Tensor


def rotation_angle(R: Tensor) -> Tensor:
    """Rotation angle in [0, pi] of (..., 3, 3) rotation matrices, robust near 0 and pi.

    Uses atan2(|axis part|, cos part) rather than acos(trace) so that small angles keep full precision.
    """
    tr = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    v = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    return torch.atan2(0.5 * v.norm(dim=-1), 0.5 * (tr - 1.0))


def rotation_error(R_est: Tensor, R_gt: Tensor) -> Tensor:
    """Geodesic angle (radians) between rotations (..., 3, 3): angle of R_est^T R_gt."""
    return rotation_angle(R_est.transpose(-1, -2) @ R_gt)


def angle_between_vectors(a: Tensor, b: Tensor, sign_invariant: bool = False, eps: float = 1e-12) -> Tensor:
    """Angle (radians) between vectors (..., 3).

    Args:
        sign_invariant: if True, returns min(angle, pi - angle) (for directions known up to sign, e.g. the
            translation of an essential matrix before cheirality).
    """
    cross = torch.linalg.cross(a, b, dim=-1).norm(dim=-1)
    dot = (a * b).sum(-1)
    ang = torch.atan2(cross, dot)
    if sign_invariant:
        ang = torch.minimum(ang, torch.pi - ang)
    return ang


def translation_direction_error(t_est: Tensor, t_gt: Tensor, sign_invariant: bool = False) -> Tensor:
    """Angle (radians) between translation directions (..., 3); scale-free (relative pose)."""
    return angle_between_vectors(t_est, t_gt, sign_invariant=sign_invariant)


def pose_auc(errors: Tensor, thresholds: tuple[float, ...] | list[float]) -> list[float]:
    """Area under the recall curve of pose errors up to each threshold, normalised to [0, 1].

    Args:
        errors: (M,) errors (same unit as thresholds, typically degrees of max(R err, t err)); NaN or inf
            counts as a failure.
        thresholds: upper integration limits.

    Returns:
        one AUC per threshold (the SuperGlue / LightGlue definition).
    """
    e = errors.detach().double().flatten()
    e = torch.where(torch.isfinite(e), e, torch.full_like(e, float("inf")))
    e, _ = torch.sort(e)
    n = e.numel()
    recall = torch.arange(1, n + 1, dtype=torch.float64) / max(n, 1)
    e = torch.cat([torch.zeros(1, dtype=torch.float64), e])
    recall = torch.cat([torch.zeros(1, dtype=torch.float64), recall])
    out = []
    for th in thresholds:
        last = int(torch.searchsorted(e, torch.tensor(th, dtype=torch.float64), right=False))
        xs = torch.cat([e[:last], torch.tensor([th], dtype=torch.float64)])
        ys = torch.cat([recall[:last], recall[last - 1: last]])
        out.append(float(torch.trapezoid(ys, xs) / th))
    return out
