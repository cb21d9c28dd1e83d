"""Robust loss functions for (iteratively re-weighted) least squares.

A robust loss acts on the *squared* norm ``s = |r|^2`` of a residual block (Ceres' convention), so a pixel
reprojection error (du, dv) is one block of size 2 and the loss sees ``du^2 + dv^2``. The cost of a problem is

    cost = 0.5 * sum_i w_i * rho(s_i)

with user weights ``w_i``. Every loss here returns ``rho(s)`` and its derivative ``rho'(s)``; the derivative is
the IRLS weight: a Gauss-Newton step with per-block weights ``w_i * rho'(s_i)`` has the same gradient as the
robust cost (the second-order ``rho''`` term is dropped, which is the usual and stable IRLS approximation).

``scale`` is the residual norm (same unit as the residuals, e.g. pixels) where the loss starts to down-weight:
``rho(s) ~ s`` for ``s << scale^2``.

Losses:
    * ``"trivial"`` (plain least squares): rho(s) = s, rho' = 1.
    * ``"huber"``: rho(s) = s for s <= c^2, else 2 c sqrt(s) - c^2; rho' = min(1, c / sqrt(s)).
    * ``"soft_l1"``: rho(s) = 2 c^2 (sqrt(1 + s / c^2) - 1); rho' = 1 / sqrt(1 + s / c^2).
    * ``"cauchy"``: rho(s) = c^2 log(1 + s / c^2); rho' = 1 / (1 + s / c^2).
    * ``"truncated"``: rho(s) = min(s, c^2); rho' = 1 for s < c^2, else 0 (the MSAC cost: least squares on
      the points within the threshold, the inlier set re-decided at every evaluation).

All but ``"truncated"`` are differentiable in ``s`` (Huber is C1), so they can be used with implicit
differentiation; with ``"truncated"`` the implicit gradient is that of least squares on the final inliers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

LossFn = Callable[[Tensor], "tuple[Tensor, Tensor]"]

LOSSES = ("trivial", "huber", "soft_l1", "cauchy", "truncated")


def trivial_loss(s: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Plain least squares: returns ``(s, 1)``. ``s`` is the squared residual norm (any shape)."""
    return s, torch.ones_like(s)


def huber_loss(s: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Huber loss on the squared norm ``s`` with threshold ``scale`` (residual units); returns (rho, rho')."""
    c2 = scale * scale
    inlier = s <= c2
    # sqrt on a clamped value keeps the unused branch finite (and its gradient) at s = 0
    r = torch.sqrt(torch.where(inlier, torch.full_like(s, c2), s))
    rho = torch.where(inlier, s, 2.0 * scale * r - c2)
    drho = torch.where(inlier, torch.ones_like(s), scale / r)
    return rho, drho


def soft_l1_loss(s: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Pseudo-Huber ("soft L1") loss on the squared norm ``s``; returns (rho, rho')."""
    c2 = scale * scale
    q = torch.sqrt(1.0 + s / c2)
    return 2.0 * c2 * (q - 1.0), 1.0 / q


def cauchy_loss(s: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Cauchy (Lorentzian) loss on the squared norm ``s``; returns (rho, rho')."""
    c2 = scale * scale
    return c2 * torch.log1p(s / c2), 1.0 / (1.0 + s / c2)


def truncated_loss(s: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Truncated quadratic (MSAC) loss on the squared norm ``s``; returns (rho, rho')."""
    c2 = scale * scale
    inside = s < c2
    return torch.where(inside, s, torch.as_tensor(c2, dtype=s.dtype, device=s.device)), inside.to(s.dtype)


_BY_NAME = {"trivial": trivial_loss, "huber": huber_loss, "soft_l1": soft_l1_loss, "cauchy": cauchy_loss,
            "truncated": truncated_loss}


def get_loss(loss: str | Callable | None, scale: float = 1.0) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Resolves a loss given by name (see module docstring) or as a callable.

    Args:
        loss: one of ``"trivial"``, ``"huber"``, ``"soft_l1"``, ``"cauchy"``, ``"truncated"``, ``None`` (= trivial), or a
            callable ``f(s) -> (rho(s), rho'(s))`` on squared residual norms.
        scale: threshold in residual units (ignored for callables and ``"trivial"``).

    Returns:
        ``f(s) -> (rho, rho')``.

    Raises:
        ValueError: unknown name or non-positive scale.
    """
    if loss is None:
        loss = "trivial"
    if callable(loss):
        return loss
    if loss not in _BY_NAME:
        raise ValueError(f"unknown robust loss {loss!r}; expected one of {LOSSES} or a callable")
    if not scale > 0:
        raise ValueError(f"loss scale must be positive, got {scale}")
    fn = _BY_NAME[loss]
    return lambda s: fn(s, scale)
