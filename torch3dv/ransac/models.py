"""Built-in robust models for :func:`torch3dv.ransac.estimator.ransac`.

Each model wires a minimal solver, a residual (squared, in pixels or metres), a weighted non-minimal refit and
a polish step. The polish of the epipolar and homography models is iteratively reweighted least squares: a
linear solver whose rows are weighted by 1 / (the first-order scale of their algebraic error), so that at its
fixed point it minimises the Sampson error (E, F) or the one-way transfer error (H) in pixels. The PnP model
polishes with Levenberg-Marquardt on the reprojection error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch3dv.camera.pinhole import intrinsics_inverse
from torch3dv.optim.losses import truncated_loss
from torch3dv.linalg.skew import skew
from torch3dv.solvers.essential import decompose_essential, essential_5point, essential_8point
from torch3dv.solvers.relative_pose_refine import refine_relative_pose_inv
from torch3dv.solvers.fundamental import fundamental_7point, fundamental_8point
from torch3dv.solvers.homography import homography_4point, homography_dlt
from torch3dv.solvers.pnp import epnp, p3p, refine_pnp
from torch3dv.solvers.rigid import kabsch, umeyama
from torch3dv.ransac.residuals import euclidean_sq, reprojection_sq, sampson_sq, transfer_sq


def _h(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def _E_to_F(E: Tensor, K1inv: Tensor, K2inv: Tensor) -> Tensor:
    """E (M, H, 3, 3), K^-1 (M, 3, 3) -> F (M, H, 3, 3)."""
    return K2inv.transpose(-1, -2)[:, None] @ E @ K1inv[:, None]


def compact_rows(mask: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
    """Moves the rows where ``mask`` (M, N) is True to the front of each (M, N, ...) tensor and cuts all of them
    to the largest count K; returns the cut tensors (M, K, ...) and the moved mask (M, K) as 0/1 weights in the
    first tensor's dtype. Differentiable in ``xs`` (a gather)."""
    K = max(1, int(mask.sum(-1).max())) if mask.numel() else 1
    idx = torch.argsort((~mask).to(torch.uint8), dim=-1, stable=True)[:, :K]

    def take(x: Tensor) -> Tensor:
        i = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand(idx.shape + x.shape[2:])
        return torch.gather(x, 1, i)

    return tuple(take(x) for x in xs) + (torch.gather(mask, 1, idx).to(xs[0].dtype),)


def _truncated_at(threshold: Tensor):
    """Truncated quadratic loss with per-problem thresholds (M,) for (M, N) squared residuals."""
    c = threshold[:, None]
    return lambda s_: truncated_loss(s_, c)


class EssentialModel:
    """E from normalised coordinates; residual: squared Sampson error in pixels.

    data = (x1n, x2n, x1, x2) with pixels x and normalised xn = K^-1 x; ctx = (K1^-1, K2^-1).
    """

    sample_size = 5
    max_solutions = 10
    param_shape = (3, 3)
    dof = 4
    lo_inner_samples = 16  # inner RANSAC in the local optimisation (RansacOptions.lo_inner_samples)

    def __init__(self, polish_iterations: int = 3, lo_iterations: int = 5):
        self.polish_iterations = polish_iterations
        self.lo_iterations = lo_iterations

    def minimal(self, sample, ctx):
        sol = essential_5point(sample[0], sample[1])
        return sol.E, sol.valid

    def residuals(self, params, data, ctx):
        F = _E_to_F(params, ctx[0], ctx[1])
        return sampson_sq(F, data[2], data[3])

    def refit(self, data, weights, ctx):
        r = essential_8point(data[0], data[1], weights=weights)
        return r.E, r.success

    def local_refine(self, params, data, near, ctx, threshold):
        """LO step: LM on the pose with the truncated (MSAC) Sampson loss over the ``near`` points (M, N) bool
        (those within a few thresholds of the current model); params (M, 3, 3) -> (E (M, 3, 3), ok (M,))."""
        R, t = decompose_essential(params)
        x1, x2, w = compact_rows(near, data[2], data[3])
        # the Sampson error does not depend on which of the four decompositions is used
        ref = refine_relative_pose_inv(R[:, 0], t[:, 0], x1, x2, ctx[0], ctx[1], weights=w,
                                       iterations=self.lo_iterations, loss=_truncated_at(threshold))
        return skew(ref.t) @ ref.R, ref.success

    def polish(self, params, data, weights, ctx):
        E = params
        for _ in range(self.polish_iterations):
            F = _E_to_F(E[:, None], ctx[0], ctx[1])
            den = sampson_sq(F.detach(), data[2], data[3], with_denominator=True)[1][:, 0]
            r = essential_8point(data[0], data[1], weights=weights / den)
            E = torch.where(r.success[:, None, None], r.E, E)
        return E


