"""Rigid (Kabsch) and similarity (Umeyama) alignment of 3D-3D correspondences, batched and weighted.

Given source points ``X`` and target points ``Y`` (*B, N, 3) in metres, find ``Y ~ s R X + t`` minimising
``sum_i w_i |s R X_i + t - Y_i|^2`` with ``det R = +1`` (never a reflection).

Method: Horn's closed-form quaternion solution (Horn 1987). The weighted centred cross-covariance
``S = sum_i w_i x_i y_i^T`` (x, y centred) is arranged into a symmetric, traceless 4x4 matrix ``N(S)`` whose
largest eigenvector is the optimal unit quaternion (w, x, y, z); the rotation is always proper, so no
determinant correction is needed (reflection-safe by construction). The eigenvector comes from
:func:`torch3dv.linalg.sym_eig4.extreme_eigenpair4` (closed form, 2-5x faster than LAPACK ``eigh`` at
batch 100k on CPU, and as accurate). The optimal scale is ``s = trace(R^T S^T) / sum_i w_i |x_i|^2`` and
``t = mean_Y - s R mean_X``.

Gradients: a plain ``torch.linalg.svd`` of the 3x3 cross-covariance has a backward pass with
1 / (sigma_i^2 - sigma_j^2) terms that give NaN whenever two singular values coincide, e.g. for an isotropic
point cloud, although the alignment is perfectly well posed there (``roma.special_procrustes`` avoids this
with its own backward). The eigenvector gradient used here (first-order perturbation, see
``torch3dv.linalg.sym_eig4``) only involves the gaps between the largest and the other eigenvalues of ``N``:
with singular values sigma_1 >= sigma_2 >= sigma_3 of ``S`` and d = sign(det S) these gaps are
2 (sigma_2 + d sigma_3), 2 (sigma_1 + d sigma_3) and 2 (sigma_1 + sigma_2), which vanish exactly when the
optimal rotation is not unique (collinear or coincident points, or a mirrored
configuration with sigma_2 = sigma_3). Such problems get ``success=False``.

``success`` is False (and R = I, t = 0, s = 1 are returned) for: fewer than 3 points with non-zero weight,
NaN/inf in an unmasked row or weight, or a rotation that is not determined (the relative eigen-gap product
of ``N`` below 100 eps, i.e. sigma_2 + d sigma_3 ~ 0: collinear / coincident points in X or Y).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_same_device_dtype, check_shape, prepare_correspondences
from torch3dv.geometry.rotations import quat_wxyz_to_matrix
from torch3dv.linalg.sym_eig4 import extreme_eigenpair4


class RigidResult(NamedTuple):
    """Rigid / similarity alignment ``Y ~ s R X + t`` (maps the source frame into the target frame).

    Attributes:
        R: rotations (*B, 3, 3), det +1.
        t: translations (*B, 3), metres.
        s: scales (*B,) (exactly 1 for :func:`kabsch` or ``with_scale=False``).
        success: (*B,) bool, False for degenerate or invalid problems (then R = I, t = 0, s = 1).
    """

    R: Tensor
    t: Tensor
    s: Tensor
    success: Tensor


def _horn_matrix(S: Tensor) -> Tensor:
    """Horn's symmetric 4x4 matrix (*B, 4, 4) from the cross-covariance S_ab = sum x_a y_b (*B, 3, 3)."""
    xx, xy, xz = S[..., 0, 0], S[..., 0, 1], S[..., 0, 2]
    yx, yy, yz = S[..., 1, 0], S[..., 1, 1], S[..., 1, 2]
    zx, zy, zz = S[..., 2, 0], S[..., 2, 1], S[..., 2, 2]
    rows = [
        xx + yy + zz, yz - zy, zx - xz, xy - yx,
        yz - zy, xx - yy - zz, xy + yx, zx + xz,
        zx - xz, xy + yx, -xx + yy - zz, yz + zy,
        xy - yx, zx + xz, yz + zy, -xx - yy + zz,
    ]
    return torch.stack(rows, dim=-1).reshape(*S.shape[:-2], 4, 4)


