"""Nonlinear refinement of a relative pose on the Sampson error (5 degrees of freedom).

The pose ``cam2_from_cam1 = (R, t)`` with unit ``t`` is refined by batched Levenberg-Marquardt
(:func:`torch3dv.optim.levenberg_marquardt`) on the signed Sampson residuals, in pixels,

    r_i = x2_i^T F x1_i / sqrt(|(F x1_i)_12|^2 + |(F^T x2_i)_12|^2),   F = K2^-T [t]x R K1^-1.

The local step is ``delta = (omega, a, b)``: ``R <- exp([omega]x) R`` and ``t <- normalise(t + a u + b v)`` with
``(u, v)`` an orthonormal basis of the plane orthogonal to ``t`` (the unit sphere's tangent plane), so the
essential-matrix constraints hold exactly at every iterate; a linear fit followed by a projection onto the
essential manifold does not minimise the Sampson error, which is why this step exists.

The Jacobian is analytic (see ``_residuals_and_jacobian``) and checked against autograd in the tests. Gradients of the result with respect to the correspondences, intrinsics
and weights follow the implicit-function rule of the LM solver (``grad_mode="implicit"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch3dv.camera.pinhole import intrinsics_inverse
from torch3dv.linalg.skew import skew
from torch3dv.optim.levenberg_marquardt import LMOptions, levenberg_marquardt
from torch3dv.optim.manifolds import so3_exp
from torch3dv.solvers.essential import RelativePose


def _tangent_basis(t: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal (u, v) spanning the plane orthogonal to unit vectors t (..., 3)."""
    a = torch.zeros_like(t)
    idx = t.abs().argmin(dim=-1, keepdim=True)
    a = a.scatter(-1, idx, torch.ones_like(idx, dtype=t.dtype))
    u = torch.linalg.cross(t, a, dim=-1)
    u = u / u.norm(dim=-1, keepdim=True)
    v = torch.linalg.cross(t, u, dim=-1)
    return u, v


def _retract(params: tuple[Tensor, Tensor], delta: Tensor) -> tuple[Tensor, Tensor]:
    R, t = params
    u, v = _tangent_basis(t.detach())
    R_new = so3_exp(delta[..., :3]) @ R
    t_new = t + delta[..., 3:4] * u + delta[..., 4:5] * v
    return R_new, t_new / t_new.norm(dim=-1, keepdim=True)


def sampson_residuals(R: Tensor, t: Tensor, x1: Tensor, x2: Tensor, K1inv: Tensor, K2inv: Tensor) -> Tensor:
    """Signed Sampson residuals (M, N), pixels, of ``cam2_from_cam1 = (R, t)`` for pixels x1, x2 (M, N, 2)."""
    return _residuals_and_jacobian(R, t, x1, x2, K1inv, K2inv, jacobian=False)[0]


