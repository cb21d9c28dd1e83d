"""Homography estimation: closed-form 4-point, normalised weighted DLT, transfer error.

Convention (README, "Conventions"): ``x2 ~ H x1`` for pixels x1 in image 1 and x2 in image 2. Returned matrices
are scaled so that ``H[..., 2, 2] = 1`` (OpenCV) when ``|H22| > 100 eps |H|_F`` (2.2e-14 float64, 1.2e-5
float32), else to unit Frobenius norm (pixel homographies legitimately reach ``|H22| / |H|_F ~ 1e-4``).

Both solvers work in Hartley-normalised coordinates (:func:`torch3dv.linalg.normalize_points`) and return
``H = T2^-1 Hn T1``.

* :func:`homography_4point` is the closed form through the projective basis: with ``P = [p1 p2 p3]`` (homogeneous
  columns) and ``lam = adj(P) p4``, ``A = P diag(lam)`` maps the canonical frame to the four points, and
  ``H = A2 adj(A1)``. It is polynomial in the coordinates (no division, no decomposition), hence cheap, exactly
  differentiable and finite for every input. A problem fails when one of the four point triples is
  (nearly) collinear in either image: ``|det [pi pj pk]| <= collinear_tol`` in normalised coordinates, where the
  determinant is twice the triangle area (a well-spread quadrilateral gives values of order 1). Default
  ``collinear_tol``: ``sqrt(eps)`` (1.5e-8 float64, 3.5e-4 float32).
* :func:`homography_dlt` minimises ``sum_i w_i |x2h_i x Hn x1h_i|_{1,2}^2`` (two rows per point) over unit
  ``Hn``: the smallest eigenvector of the 9x9 normal matrix (``eigh``; gradients finite while that eigenvalue is
  simple; for exactly N = 4 rows the eigenvector is computed without autograd and projected onto the null space
  of the 8x9 design, as in :mod:`torch3dv.solvers.fundamental`). The normal matrix is assembled from four
  3x3 moment matrices without forming A. The null space must be 1-dimensional:
  ``|W^1/2 A v_1|^2 / l_8 > rank_tol`` (Rayleigh quotient of the second eigenvector recomputed from the
  correspondences; see :mod:`torch3dv.solvers.fundamental`), default 1e-18
  (float64) / 1e-8 (float32). This catches fewer than 4 distinct points, three collinear points among four and
  all points collinear.

Both also fail for NaN/inf in used rows and for a near-singular result: ``|det Hn| <= det_tol * (|Hn|_F /
sqrt(3))^3`` in the normalised frame, default ``det_tol = sqrt(eps)``. Failed problems return the identity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_points, prepare_correspondences
from torch3dv.linalg.normalization import normalize_points
from torch3dv.solvers.fundamental import (
    _adj3,
    _check_model_points,
    _default_tol,
    _det3,
    _project_nullspace,
)


class HomographyResult(NamedTuple):
    """Result of the homography solvers.

    Attributes:
        H: (*B, 3, 3) homographies with ``x2 ~ H x1`` (pixels), H22 = 1 where possible; identity on failure.
        success: (*B,) bool.
    """

    H: Tensor
    success: Tensor


def _inv_similarity(T: Tensor) -> Tensor:
    """Inverse of the normalising similarity ``[[s I, -s m], [0, 1]]`` in closed form."""
    s = T[..., 0, 0]
    m = -T[..., :2, 2] / s[..., None]
    z = torch.zeros_like(s)
    o = torch.ones_like(s)
    return torch.stack([1 / s, z, m[..., 0], z, 1 / s, m[..., 1], z, z, o], -1).reshape(T.shape)


def _finish(Hn: Tensor, T1: Tensor, T2: Tensor, ok: Tensor, det_tol: float | None) -> HomographyResult:
    """Singularity test in the normalised frame, denormalisation, scaling, identity on failure."""
    eps = torch.finfo(Hn.dtype).eps
    dtol = eps ** 0.5 if det_tol is None else det_tol
    nrm = Hn.flatten(-2).norm(dim=-1)
    ok = ok & (_det3(Hn).abs() > dtol * (nrm / 3 ** 0.5) ** 3)
    H = _inv_similarity(T2) @ Hn @ T1
    fro = H.flatten(-2).norm(dim=-1, keepdim=True)[..., None].clamp_min(torch.finfo(H.dtype).tiny)
    h22 = H[..., 2:3, 2:3]
    use22 = h22.abs() > 100 * eps * fro
    H = H / torch.where(use22, h22, fro)
    ok = ok & torch.isfinite(H).flatten(-2).all(-1)
    eye = torch.eye(3, dtype=H.dtype, device=H.device)
    return HomographyResult(torch.where(ok[..., None, None], H, eye), ok)


def homography_4point(
    x1: Tensor, x2: Tensor, mask: Tensor | None = None, collinear_tol: float | None = None,
    det_tol: float | None = None,
) -> HomographyResult:
    """Minimal closed-form homography from exactly four correspondences (module doc).

    Args:
        x1: pixels in image 1, (*B, 4, 2).
        x2: pixels in image 2, (*B, 4, 2).
        mask: optional bool (*B, 4); a problem with a masked-out row has too few points and fails.
        collinear_tol: threshold on triangle determinants in normalised coordinates; default ``sqrt(eps)``.
        det_tol: near-singular threshold (module doc); default ``sqrt(eps)``.

    Returns:
        ``HomographyResult(H (*B, 3, 3), success (*B,))`` with ``x2 ~ H x1``.
    """
    check_points(x1, "x1", 2)
    if x1.shape[-2] != 4:
        raise ValueError(f"homography_4point needs exactly 4 correspondences, got x1 of shape {tuple(x1.shape)}")
    c = prepare_correspondences({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, None, mask)
    p1, p2 = c.points
    w = c.weights
    ok = c.finite & (w > 0).all(-1)
    n1 = normalize_points(p1, w)
    n2 = normalize_points(p2, w)
    ctol = torch.finfo(x1.dtype).eps ** 0.5 if collinear_tol is None else collinear_tol

    def frame(xn: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.cat([xn, torch.ones_like(xn[..., :1])], -1)  # (..., 4, 3)
        P = h[..., :3, :].transpose(-1, -2)  # columns p1 p2 p3
        lam = (_adj3(P) @ h[..., 3, :, None])[..., 0]  # det(P) * P^-1 p4
        # the four triangle determinants: det[p1 p2 p3] and, by Cramer, lam_k = det with p4 replacing p_k
        dets = torch.cat([_det3(P)[..., None], lam], -1)
        return P * lam[..., None, :], dets.abs().amin(-1)

    A1, m1 = frame(n1.points)
    A2, m2 = frame(n2.points)
    ok = ok & (m1 > ctol) & (m2 > ctol)
    Hn = A2 @ _adj3(A1)
    Hn = Hn / Hn.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(Hn.dtype).tiny)[..., None, None]
    return _finish(Hn, n1.T, n2.T, ok, det_tol)


def _dlt_design(x1n: Tensor, x2n: Tensor) -> Tensor:
    """Two DLT rows per correspondence, (..., 2N, 9), from ``x2h x (H x1h) = 0``."""
    h1 = torch.cat([x1n, torch.ones_like(x1n[..., :1])], -1)
    z = torch.zeros_like(h1)
    u, v = x2n[..., 0:1], x2n[..., 1:2]
    r1 = torch.cat([z, -h1, v * h1], -1)
    r2 = torch.cat([h1, z, -u * h1], -1)
    return torch.stack([r1, r2], -2).flatten(-3, -2)


def _dlt_normal_matrix(h1: Tensor, x2n: Tensor, w: Tensor) -> Tensor:
    """``A^T W A`` of :func:`_dlt_design` (9x9) without forming A.

    With ``S_k = sum_i w_i m_ik h_i h_i^T`` for the moments ``m = (1, u, v, u^2 + v^2)`` the matrix is
    ``[[S_0, 0, -S_u], [0, S_0, -S_v], [-S_u, -S_v, S_uv]]``.
    """
    u, v = x2n[..., 0], x2n[..., 1]
    m = torch.stack([w, w * u, w * v, w * (u * u + v * v)], -1)  # (..., N, 4)
    hh = (h1[..., :, None] * h1[..., None, :]).flatten(-2)  # (..., N, 9)
    S = (m.transpose(-1, -2) @ hh).unflatten(-1, (3, 3))  # (..., 4, 3, 3)
    S0, Su, Sv, Suv = S.unbind(-3)
    Z = torch.zeros_like(S0)
    M = torch.cat([torch.cat([S0, Z, -Su], -1), torch.cat([Z, S0, -Sv], -1), torch.cat([-Su, -Sv, Suv], -1)], -2)
    return 0.5 * (M + M.transpose(-1, -2))


def _dlt_gap_ratio(h1: Tensor, x2n: Tensor, w: Tensor, v: Tensor, lmax: Tensor) -> Tensor:
    """``|W^1/2 A v|^2 / l_max`` for the DLT rows, without forming A (see the fundamental module)."""
    a = h1 @ v.unflatten(-1, (3, 3)).transpose(-1, -2)  # (..., N, 3): rows h . v_k for the rows k of H
    r1 = -a[..., 1] + x2n[..., 1] * a[..., 2]
    r2 = a[..., 0] - x2n[..., 0] * a[..., 2]
    return (w * (r1 * r1 + r2 * r2)).sum(-1) / lmax


def homography_dlt(
    x1: Tensor,
    x2: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    rank_tol: float | None = None,
    det_tol: float | None = None,
) -> HomographyResult:
    """Normalised weighted direct linear transform for N >= 4 correspondences.

    Args:
        x1: pixels in image 1, (*B, N, 2).
        x2: pixels in image 2, (*B, N, 2).
        weights: optional non-negative weights (*B, N), acting as row multiplicities.
        mask: optional bool (*B, N); False rows are padding (may hold NaN) and are ignored.
        rank_tol: null-space test threshold (module doc); default dtype-dependent.
        det_tol: near-singular threshold (module doc); default ``sqrt(eps)``.

    Returns:
        ``HomographyResult(H (*B, 3, 3), success (*B,))`` with ``x2 ~ H x1``. Fails for fewer than 4 weighted
        points, NaN/inf in used rows, a rank-deficient design (three of four points collinear, all points
        collinear, repeated points) or a near-singular H.
    """
    c = prepare_correspondences({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, weights, mask)
    p1, p2 = c.points
    w = c.weights
    tol = _default_tol(x1.dtype) if rank_tol is None else rank_tol
    n1 = normalize_points(p1, w)
    n2 = normalize_points(p2, w)
    minimal = x1.shape[-2] == 4
    h1 = torch.cat([n1.points, torch.ones_like(n1.points[..., :1])], -1)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not minimal):
        evals, V = torch.linalg.eigh(_dlt_normal_matrix(h1, n2.points, w))
    ok = c.finite & ((w > 0).sum(-1) >= 4) & torch.isfinite(evals).all(-1)
    ok = ok & (_dlt_gap_ratio(h1.detach(), n2.points.detach(), w.detach(), V[..., 1].detach(),
                              evals[..., -1].detach()) > tol)
    if minimal:  # exactly determined 8x9 system: differentiable projection onto null(A) (see fundamental)
        A = _dlt_design(n1.points, n2.points) * (w > 0).to(w.dtype).repeat_interleave(2, dim=-1)[..., None]
        V = _project_nullspace(A, V[..., :1].detach(), ok)
    Hn = V[..., 0].reshape(*V.shape[:-2], 3, 3)
    return _finish(Hn, n1.T, n2.T, ok, det_tol)


def transfer_error(H: Tensor, x1: Tensor, x2: Tensor, symmetric: bool = False) -> Tensor:
    """Squared transfer error ``|x2 - pi(H x1)|^2`` (plus ``|x1 - pi(H^-1 x2)|^2`` when symmetric), pixels^2.

    Args:
        H: (*B, 3, 3) homographies with ``x2 ~ H x1``, or (*B, S, 3, 3) several hypotheses per problem.
        x1: pixels in image 1, (*B, N, 2).
        x2: pixels in image 2, (*B, N, 2).
        symmetric: add the backward error through ``H^-1`` (computed as the adjugate; scale is irrelevant).

    Returns:
        (*B, N), or (*B, S, N) for stacked hypotheses. Points mapped to infinity get a huge but finite error.
    """
    H, x1, x2 = _check_model_points(H, x1, x2, "H")

    def one_way(M: Tensor, a: Tensor, b: Tensor) -> Tensor:
        h = torch.cat([a, torch.ones_like(a[..., :1])], -1) @ M.transpose(-1, -2)
        z = h[..., 2:]
        tiny = torch.finfo(h.dtype).eps ** 2
        z = torch.where(z.abs() < tiny, torch.where(z < 0, -tiny, tiny).to(z.dtype), z)
        return ((h[..., :2] / z - b) ** 2).sum(-1)

    e = one_way(H, x1, x2)
    if symmetric:
        e = e + one_way(_adj3(H), x2, x1)
    return e