def umeyama(
    X: Tensor,
    Y: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    with_scale: bool = True,
    method: str = "closed_form",
) -> RigidResult:
    """Weighted similarity (or rigid) alignment ``Y ~ s R X + t`` (Umeyama 1991, solved with Horn's method).

    Args:
        X: source points (*B, N, 3), metres, in frame a.
        Y: target points (*B, N, 3), metres, in frame b (row i corresponds to row i of X).
        weights: optional non-negative weights (*B, N); a zero weight removes the point.
        mask: optional bool (*B, N); False rows are padding and may contain NaN.
        with_scale: estimate s; if False, s = 1 (rigid, same as :func:`kabsch`).
        method: eigen-solver, ``"closed_form"`` (fast) or ``"eigh"`` (LAPACK reference).

    Returns:
        :class:`RigidResult` with ``b_from_a = (s, R, t)``. Differentiable w.r.t. X, Y and weights.

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    cor = prepare_correspondences({"X": X, "Y": Y}, {"X": 3, "Y": 3}, weights=weights, mask=mask)
    Xc, Yc = cor.points
    w = cor.weights
    dtype, device = Xc.dtype, Xc.device
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny ** 0.5
    wsum = w.sum(-1)
    wn = w / wsum.clamp_min(tiny)[..., None]
    mx = (wn[..., None, :] @ Xc)[..., 0, :]  # weighted centroids (a matmul reads the points once)
    my = (wn[..., None, :] @ Yc)[..., 0, :]
    dx = Xc - mx[..., None, :]
    dy = Yc - my[..., None, :]
    S = (wn[..., None] * dx).transpose(-1, -2) @ dy  # (*B, 3, 3), S_ab = sum w x_a y_b
    eig = extreme_eigenpair4(_horn_matrix(S), largest=True, method=method)
    count = (w > 0).sum(-1)
    ok = cor.finite & (count >= 3) & (eig.gap > 100 * eps) & (wsum > 0)

    q0 = torch.zeros(4, dtype=dtype, device=device)
    q0[0] = 1
    q = torch.where(ok[..., None], eig.vector, q0)
    R = quat_wxyz_to_matrix(q)
    if with_scale:
        varx = (wn * (dx * dx).sum(-1)).sum(-1)
        num = (R * S.transpose(-1, -2)).sum((-1, -2))  # sum_i w_i y_i . R x_i
        ok = ok & (varx > tiny) & (num > 0)
        s = torch.where(ok, num / torch.where(ok, varx, torch.ones_like(varx)), torch.ones_like(varx))
    else:
        s = torch.ones_like(wsum)
    t = my - s[..., None] * (R @ mx[..., None])[..., 0]
    eye = torch.eye(3, dtype=dtype, device=device)
    R = torch.where(ok[..., None, None], R, eye)
    t = torch.where(ok[..., None], t, torch.zeros_like(t))
    s = torch.where(ok, s, torch.ones_like(s))
    return RigidResult(R, t, s, ok)


def kabsch(
    X: Tensor,
    Y: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    method: str = "closed_form",
) -> RigidResult:
    """Weighted rigid alignment ``Y ~ R X + t`` (Kabsch), det R = +1; ``s`` is returned as ones.

    Args:
        X: source points (*B, N, 3), metres, in frame a.
        Y: target points (*B, N, 3), metres, in frame b.
        weights: optional non-negative weights (*B, N).
        mask: optional bool (*B, N); False rows are padding (may be NaN).
        method: ``"closed_form"`` or ``"eigh"`` (see :func:`umeyama`).

    Returns:
        :class:`RigidResult` ``b_from_a = (R, t)``, s = 1. See the module docstring for ``success``.
    """
    return umeyama(X, Y, weights=weights, mask=mask, with_scale=False, method=method)


def rigid_residuals(R: Tensor, t: Tensor, X: Tensor, Y: Tensor, s: Tensor | None = None) -> Tensor:
    """Euclidean residuals ``|s R X_i + t - Y_i|`` (metres), e.g. for RANSAC scoring.

    Args:
        R: rotations (*B, 3, 3).
        t: translations (*B, 3).
        X: source points (*B, N, 3).
        Y: target points (*B, N, 3).
        s: optional scales (*B,) (default 1).

    Returns:
        residual norms (*B, N).
    """
    check_shape(R, "R", (3, 3), "(*B, 3, 3)")
    check_shape(t, "t", (3,), "(*B, 3)")
    for name, v in (("R", R), ("t", t), ("X", X), ("Y", Y)):
        check_float(v, name)
    check_shape(X, "X", (None, 3), "(*B, N, 3)")
    check_shape(Y, "Y", (None, 3), "(*B, N, 3)")
    check_same_device_dtype({"R": R, "t": t, "X": X, "Y": Y, "s": s})
    if X.shape != Y.shape:
        raise ValueError(
            f"X and Y must have the same shape (*B, N, 3), got {tuple(X.shape)} and {tuple(Y.shape)}"
        )
    if R.shape[:-2] != X.shape[:-2] or t.shape[:-1] != X.shape[:-2]:
        raise ValueError(
            f"R (*B, 3, 3) and t (*B, 3) must share the batch shape of X {tuple(X.shape[:-2])}, got "
            f"{tuple(R.shape)} and {tuple(t.shape)}"
        )
    RX = X @ R.transpose(-1, -2)
    if s is not None:
        check_float(s, "s")
        if s.shape != X.shape[:-2]:
            raise ValueError(f"s must have shape (*B,) = {tuple(X.shape[:-2])}, got {tuple(s.shape)}")
        RX = s[..., None, None] * RX
    return (RX + t[..., None, :] - Y).norm(dim=-1)