def _residuals_and_jacobian(R, t, x1, x2, K1inv, K2inv, jacobian: bool = True):
    """Residuals (M, N) and their Jacobian (M, N, 5) with respect to the local step of :func:`_retract`.

    With ``l = F a``, ``m = F^T b``, ``s = b^T F a`` and ``d = l1^2 + l2^2 + m1^2 + m2^2`` the residual is
    ``s / sqrt(d)``. For a matrix perturbation ``dF``, ``dr = ds / sqrt(d) - s dd / (2 d^1.5)`` with
    ``ds = b^T dF a`` and ``dd = 2 (l1 dl1 + l2 dl2 + m1 dm1 + m2 dm2)``, which is linear in ``dF``:
    ``dr = <dF, G>`` (Frobenius) with ``G = p a^T - q m'^T``, ``p = b / sqrt(d) - (s / d^1.5) l'``,
    ``q = (s / d^1.5) b`` and ``l' = (l1, l2, 0)``, ``m' = (m1, m2, 0)``. The five ``dF`` are
    ``K2^-T [t]x [e_j]x R K1^-1`` (rotation) and ``K2^-T [u]x R K1^-1``, ``K2^-T [v]x R K1^-1``
    (translation), so the Jacobian is one (M, N, 9) @ (M, 9, 5) product.
    """
    A = K2inv.transpose(-1, -2)
    F = A @ skew(t) @ R @ K1inv
    # reductions over size-3 axes are written out: torch's CPU sum over a short innermost axis is slow
    u1, v1 = x1[..., 0], x1[..., 1]
    u2, v2 = x2[..., 0], x2[..., 1]
    f = F.reshape(-1, 9, 1).unbind(1)  # entries (M, 1)
    l0 = f[0] * u1 + f[1] * v1 + f[2]
    l1 = f[3] * u1 + f[4] * v1 + f[5]
    l2 = f[6] * u1 + f[7] * v1 + f[8]
    m0 = f[0] * u2 + f[3] * v2 + f[6]
    m1 = f[1] * u2 + f[4] * v2 + f[7]
    s = l0 * u2 + l1 * v2 + l2
    d = (l0 * l0 + l1 * l1 + m0 * m0 + m1 * m1).clamp_min(torch.finfo(F.dtype).tiny)
    inv_sqrt = d.rsqrt()
    r = s * inv_sqrt
    if not jacobian:
        return r, None
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    u, v = _tangent_basis(t.detach())
    tx = skew(t)
    RK = R @ K1inv  # (M, 3, 3)
    dF = torch.stack([A @ tx @ skew(eye[j].expand_as(t)) @ RK for j in range(3)]
                     + [A @ skew(u) @ RK, A @ skew(v) @ RK], dim=1)  # (M, 5, 3, 3)
    c = r * inv_sqrt * inv_sqrt  # s / d^1.5
    p0, p1, p2 = u2 * inv_sqrt - c * l0, v2 * inv_sqrt - c * l1, inv_sqrt
    q0, q1, q2 = c * u2, c * v2, c
    G = torch.stack([p0 * u1 - q0 * m0, p0 * v1 - q0 * m1, p0,
                     p1 * u1 - q1 * m0, p1 * v1 - q1 * m1, p1,
                     p2 * u1 - q2 * m0, p2 * v1 - q2 * m1, p2.expand_as(u1)], dim=-1)  # (M, N, 9)
    return r, G @ dF.reshape(-1, 5, 9).transpose(-1, -2)


def refine_relative_pose(
    R: Tensor,
    t: Tensor,
    x1: Tensor,
    x2: Tensor,
    K1: Tensor,
    K2: Tensor,
    weights: Tensor | None = None,
    iterations: int = 10,
    loss: str = "trivial",
    loss_scale: float = 1.0,
) -> RelativePose:
    """Refines ``cam2_from_cam1`` by minimising the (weighted, optionally robust) Sampson error in pixels.

    Args:
        R: initial rotations (M, 3, 3). t: initial translation directions (M, 3) (normalised internally).
        x1, x2: pixels (M, N, 2) in image 1 and 2 (README, "Conventions").
        K1, K2: intrinsics (M, 3, 3).
        weights: optional non-negative weights (M, N) (0 = ignore the row, e.g. an outlier or padding).
        iterations: maximum LM iterations.
        loss, loss_scale: robust loss of :mod:`torch3dv.optim.losses` and its scale in pixels.

    Returns:
        :class:`torch3dv.solvers.essential.RelativePose` with the refined R, unit t; ``in_front`` is all True
        where the weight is positive (no cheirality test here), ``success`` is False where the LM could not
        evaluate a finite cost.
    """
    return refine_relative_pose_inv(R, t, x1, x2, intrinsics_inverse(K1), intrinsics_inverse(K2), weights,
                                    iterations, loss, loss_scale)


def refine_relative_pose_inv(
    R: Tensor,
    t: Tensor,
    x1: Tensor,
    x2: Tensor,
    K1inv: Tensor,
    K2inv: Tensor,
    weights: Tensor | None = None,
    iterations: int = 10,
    loss: str = "trivial",
    loss_scale: float | Tensor = 1.0,
) -> RelativePose:
    """:func:`refine_relative_pose` with inverse intrinsics ``K1inv, K2inv`` (M, 3, 3) instead of K1, K2."""
    if weights is None:
        weights = torch.ones(x1.shape[:-1], dtype=x1.dtype, device=x1.device)
    def residual_fn(params):
        return _residuals_and_jacobian(params[0], params[1], x1, x2, K1inv, K2inv)

    t0 = t / t.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (R, t, x1, x2, K1inv, K2inv, weights))
    res = levenberg_marquardt(residual_fn, (R, t0), _retract,
                              LMOptions(max_iterations=iterations, loss=loss, loss_scale=loss_scale,
                                        grad_mode="implicit" if needs_grad else "none"),
                              weights=weights)
    Rr, tr = res.params
    ok = torch.isfinite(res.cost) & torch.isfinite(Rr).flatten(-2).all(-1) & torch.isfinite(tr).all(-1)
    in_front = weights > 0
    return RelativePose(Rr, tr, in_front, in_front.sum(-1), ok)
