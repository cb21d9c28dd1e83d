"""Batched nonlinear least squares: Levenberg-Marquardt, robust losses, manifold retractions."""

from torch3dv.optim.levenberg_marquardt import LMOptions, LMResult, levenberg_marquardt
from torch3dv.optim.losses import cauchy_loss, get_loss, huber_loss, soft_l1_loss, trivial_loss
from torch3dv.optim.manifolds import retract_pose_left, so3_exp

__all__ = [
    "LMOptions",
    "LMResult",
    "cauchy_loss",
    "get_loss",
    "huber_loss",
    "levenberg_marquardt",
    "retract_pose_left",
    "so3_exp",
    "soft_l1_loss",
    "trivial_loss",
]
