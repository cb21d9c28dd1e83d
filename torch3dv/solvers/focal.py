"""Focal lengths from a fundamental matrix with known principal points (square pixels, zero skew).

Convention: ``x2^T F x1 = 0`` (F maps image-1 pixels to epipolar lines in image 2), pixels with the centre of
the top-left pixel at (0, 0). Both functions first move the principal points to the origin,
``G = T2^T F T1`` with ``T_k = [[1, 0, px_k], [0, 1, py_k], [0, 0, 1]]``, so that
``G ~ K2'^-T E K1'^-1`` with ``K' = diag(f, f, 1)``.

* :func:`focal_from_fundamental`: Bougnoux's formula (Bougnoux, ICCV 1998; Hartley & Zisserman 2nd ed., the
  focal-lengths-from-F example in the auto-calibration chapter), in the centred frame with ``p = (0, 0, 1)``
  and ``I~ = diag(1, 1, 0)``:
  ``f1^2 = -(p^T [e2]x I~ G p)(p^T G^T p) / (p^T [e2]x I~ G I~ G^T p)`` with ``e2`` the left epipole
  (``G^T e2 = 0``), and ``f2`` from the same formula applied to ``G^T``.
* :func:`shared_focal_from_fundamental`: the two *linear* Kruppa equations of Sturm ("On focal length
  calibration from two views", CVPR 2001) for one focal length shared by both views. With the SVD
  ``G = U diag(r, s, 0) V^T``, the Kruppa equations ``u2^T W u2 / (r^2 v1^T W v1) = -u1^T W u2 / (r s v1^T W v2)
  = u1^T W u1 / (s^2 v2^T W v2)`` with ``W = diag(x, x, 1)``, ``x = f^2`` reduce (after dividing by ``1 - x``)
  to two linear equations in ``x``; they are solved together in the least-squares sense.

Both are closed forms (the SVD of a 3x3 matrix is the only decomposition) and differentiable. The epipole is
the largest of the three cross products of G's columns (scale and sign cancel in the formula).

Before either formula, G is balanced as ``D G D``, ``D = diag(c, c, 1)`` with ``c = |G_edges| / |G_tl|`` (about a
focal length), so that all its blocks are O(1); this matters in float32.

Failure modes (``success`` False, finite outputs, f = 0): ``f^2 <= 0`` or non-finite, and near-singular
configurations where the formula's numerator or denominator vanishes (Bougnoux: ``|num|`` or
``|den| <= 100 eps`` in the balanced unit-norm frame; Sturm: ``|(c_A, c_B)| <= 100 eps`` for the two linear
equations ``c x + d = 0``), e.g. when the optical axes are parallel or meet (the principal points are then
corresponding points, ``p2^T F p1 = 0``): the known blind spot of Bougnoux's and Sturm's methods. Values
close to the blind spot pass these tests but are very sensitive to noise in F.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_same_device_dtype, check_shape


class FocalResult(NamedTuple):
    """Result of :func:`focal_from_fundamental`.

    Attributes:
        f1: (*B,) focal length of camera 1 in pixels (0 on failure).
        f2: (*B,) focal length of camera 2 in pixels (0 on failure).
        success: (*B,) bool, both squared focals positive and finite.
    """

    f1: Tensor
    f2: Tensor
    success: Tensor


class SharedFocalResult(NamedTuple):
    """Result of :func:`shared_focal_from_fundamental`.

    Attributes:
        f: (*B,) focal length in pixels shared by both cameras (0 on failure).
        success: (*B,) bool.
    """

    f: Tensor
    success: Tensor


def _check(F: Tensor, pps: dict[str, Tensor]) -> None:
    check_shape(F, "F", (3, 3), "(*B, 3, 3)")
    check_float(F, "F")
    for k, v in pps.items():
        check_shape(v, k, (2,), "(*B, 2)")
        check_float(v, k)
        if v.shape[:-1] != F.shape[:-2]:
            raise ValueError(f"{k} must have shape (*B, 2) with *B = {tuple(F.shape[:-2])}, got {tuple(v.shape)}")
    check_same_device_dtype({"F": F, **pps})


def _centre(F: Tensor, pp1: Tensor, pp2: Tensor) -> tuple[Tensor, Tensor]:
    """Centred and balanced ``G' = D G D`` (unit Frobenius norm) and the scale ``c`` of ``D = diag(c, c, 1)``.

    ``G = T2^T F T1`` has blocks of very different magnitude in pixel units (``~1/f^2`` top-left, ``~1/f``
    edges); ``c = |G_edges| / |G_tl|`` (about a focal length, equivariant to pixel-unit changes, 1 where
    undefined) brings all blocks to O(1), and the focal in the balanced frame is ``f / c``.
    """
    def T(pp: Tensor) -> Tensor:
        o, z = torch.ones_like(pp[..., 0]), torch.zeros_like(pp[..., 0])
        return torch.stack([o, z, pp[..., 0], z, o, pp[..., 1], z, z, o], -1).reshape(*pp.shape[:-1], 3, 3)

    G = T(pp2).transpose(-1, -2) @ F @ T(pp1)
    tl = G[..., :2, :2].flatten(-2).norm(dim=-1)
    edges = torch.cat([G[..., :2, 2], G[..., 2, :2]], -1).norm(dim=-1)
    c = (edges / tl).detach()
    c = torch.where(torch.isfinite(c) & (c > 0), c, torch.ones_like(c))
    o = torch.ones_like(c)
    d = torch.stack([c, c, o], -1)
    G = d[..., :, None] * G * d[..., None, :]
    G = G / G.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(G.dtype).tiny)[..., None, None]
    return G, c


def _left_epipole(G: Tensor) -> Tensor:
    """e with G^T e = 0: the largest cross product of two columns of G."""
    c0, c1, c2 = G[..., :, 0], G[..., :, 1], G[..., :, 2]
    cands = torch.stack([torch.linalg.cross(c0, c1, dim=-1), torch.linalg.cross(c1, c2, dim=-1),
                         torch.linalg.cross(c2, c0, dim=-1)], -2)  # (..., 3, 3)
    idx = cands.detach().norm(dim=-1).argmax(-1)
    return torch.gather(cands, -2, idx[..., None, None].expand(*idx.shape, 1, 3))[..., 0, :]


def _bougnoux_sq(G: Tensor) -> tuple[Tensor, Tensor]:
    """Squared focal of camera 1 for a centred G: returns (numerator, denominator) of Bougnoux's formula."""
    e = _left_epipole(G)
    e = e / e.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    # p^T [e]x = (e x p)^T... with p = (0, 0, 1): row 2 of [e]x = (-e1, e0, 0)
    a = torch.stack([-e[..., 1], e[..., 0]], -1)  # p^T [e]x I~  restricted to the first two coordinates
    g_col = G[..., :2, 2]  # I~ G p
    num = (a * g_col).sum(-1) * G[..., 2, 2]  # (p^T [e]x I~ G p) (p^T G^T p)
    Gtop = G[..., :2, :2]  # I~ G I~ restricted
    den = (a * (Gtop @ G[..., 2, :2, None])[..., 0]).sum(-1)  # p^T [e]x I~ G I~ G^T p
    return -num, den


