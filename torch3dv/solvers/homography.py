"""Homography estimation: closed-form 4-point, normalised weighted DLT, transfer error.

Convention (README, "Conventions"): ``x2 ~ H x1`` for pixels x1 in image 1 and x2 in image 2. Returned matrices
are scaled so that ``H[..., 2, 2] = 1`` (OpenCV) when ``|H22| > 100 eps |H|_F`` (2.2e-14 float64, 1.2e-5
float32), else to unit Frobenius norm (pixel homographies legitimately reach ``|H22| / |H|_F ~ 1e-4``).

Both solvers work in Hartley-normalised coordinates (the maths of :func:`torch3dv.linalg.normalize_points`)
and return ``H = T2^-1 Hn T1``.

* :func:`homography_4point` is the closed form through the projective basis: with ``P = [p1 p2 p3]`` (homogeneous
  columns) and ``lam = adj(P) p4``, ``A = P diag(lam)`` maps the canonical frame to the four points, and
  ``H = A2 adj(A1)``. It is polynomial in the coordinates (no division, no decomposition), hence cheap, exactly
  differentiable and finite for every input. A problem fails when one of the four point triples is
  (nearly) collinear in either image: ``|det [pi pj pk]| <= collinear_tol`` in normalised coordinates, where the
  determinant is twice the triangle area (a well-spread quadrilateral gives values of order 1). Default
  ``collinear_tol``: ``sqrt(eps)`` (1.5e-8 float64, 3.5e-4 float32).
* :func:`homography_dlt` minimises ``sum_i w_i |x2h_i x Hn x1h_i|_{1,2}^2`` (two rows per point) over unit
  ``Hn``. For N > 4 that is the smallest eigenvector of the 9x9 normal matrix, assembled from four 3x3 moment
  matrices without forming A and solved as in :mod:`torch3dv.solvers.fundamental` (block inverse iteration
  with an ``eigh`` fallback; ``eigh`` itself under autograd, gradients finite while that eigenvalue is simple).
  For exactly N = 4 the null vector of the 8x9 design comes from its Householder QR, without autograd, and gets
  the derivative of one projection onto the null space (as for the minimal fundamental solvers). The null space
  must be 1-dimensional: for N > 4, ``|W^1/2 A v_1|^2 / l_max > rank_tol`` (Rayleigh quotient of the second
  eigenvector recomputed from the correspondences); for N = 4, ``min_k R_kk^2 / |A|_F^2 > rank_tol`` (QR); see
  :mod:`torch3dv.solvers.fundamental`. Default 1e-18 (float64) / 1e-8 (float32). This catches fewer than 4
  distinct points, three collinear points among four and all points collinear (20000 random 4-point sets: three
  collinear points give <= 1e-23 in float64 and <= 2e-9 in float32, general ones >= 1.6e-14; 0.15% of them fall
  below the float32 threshold).

Both run large batches in chunks on the batch-last layout of :mod:`torch3dv.linalg.batch_last`.

Both also fail for NaN/inf in used rows and for a near-singular result: ``|det Hn| <= det_tol * (|Hn|_F /
sqrt(3))^3`` in the normalised frame, default ``det_tol = sqrt(eps)``. Failed problems return the identity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_points
from torch3dv.linalg import batch_last as bl
from torch3dv.solvers._batching import chunked
from torch3dv.solvers.fundamental import (
    MOMENTS_BF_MIN,
    _adj3,
    _check_model_points,
    _chunk_size,
    _contract_points,
    _default_tol,
    _least_squares_bf,
    _minimal_nullspace_bl,
    _normalized_pair,
    _null_eigvecs,
    _prepare,
    _products6,
    _products6_bf,
    _rank_test,
)


class HomographyResult(NamedTuple):
    """Result of the homography solvers.

    Attributes:
        H: (*B, 3, 3) homographies with ``x2 ~ H x1`` (pixels), H22 = 1 where possible; identity on failure.
        success: (*B,) bool.
    """

    H: Tensor
    success: Tensor


def _finish(Hn: Tensor, s1: Tensor, m1: tuple[Tensor, Tensor], s2: Tensor, m2: tuple[Tensor, Tensor], ok: Tensor,
            det_tol: float | None) -> tuple[Tensor, Tensor]:
    """Batch-last Hn (3, 3, b): singularity test in the normalised frame, ``H = T2^-1 Hn T1``, scaling, identity
    on failure. Returns (H (b, 3, 3), ok (b,))."""
    eps = torch.finfo(Hn.dtype).eps
    dtol = eps ** 0.5 if det_tol is None else det_tol
    nrm2 = Hn.square().sum((0, 1))
    ok = ok & (bl.det3(Hn).abs() > dtol * (nrm2 / 3) ** 1.5)
    c0, c1, c2 = Hn.unbind(1)
    G = torch.stack([c0 * s1, c1 * s1, c2 - s1 * (c0 * m1[0] + c1 * m1[1])], 1)  # Hn T1
    r0, r1, r2 = G.unbind(0)
    inv = 1 / s2
    H = torch.stack([r0 * inv + m2[0] * r2, r1 * inv + m2[1] * r2, r2], 0)  # T2^-1 Hn T1
    fro = H.square().sum((0, 1)).sqrt().clamp_min(torch.finfo(H.dtype).tiny)
    h22 = H[2, 2]
    H = H / torch.where(h22.abs() > 100 * eps * fro, h22, fro)
    ok = ok & torch.isfinite(H.sum((0, 1)))
    H = torch.where(ok, H, _EYE.to(H))
    return H.permute(2, 0, 1).contiguous(), ok


_EYE = torch.eye(3).reshape(3, 3, 1)


def _h4_core(p1: Tensor, p2: Tensor, w: Tensor, finite: Tensor, ctol: float,
             det_tol: float | None) -> tuple[Tensor, Tensor]:
    """Closed-form 4-point homography on flat batches (b, 4, 2)."""
    (u1, v1, s1, mu1, mv1), (u2, v2, s2, mu2, mv2), wt = _normalized_pair(p1, p2, w)
    ok = finite & (wt > 0).all(0)

    def frame(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.stack([u, v, torch.ones_like(u)], 0)  # (3, 4, b): columns are the homogeneous points
        P = h[:, :3]
        lam = (bl.adj3(P) * h[None, :, 3]).sum(1)  # det(P) * P^-1 p4
        # the four triangle determinants: det[p1 p2 p3] and, by Cramer, lam_k = det with p4 replacing p_k
        m = torch.minimum(torch.minimum(bl.det3(P).abs(), lam[0].abs()), torch.minimum(lam[1].abs(), lam[2].abs()))
        return P * lam[None], m

    A1, m1 = frame(u1, v1)
    A2, m2 = frame(u2, v2)
    ok = ok & (m1 > ctol) & (m2 > ctol)
    Hn = (A2[:, :, None] * bl.adj3(A1)[None]).sum(1)
    Hn = Hn * Hn.square().sum((0, 1)).clamp_min(torch.finfo(Hn.dtype).tiny).rsqrt()
    return _finish(Hn, s1, (mu1, mv1), s2, (mu2, mv2), ok, det_tol)


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
    c = _prepare(x1, x2, None, mask)
    p1, p2 = c.points
    ctol = torch.finfo(x1.dtype).eps ** 0.5 if collinear_tol is None else collinear_tol
    lead = c.weights.shape[:-1]
    H, ok = chunked(lambda a, b, ww, f: _h4_core(a, b, ww, f, ctol, det_tol),
                    p1.reshape(-1, 4, 2), p2.reshape(-1, 4, 2), c.weights.reshape(-1, 4), c.finite.reshape(-1),
                    chunk=_chunk_size(4))
    return HomographyResult(H.reshape(*lead, 3, 3), ok.reshape(lead))


def _dlt_normal_index() -> Tensor:
    """Index map from [S0, Su, Sv, Suv (6 entries each), -Su, -Sv, 0] (37 values) to the 9x9 normal matrix
    ``[[S_0, 0, -S_u], [0, S_0, -S_v], [-S_u, -S_v, S_uv]]``."""
    pair = [[0, 1, 2], [1, 3, 4], [2, 4, 5]]
    block = [[0, None, 4], [None, 0, 5], [4, 5, 3]]  # moment k (0..3) or its negation (4: -Su, 5: -Sv)
    idx = torch.empty(81, dtype=torch.long)
    for i in range(3):
        for j in range(3):
            for p in range(3):
                for q in range(3):
                    k = block[i][j]
                    idx[(3 * i + p) * 9 + 3 * j + q] = 36 if k is None else 6 * k + pair[p][q]
    return idx


_DLT_IDX = _dlt_normal_index()


def _dlt_moments(q) -> Tensor:
    """Normal matrix (9, 9, bs) of the weighted DLT design, batch-first blocks."""
    m = torch.stack([q.w, q.w * q.u2, q.w * q.v2, q.w * (q.u2 * q.u2 + q.v2 * q.v2)], 1)  # (bs, 4, N)
    S = (m @ _products6_bf(q.u1, q.v1).mT).permute(1, 2, 0).reshape(24, -1)  # moments of (1, u, v, u^2 + v^2)
    vals = torch.cat([S, -S[6:18], torch.zeros_like(S[:1])], 0)
    return vals[_DLT_IDX.to(vals.device)].reshape(9, 9, -1)


def _dlt_residual_sq(q, G: Tensor) -> Tensor:
    """``sum_n w_n |A_n g|^2`` (bs,) of the DLT rows for G (bs, 3, 3, 1)."""
    a = [G[:, k, 0] * q.u1 + G[:, k, 1] * q.v1 + G[:, k, 2] for k in range(3)]
    ra = q.v2 * a[2] - a[1]
    rb = a[0] - q.u2 * a[2]
    return (q.w * (ra * ra + rb * rb)).sum(-1)


def _dlt_core(p1: Tensor, p2: Tensor, w: Tensor, finite: Tensor, tol: float,
              det_tol: float | None) -> tuple[Tensor, Tensor]:
    """Normalised DLT on flat batches (b, N, 2)."""
    b, n = w.shape
    if n >= MOMENTS_BF_MIN:  # many rows: batch-first normalisation and moments (see the fundamental module)
        h, ok, (s1, mu1, mv1, s2, mu2, mv2) = _least_squares_bf(p1, p2, w, finite, tol, 4, _dlt_moments,
                                                                _dlt_residual_sq)
        return _finish(h.reshape(3, 3, b), s1, (mu1, mv1), s2, (mu2, mv2), ok, det_tol)
    (u1, v1, s1, mu1, mv1), (u2, v2, s2, mu2, mv2), wt = _normalized_pair(p1, p2, w)
    used = (wt > 0).to(wt.dtype)
    ok = finite & (used.sum(0) >= 4)
    if n == 4:  # exactly determined 8x9 system: Householder null vector (see the fundamental module)
        a1, b1 = u1 * used, v1 * used
        z = torch.zeros_like(u1)
        r1 = torch.stack([z, z, z, -a1, -b1, -used, v2 * a1, v2 * b1, v2 * used], 1)
        r2 = torch.stack([a1, b1, used, z, z, z, -u2 * a1, -u2 * b1, -u2 * used], 1)
        A = torch.stack([r1, r2], 1).reshape(2 * n, 9, b)
        fro2 = (used * (u1 * u1 + v1 * v1 + 1) * (u2 * u2 + v2 * v2 + 2)).sum(0)
        N, ratio = _minimal_nullspace_bl(A, ok, fro2)
        h = N[:, 0]
        ok = ok & (ratio > tol)  # NaN fails
    else:
        m = torch.stack([wt, wt * u2, wt * v2, wt * (u2 * u2 + v2 * v2)], 0)  # (4, N, b)
        S = _contract_points(m, _products6(u1, v1)).reshape(24, b)  # S_k for the moments (1, u, v, u^2 + v^2)
        vals = torch.cat([S, -S[6:18], torch.zeros_like(S[:1])], 0)
        M = vals[_DLT_IDX.to(vals.device)].reshape(9, 9, b)
        h, h1, lmax = _null_eigvecs(M)
        with torch.no_grad():  # Rayleigh quotient of the 2nd eigenvector recomputed from the correspondences
            G = h1.reshape(3, 3, b)
            a = [G[k, 0] * u1 + G[k, 1] * v1 + G[k, 2] for k in range(3)]
            ra = v2 * a[2] - a[1]
            rb = a[0] - u2 * a[2]
        ok = ok & _rank_test((wt * (ra * ra + rb * rb)).sum(0).detach(), M.detach(), lmax, tol)
    return _finish(h.reshape(3, 3, b), s1, (mu1, mv1), s2, (mu2, mv2), ok, det_tol)


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
    c = _prepare(x1, x2, weights, mask)
    p1, p2 = c.points
    n = c.weights.shape[-1]
    tol = _default_tol(x1.dtype) if rank_tol is None else rank_tol
    lead = c.weights.shape[:-1]
    H, ok = chunked(lambda a, b, ww, f: _dlt_core(a, b, ww, f, tol, det_tol),
                    p1.reshape(-1, n, 2), p2.reshape(-1, n, 2), c.weights.reshape(-1, n), c.finite.reshape(-1),
                    chunk=_chunk_size(n))
    return HomographyResult(H.reshape(*lead, 3, 3), ok.reshape(lead))


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
