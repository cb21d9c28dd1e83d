"""Nonlinear refinement of a ``cam_from_world`` pose by minimising the pixel reprojection error.

The cost is ``0.5 * sum_i w_i * rho(|pi(K, R X_i + t) - x_i|^2)`` (pixels), minimised with the batched
Levenberg-Marquardt of :mod:`torch3dv.optim.levenberg_marquardt` over the left perturbation
``(omega, rho)`` of :func:`torch3dv.optim.manifolds.retract_pose_left`. The Jacobian is analytic: for a
camera-frame point ``X_c = (X, Y, Z)`` the projection derivative is

    d u / d X_c = [fx / Z, s / Z, -(fx X + s Y) / Z^2],     d v / d X_c = [0, fy / Z, -fy Y / Z^2],

and ``d X_c = -[X_c]x omega + rho``, so ``d u / d omega = X_c x (d u / d X_c)``.

Gradients (default): implicit differentiation at the optimum (one Gauss-Newton step with autograd from the
detached optimum, see :mod:`torch3dv.optim.levenberg_marquardt`). They flow to ``x``, ``X``, ``K`` and
``weights``, not to the initial pose. They are exact when the reprojection residuals vanish at the optimum and
a Gauss-Newton approximation of the implicit-function-theorem gradient otherwise.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_shape
from torch3dv.optim.levenberg_marquardt import LMOptions, levenberg_marquardt
from torch3dv.optim.manifolds import retract_pose_left
from torch3dv.solvers.pnp._common import AbsolutePose, depths_positive, finalize, prepare_pnp


def reprojection_residuals(R: Tensor, t: Tensor, X: Tensor, x: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel reprojection residuals and their Jacobian for the left pose perturbation.

    Args:
        R, t: ``cam_from_world`` (*B, 3, 3), (*B, 3).
        X: world points (*B, N, 3), metres.
        x: observed pixels (*B, N, 2).
        K: intrinsics (*B, 3, 3) (broadcastable).

    Returns:
        ``(r, J)``: residuals (*B, N, 2) (projection minus observation, pixels) and the Jacobian
        (*B, N, 2, 6) with respect to ``(omega, rho)``. Points with |Z| < 1e-12 are projected with Z = ±1e-12.
    """
    Xc = X @ R.transpose(-1, -2) + t[..., None, :]
    Z = Xc[..., 2]
    tiny = 1e-12
    Z = torch.where(Z.abs() < tiny, torch.where(Z < 0, -tiny, tiny).to(Z.dtype), Z)
    iz = 1.0 / Z
    a, b = Xc[..., 0] * iz, Xc[..., 1] * iz
    fx, s, cx = K[..., 0, 0, None], K[..., 0, 1, None], K[..., 0, 2, None]
    fy, cy = K[..., 1, 1, None], K[..., 1, 2, None]
    u = fx * a + s * b + cx
    v = fy * b + cy
    r = torch.stack([u - x[..., 0], v - x[..., 1]], dim=-1)
    zero = torch.zeros_like(iz)
    du = torch.stack([fx * iz, s * iz, -(fx * a + s * b) * iz], dim=-1)
    dv = torch.stack([zero, fy * iz, -fy * b * iz], dim=-1)
    dX = torch.stack([du, dv], dim=-2)  # (*B, N, 2, 3)
    domega = torch.linalg.cross(Xc[..., None, :].expand_as(dX), dX, dim=-1)
    return r, torch.cat([domega, dX], dim=-1)


def refine_pnp(
    R: Tensor,
    t: Tensor,
    x: Tensor,
    X: Tensor,
    K: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    iterations: int = 10,
    loss: str = "trivial",
    loss_scale: float = 1.0,
    options: LMOptions | None = None,
) -> AbsolutePose:
    """Refines ``cam_from_world`` poses by batched LM on the pixel reprojection error.

    Args:
        R: initial rotations (*B, 3, 3) (``cam_from_world``).
        t: initial translations (*B, 3), metres.
        x: observed pixels (*B, N, 2) (pixel (0, 0) is the centre of the top-left pixel).
        X: world points (*B, N, 3), metres.
        K: intrinsics (*B, 3, 3) (or broadcastable, e.g. (3, 3)).
        weights: optional non-negative per-point weights (*B, N).
        mask: optional bool (*B, N); False rows are padding and may contain NaN.
        iterations: maximum LM iterations (each problem stops as soon as it converges).
        loss: robust loss on the per-point squared pixel error (``"trivial"``, ``"huber"``, ``"soft_l1"``,
            ``"cauchy"``), see :mod:`torch3dv.optim.losses`.
        loss_scale: robust loss threshold in pixels.
        options: full :class:`LMOptions`; when given, ``iterations``, ``loss`` and ``loss_scale`` are ignored
            (``block_size`` is always 2).

    Returns:
        :class:`AbsolutePose` ``(R, t, success)``; ``success`` requires a finite initial pose, at least 3 used
        points, a finite final cost and every used point in front of the refined camera. Failed problems
        return ``(I, 0)``.

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    prep = prepare_pnp(x, X, K, weights, mask)
    check_shape(R, "R", (3, 3), "(*B, 3, 3)")
    check_shape(t, "t", (3,), "(*B, 3)")
    check_float(R, "R")
    check_float(t, "t")
    if R.shape[:-2] != prep.batch or t.shape[:-1] != prep.batch:
        raise ValueError(f"R {tuple(R.shape)} and t {tuple(t.shape)} must have the batch shape {tuple(prep.batch)}")
    if R.dtype != x.dtype or t.dtype != x.dtype or R.device != x.device or t.device != x.device:
        raise ValueError("R, t must have the dtype and device of x")
    opt = options or LMOptions(max_iterations=iterations, loss=loss, loss_scale=loss_scale)
    opt = replace(opt, block_size=2)
    pose_ok = torch.isfinite(R).flatten(-2).all(-1) & torch.isfinite(t).all(-1)
    ok = prep.ok & pose_ok
    # failed problems run on a harmless stand-in (identity pose) and are reported as failures
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    R0 = torch.where(ok[..., None, None], R, eye)
    t0 = torch.where(ok[..., None], t, torch.tensor([0.0, 0.0, 1.0], dtype=t.dtype, device=t.device))
    w = torch.where(ok[..., None], prep.w, torch.zeros_like(prep.w))
    xs, Xs = _clean(x, prep.w), _clean(X, prep.w)
    batch = prep.batch
    Kb = K.expand(*batch, 3, 3)

    def residual_fn(p):
        r, J = reprojection_residuals(p[0], p[1], Xs, xs, Kb)
        return r.reshape(*batch, -1), J.reshape(*batch, -1, 6)

    res = levenberg_marquardt(residual_fn, (R0, t0), retract_pose_left, opt, weights=w)
    Rf, tf = res.params
    enough = (w != 0).sum(-1) >= 3
    success = ok & enough & torch.isfinite(res.cost) & depths_positive(Rf, tf, Xs, w)
    return finalize(Rf, tf, success)


def _clean(v: Tensor, w: Tensor) -> Tensor:
    return torch.where(w[..., None] != 0, v, torch.zeros((), dtype=v.dtype, device=v.device))