def _positive_sqrt(num: Tensor, den: Tensor, check_num: bool = True) -> tuple[Tensor, Tensor]:
    """sqrt(num / den) where the ratio is positive and num, den are clearly non-zero (O(1) when balanced)."""
    tol = 100 * torch.finfo(num.dtype).eps
    good = den.abs() > tol
    if check_num:
        good = good & (num.abs() > tol)
    safe_den = torch.where(good, den, torch.ones_like(den))
    sq = num / safe_den
    ok = good & torch.isfinite(sq) & (sq > 0)
    f = torch.sqrt(torch.where(ok, sq, torch.ones_like(sq)))
    return torch.where(ok, f, torch.zeros_like(f)), ok


def focal_from_fundamental(F: Tensor, pp1: Tensor, pp2: Tensor) -> FocalResult:
    """Bougnoux's closed form for two (possibly different) focal lengths.

    Args:
        F: (*B, 3, 3) fundamental matrices with ``x2^T F x1 = 0`` (pixels).
        pp1: (*B, 2) principal point of camera 1, pixels.
        pp2: (*B, 2) principal point of camera 2, pixels.

    Returns:
        ``FocalResult(f1 (*B,), f2 (*B,), success (*B,))``, pixels; see the module doc for failure modes.
    """
    _check(F, {"pp1": pp1, "pp2": pp2})
    G, c = _centre(F, pp1, pp2)
    f1, ok1 = _positive_sqrt(*_bougnoux_sq(G))
    f2, ok2 = _positive_sqrt(*_bougnoux_sq(G.transpose(-1, -2)))
    f1, f2 = c * f1, c * f2
    ok = ok1 & ok2 & torch.isfinite(F).flatten(-2).all(-1)
    z = torch.zeros_like(f1)
    return FocalResult(torch.where(ok, f1, z), torch.where(ok, f2, z), ok)


def shared_focal_from_fundamental(F: Tensor, pp: Tensor, pp2: Tensor | None = None) -> SharedFocalResult:
    """One focal length shared by both views, from Sturm's linear Kruppa equations (module doc).

    Args:
        F: (*B, 3, 3) fundamental matrices with ``x2^T F x1 = 0`` (pixels).
        pp: (*B, 2) principal point (pixels), used for both views unless ``pp2`` is given.
        pp2: optional (*B, 2) principal point of view 2 when it differs (same focal, e.g. a cropped image).

    Returns:
        ``SharedFocalResult(f (*B,), success (*B,))``, pixels.
    """
    pp2 = pp if pp2 is None else pp2
    _check(F, {"pp": pp, "pp2": pp2})
    G, c = _centre(F, pp, pp2)
    finite = torch.isfinite(G).flatten(-2).all(-1)
    G = torch.where(finite[..., None, None], G, torch.diag(G.new_tensor([3.0, 2.0, 1.0])).expand_as(G))
    U, S, Vh = torch.linalg.svd(G)
    r, s = S[..., 0], S[..., 1]
    a1, a2 = U[..., 2, 0], U[..., 2, 1]  # third coordinates of u1, u2
    b1, b2 = Vh[..., 0, 2], Vh[..., 1, 2]  # third coordinates of v1, v2
    # eq. 1 = eq. 2 and eq. 2 = eq. 3, each  c x + d = 0
    cA = s * b1 * b2 * (1 - a2 * a2) + r * a1 * a2 * (1 - b1 * b1)
    dA = s * b1 * b2 * a2 * a2 + r * a1 * a2 * b1 * b1
    cB = r * b1 * b2 * (1 - a1 * a1) + s * a1 * a2 * (1 - b2 * b2)
    dB = r * b1 * b2 * a1 * a1 + s * a1 * a2 * b2 * b2
    nrm = torch.sqrt(cA * cA + cB * cB)
    f, ok = _positive_sqrt(-(cA * dA + cB * dB) / nrm.clamp_min(torch.finfo(G.dtype).tiny), nrm, check_num=False)
    ok = ok & finite
    return SharedFocalResult(torch.where(ok, c * f, torch.zeros_like(f)), ok)
