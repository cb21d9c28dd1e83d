"""Hypothesis scores from squared residuals: inlier count, MSAC and MAGSAC++.

All scores are "higher is better" and computed in the units of the threshold (pixels or metres). Residuals
come squared, shape (..., N), together with a validity mask (..., N) and a threshold broadcastable to (...).

MAGSAC++ (Barath et al., CVPR 2020) marginalises the inlier noise scale sigma over [0, sigma_max], with the
residual norm modelled as sigma times a chi variable with ``dof`` degrees of freedom. We set
``sigma_max = threshold / kappa`` with kappa the 0.99 chi quantile, so that the threshold is the point where
weights reach zero, as for the other scores. With ``a = (dof - 1) / 2``, ``u = r^2 / (2 sigma_max^2)`` and Q the
regularised upper incomplete gamma function, the IRLS weight is ``w(r) = Q(a, u) - Q(a, kappa^2 / 2)`` and the
loss is its integral ``rho(r) = sigma_max^2 [u Q(a, u) - a Q(a + 1, u) + a - Q(a, kappa^2 / 2) u]`` (closed form;
differentiable). The score is ``sum(rho(threshold) - rho(r))`` over valid points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# sqrt of the 0.99 quantile of the chi-square distribution with dof degrees of freedom
_KAPPA = {1: math.sqrt(6.634896601), 2: math.sqrt(9.210340372), 3: math.sqrt(11.34486673),
          4: math.sqrt(13.27670414)}

SCORES = ("inliers", "msac", "magsac")


def inlier_mask(r2: Tensor, valid: Tensor, threshold: Tensor | float) -> Tensor:
    """(..., N) bool: valid and squared residual below threshold^2."""
    th2 = _th2(threshold, r2)
    return valid & (r2 < th2[..., None])  # NaN compares False


def _th2(threshold, like: Tensor) -> Tensor:
    th = torch.as_tensor(threshold, dtype=like.dtype, device=like.device)
    return th * th


def _magsac_rho(r2: Tensor, th2: Tensor, dof: int) -> tuple[Tensor, Tensor]:
    kappa = _KAPPA[dof]
    a = 0.5 * (dof - 1)
    sigma2 = th2 / (kappa * kappa)
    uk = 0.5 * kappa * kappa
    u = (0.5 * r2 / sigma2[..., None]).clamp(max=uk)
    a_t = torch.full_like(u, a)
    qk = float(torch.special.gammaincc(torch.tensor(a, dtype=torch.float64), torch.tensor(uk, dtype=torch.float64)))
    rho = sigma2[..., None] * (u * torch.special.gammaincc(a_t, u) - a * torch.special.gammaincc(a_t + 1, u) + a
                               - qk * u)
    uk_t = torch.full_like(sigma2, uk)
    ak_t = torch.full_like(sigma2, a)
    rho_max = sigma2 * (uk_t * torch.special.gammaincc(ak_t, uk_t) - a * torch.special.gammaincc(ak_t + 1, uk_t)
                        + a - qk * uk_t)
    return rho, rho_max


def magsac_weights(r2: Tensor, valid: Tensor, threshold: Tensor | float, dof: int = 4) -> Tensor:
    """MAGSAC++ IRLS weights in [0, 1 - Q(a, kappa^2/2)] (0 beyond the threshold and for invalid points)."""
    th2 = _th2(threshold, r2)
    kappa = _KAPPA[dof]
    a = 0.5 * (dof - 1)
    u = 0.5 * r2 / (th2[..., None] / (kappa * kappa))
    qk = float(torch.special.gammaincc(torch.tensor(a, dtype=torch.float64),
                                       torch.tensor(0.5 * kappa * kappa, dtype=torch.float64)))
    w = (torch.special.gammaincc(torch.full_like(u, a), u.clamp(max=0.5 * kappa * kappa)) - qk).clamp_min(0)
    return torch.where(valid & torch.isfinite(r2), w, torch.zeros_like(w))


def score_residuals(r2: Tensor, valid: Tensor, threshold: Tensor | float, kind: str = "msac",
                    dof: int = 4) -> Tensor:
    """Scores (...) of hypotheses from squared residuals (..., N).

    Args:
        r2: squared residuals (..., N) in threshold units squared; non-finite values count as outliers.
        valid: (..., N) bool (broadcastable) marking real (non-padded) points.
        threshold: inlier threshold, scalar or (...) tensor.
        kind: "inliers" (count), "msac" (sum of threshold^2 - min(r^2, threshold^2)), or "magsac" (MAGSAC++).
        dof: residual degrees of freedom for MAGSAC++ (4 for two-view correspondences, 2 for a one-way
            transfer or reprojection error, 3 for 3D points).
    """
    th2 = _th2(threshold, r2)[..., None]
    # NaN compares False, so one comparison both truncates at the threshold and drops non-finite residuals
    inl = valid & (r2 < th2)
    if kind == "inliers":
        return inl.sum(-1).to(r2.dtype)
    r2c = torch.where(inl, r2, th2)
    if kind == "msac":
        return (th2 - r2c).sum(-1)
    if kind == "magsac":
        rho, rho_max = _magsac_rho(r2c, th2[..., 0], dof)
        return (rho_max[..., None] - rho).sum(-1)
    raise ValueError(f"unknown score {kind!r}; choose one of {SCORES}")


def inlier_weights(r2: Tensor, valid: Tensor, threshold: Tensor | float, kind: str = "msac",
                   dof: int = 4) -> Tensor:
    """Weights (..., N) for a local-optimisation refit: MAGSAC++ weights for "magsac", else 0/1 inliers."""
    if kind == "magsac":
        return magsac_weights(r2, valid, threshold, dof)
    return inlier_mask(r2, valid, threshold).to(r2.dtype)