class FundamentalModel:
    """F from pixels; residual: squared Sampson error in pixels. data = (x1, x2); ctx = ()."""

    sample_size = 7
    max_solutions = 3
    param_shape = (3, 3)
    dof = 4
    lo_inner_samples = 16  # inner RANSAC in the local optimisation (RansacOptions.lo_inner_samples)

    def __init__(self, polish_iterations: int = 3):
        self.polish_iterations = polish_iterations

    def minimal(self, sample, ctx):
        sol = fundamental_7point(sample[0], sample[1], refine=False)
        return sol.F, sol.valid

    def residuals(self, params, data, ctx):
        return sampson_sq(params, data[0], data[1])

    def refit(self, data, weights, ctx):
        r = fundamental_8point(data[0], data[1], weights=weights)
        return r.F, r.success

    def polish(self, params, data, weights, ctx):
        F = params
        for _ in range(self.polish_iterations):
            den = sampson_sq(F.detach()[:, None], data[0], data[1], with_denominator=True)[1][:, 0]
            r = fundamental_8point(data[0], data[1], weights=weights / den)
            F = torch.where(r.success[:, None, None], r.F, F)
        return F


class HomographyModel:
    """H with x2 ~ H x1; residual: squared one-way transfer error in pixels. data = (x1, x2)."""

    sample_size = 4
    max_solutions = 1
    param_shape = (3, 3)
    dof = 2

    def __init__(self, polish_iterations: int = 3):
        self.polish_iterations = polish_iterations

    def minimal(self, sample, ctx):
        r = homography_4point(sample[0], sample[1])
        return r.H[:, None], r.success[:, None]

    def residuals(self, params, data, ctx):
        return transfer_sq(params, data[0], data[1])

    def refit(self, data, weights, ctx):
        r = homography_dlt(data[0], data[1], weights=weights)
        return r.H, r.success

    def polish(self, params, data, weights, ctx):
        H = params
        for _ in range(self.polish_iterations):
            w3 = (_h(data[0]) @ H.detach()[:, 2:3].transpose(-1, -2))[..., 0]  # (M, N)
            den = (w3 * w3).clamp_min(torch.finfo(H.dtype).tiny)
            r = homography_dlt(data[0], data[1], weights=weights / den)
            H = torch.where(r.success[:, None, None], r.H, H)
        return H


class AbsolutePoseModel:
    """cam_from_world [R | t] (3, 4); residual: squared reprojection error in pixels.

    data = (x, X, f) with pixels x, world points X and unit bearings f; ctx = (K,).
    """

    sample_size = 3
    max_solutions = 4
    param_shape = (3, 4)
    dof = 2

    def __init__(self, polish_iterations: int = 10):
        self.polish_iterations = polish_iterations

    def minimal(self, sample, ctx):
        sol = p3p(sample[2], sample[1])
        return torch.cat([sol.R, sol.t[..., None]], dim=-1), sol.valid

    def residuals(self, params, data, ctx):
        return reprojection_sq(params, data[1], data[0], ctx[0])

    def refit(self, data, weights, ctx):
        r = epnp(data[0], data[1], ctx[0], weights=weights)
        return torch.cat([r.R, r.t[..., None]], dim=-1), r.success

    def polish(self, params, data, weights, ctx):
        r = refine_pnp(params[..., :3], params[..., 3], data[0], data[1], ctx[0], weights=weights,
                       iterations=self.polish_iterations)
        out = torch.cat([r.R, r.t[..., None]], dim=-1)
        return torch.where(r.success[:, None, None], out, params)


class RigidModel:
    """3D-3D rigid or similarity transform as [s R | t] (3, 4); residual: squared distance in metres.

    data = (X, Y) with Y ≈ s R X + t.
    """

    sample_size = 3
    max_solutions = 1
    param_shape = (3, 4)
    dof = 3

    def __init__(self, with_scale: bool = False):
        self.with_scale = with_scale

    def _fit(self, X, Y, weights=None):
        r = umeyama(X, Y, weights=weights) if self.with_scale else kabsch(X, Y, weights=weights)
        return torch.cat([r.s[..., None, None] * r.R, r.t[..., None]], dim=-1), r.success

    def minimal(self, sample, ctx):
        P, ok = self._fit(sample[0], sample[1])
        return P[:, None], ok[:, None]

    def residuals(self, params, data, ctx):
        return euclidean_sq(params, data[0], data[1])

    def refit(self, data, weights, ctx):
        return self._fit(data[0], data[1], weights)

    def polish(self, params, data, weights, ctx):
        P, ok = self._fit(data[0], data[1], weights)
        return torch.where(ok[:, None, None], P, params)


def camera_inverses(K1: Tensor, K2: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form inverses of two intrinsics batches (M, 3, 3)."""
    return intrinsics_inverse(K1), intrinsics_inverse(K2)
