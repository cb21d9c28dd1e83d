"""Retractions for optimising on manifolds with :func:`torch3dv.optim.levenberg_marquardt.levenberg_marquardt`.

Poses are ``cam_from_world = (R, t)`` (see README, "Conventions"). The pose update used throughout torch3dv is
the *left* perturbation in the camera frame: a step ``(omega, rho)`` (rotation vector in radians, translation in
metres) changes a camera-frame point ``X_c = R X + t`` to ``exp([omega]x) X_c + rho``, i.e.

    R <- exp([omega]x) R,        t <- exp([omega]x) t + rho,

whose first-order effect on ``X_c`` is ``d X_c = -[X_c]x omega + rho``. It agrees with the SE(3) exponential to
first order, which is all Gauss-Newton / LM needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch3dv.linalg.skew import skew


def so3_exp(omega: Tensor) -> Tensor:
    """Rodrigues' formula with a Taylor expansion near zero (finite values and gradients at omega = 0).

    Args:
        omega: rotation vectors (..., 3), radians.

    Returns:
        rotation matrices (..., 3, 3).
    """
    theta2 = (omega * omega).sum(-1)
    small = theta2 < 1e-8 if omega.dtype == torch.float64 else theta2 < 1e-4
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe2)
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0, (1.0 - torch.cos(theta)) / safe2)
    W = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + a[..., None, None] * W + b[..., None, None] * (W @ W)


def retract_pose_left(params: tuple[Tensor, Tensor], delta: Tensor) -> tuple[Tensor, Tensor]:
    """Left retraction of a ``cam_from_world`` pose.

    Args:
        params: ``(R (*B, 3, 3), t (*B, 3))``.
        delta: (*B, 6) step ``(omega, rho)``: rotation vector (radians) then translation (metres), both in the
            camera frame.

    Returns:
        the updated ``(R, t)``.
    """
    R, t = params
    dR = so3_exp(delta[..., :3])
    return dR @ R, (dR @ t[..., None])[..., 0] + delta[..., 3:]
