"""Fundamental matrix: normalised weighted 8-point, 7-point, and epipolar error measures.

Convention (README, "Conventions"): ``x2^T F x1 = 0`` for pixels x1 in image 1 and x2 in image 2, i.e. ``F``
maps image-1 points to epipolar lines in image 2.

Both solvers work in Hartley-normalised coordinates (:func:`torch3dv.linalg.normalize_points`, weighted) and
denormalise at the end as ``F = T2^T Fn T1``; the returned matrices have unit Frobenius norm (sign arbitrary).

Degeneracy test. The null space of the (weighted) design matrix ``A`` (rows ``kron(x2n, x1n)``) is read from
the eigen-decomposition ``l_0 <= ... <= l_8``, ``v_0 .. v_8`` of ``A^T W A`` in the normalised frame. The 8-point
solver requires a 1-dimensional null space, the 7-point solver a 2-dimensional one: with ``k = 1`` (8-point)
or ``k = 2`` (7-point) the ratio ``|W^1/2 A v_k|^2 / l_8`` must exceed ``rank_tol``. The numerator is the Rayleigh
quotient recomputed from ``A`` itself, which (unlike ``l_k`` from the squared normal matrix) is not buried in
the rounding of ``A^T W A``. Default ``rank_tol``: 1e-18 for float64 and 1e-8 for float32. Measured on 3000
random scenes each: noise-free planar scenes give ratios <= 3e-25 (float64) and <= 3e-9 (float32); random
non-planar 7/8-point problems give >= 5e-12 (float64; in float32 about 2% of 8-point problems fall below the
threshold and are rejected as numerically degenerate). A planar scene (or
all points sharing one homography) gives a 3-dimensional null space and is reported as failure when it is
noise-free; with pixel noise the null space is only *nearly* degenerate and no threshold can tell it from a
weak general scene, so RANSAC-level degeneracy handling (e.g. DEGENSAC) remains the caller's job.

Gradients. For N > 8 the 8-point null vector comes from ``eigh`` of the 9x9 normal matrix (finite gradients
whenever the smallest eigenvalue is simple, which the degeneracy test enforces); for exactly 8 rows it is
projected like the 7-point basis below (more accurate in float32 too). The rank-2 projection is a closed form
(smallest eigenpair of ``F^T F`` via its characteristic cubic, no SVD), differentiable while the two smallest
singular values differ. The 7-point null space is 2-dimensional, where the
individual eigenvectors of ``eigh`` have no derivative; instead the basis ``N0`` is computed without autograd and
corrected by one differentiable projection ``N = N0 - A^T (A A^T)^-1 A N0``, whose value is ``N0`` and whose
derivative is the exact first-order variation of the null space. The cubic roots get implicit-function
gradients (:mod:`torch3dv.linalg.cubic`). Failed problems return zeros; do not back-propagate through them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_points, check_same_device_dtype, check_shape, prepare_correspondences
from torch3dv.linalg.cubic import real_cubic_roots
from torch3dv.linalg.normalization import normalize_points
from torch3dv.linalg.nullspace import weighted_design_nullspace


class FundamentalResult(NamedTuple):
    """Result of :func:`fundamental_8point`.

    Attributes:
        F: (*B, 3, 3) fundamental matrices, rank 2, unit Frobenius norm; zeros where ``success`` is False.
        success: (*B,) bool.
    """

    F: Tensor
    success: Tensor


class FundamentalSolutions(NamedTuple):
    """Result of :func:`fundamental_7point`.

    Attributes:
        F: (*B, 3, 3, 3) up to three fundamental matrices (solution axis third from last), unit Frobenius norm;
            zeros in invalid slots.
        valid: (*B, 3) bool, which slots hold a solution.
        success: (*B,) bool, ``valid.any(-1)``.
    """

    F: Tensor
    valid: Tensor
    success: Tensor


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-18 if dtype == torch.float64 else 1e-8


def _gap_ratio(A: Tensor, w: Tensor | None, V: Tensor, evals: Tensor, k: int) -> Tensor:
    """Rayleigh quotient of eigenvector k recomputed from A, relative to the largest eigenvalue (module doc)."""
    r = (A @ V[..., k:k + 1].detach())[..., 0] ** 2
    if w is not None:
        r = r * w
    return r.sum(-1) / evals[..., -1]


def _design(x1n: Tensor, x2n: Tensor) -> Tensor:
    """Rows kron(x2h, x1h) (..., N, 9) so that ``A @ F.flatten() = x2h^T F x1h``."""
    o = torch.ones_like(x1n[..., :1])
    h1 = torch.cat([x1n, o], -1)
    h2 = torch.cat([x2n, o], -1)
    return (h2[..., :, None] * h1[..., None, :]).flatten(-2)


def _denormalize(Fn: Tensor, T1: Tensor, T2: Tensor) -> Tensor:
    F = T2.transpose(-1, -2) @ Fn @ T1
    return F / F.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(F.dtype).tiny)[..., None, None]


def _stand_in(like: Tensor) -> Tensor:
    """A well-conditioned 3x3 matrix with distinct singular values (safe input for SVD of failed problems)."""
    return torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=like.dtype, device=like.device)).expand_as(like)


def _rank2(F: Tensor) -> Tensor:
    """Closest rank-2 matrix in Frobenius norm, ``F (I - v v^T)`` with v the smallest right singular vector.

    Closed form (no SVD): the smallest eigenvalue of ``S = F^T F`` from its characteristic cubic, and v as the
    largest cross product of two rows of ``S - lambda I``. Differentiable while the two smallest singular
    values differ.
    """
    S = F.transpose(-1, -2) @ F
    tr = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    c2 = 0.5 * (tr * tr - (S * S).sum((-1, -2)))  # sum of principal 2x2 minors
    lam, valid = real_cubic_roots(torch.ones_like(tr), -tr, c2, -_det3(S))
    lam = torch.where(valid, lam, torch.full_like(lam, float("inf"))).amin(-1)
    lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam))
    R = S - lam[..., None, None] * torch.eye(3, dtype=F.dtype, device=F.device)
    r0, r1, r2 = R[..., 0, :], R[..., 1, :], R[..., 2, :]
    cands = torch.stack([torch.linalg.cross(r0, r1, dim=-1), torch.linalg.cross(r1, r2, dim=-1),
                         torch.linalg.cross(r2, r0, dim=-1)], -2)
    idx = cands.detach().norm(dim=-1).argmax(-1)
    v = torch.gather(cands, -2, idx[..., None, None].expand(*idx.shape, 1, 3))[..., 0, :]
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(F.dtype).tiny)
    return F - (F @ v[..., :, None]) @ v[..., None, :]


def _project_nullspace(A: Tensor, N0: Tensor, ok: Tensor) -> Tensor:
    """One differentiable Newton projection of a detached null basis N0 (..., 9, k) onto null(A), A (..., m, 9).

    ``N = N0 - A^T (A A^T)^-1 A N0`` (Cholesky); where ``ok`` is False or ``A A^T`` is numerically not positive
    definite, N0 is returned unchanged.
    """
    AAt = A @ A.transpose(-1, -2)
    eye = torch.eye(A.shape[-2], dtype=A.dtype, device=A.device)
    AAt = torch.where(ok[..., None, None], AAt, eye)
    L, info = torch.linalg.cholesky_ex(AAt)
    good = (info == 0)[..., None, None]  # numerically indefinite (float32, near-degenerate): keep N0
    L = torch.where(good, L, eye)
    N = N0 - A.transpose(-1, -2) @ torch.cholesky_solve(A @ N0, L)
    return torch.where(good, N, N0)


def fundamental_8point(
    x1: Tensor,
    x2: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    rank_tol: float | None = None,
) -> FundamentalResult:
    """Normalised weighted 8-point algorithm with rank-2 enforcement.

    Minimises ``sum_i w_i (x2n_i^T Fn x1n_i)^2`` over unit-norm ``Fn`` in Hartley-normalised coordinates (the
    normalisation is itself weighted), zeroes the smallest singular value of ``Fn`` and denormalises.

    Args:
        x1: pixels in image 1, (*B, N, 2).
        x2: corresponding pixels in image 2, (*B, N, 2).
        weights: optional non-negative weights (*B, N); a weight acts as a row multiplicity.
        mask: optional bool (*B, N); False rows are padding (may hold NaN) and are ignored.
        rank_tol: eigenvalue-ratio threshold of the degeneracy test (module doc); default dtype-dependent.

    Returns:
        ``FundamentalResult(F (*B, 3, 3), success (*B,))``. ``success`` is False for fewer than 8 points with
        non-zero weight, NaN/inf in a used row, or a design matrix whose null space is not 1-dimensional
        (e.g. a noise-free planar scene). Failed problems hold ``F = 0``.
    """
    c = prepare_correspondences({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, weights, mask)
    p1, p2 = c.points
    w = c.weights
    tol = _default_tol(x1.dtype) if rank_tol is None else rank_tol
    n1 = normalize_points(p1, w)
    n2 = normalize_points(p2, w)
    A = _design(n1.points, n2.points)
    minimal = x1.shape[-2] == 8
    with torch.set_grad_enabled(torch.is_grad_enabled() and not minimal):
        V, evals = weighted_design_nullspace(A, w, 2)
    ok = c.finite & ((w > 0).sum(-1) >= 8) & torch.isfinite(evals).all(-1)
    ok = ok & (_gap_ratio(A.detach(), w.detach(), V, evals.detach(), 1) > tol)
    if minimal:  # exactly determined: project onto null(A) (accuracy and exact gradients, module doc)
        V = _project_nullspace(A * (w > 0).to(A.dtype)[..., None], V[..., :1].detach(), ok)
    Fn = V[..., 0].reshape(*V.shape[:-2], 3, 3)
    Fn = torch.where(ok[..., None, None], Fn, _stand_in(Fn))
    Fn2 = _rank2(Fn)
    F = _denormalize(Fn2, n1.T, n2.T)
    ok = ok & torch.isfinite(F).flatten(-2).all(-1)
    F = torch.where(ok[..., None, None], F, torch.zeros_like(F))
    return FundamentalResult(F, ok)


def _adj3(M: Tensor) -> Tensor:
    """Adjugate of 3x3 matrices (..., 3, 3): columns are cross products of rows."""
    r0, r1, r2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    cols = [torch.linalg.cross(r1, r2, dim=-1), torch.linalg.cross(r2, r0, dim=-1), torch.linalg.cross(r0, r1, dim=-1)]
    return torch.stack(cols, dim=-1)


def _det3(M: Tensor) -> Tensor:
    return (M[..., 0, :] * torch.linalg.cross(M[..., 1, :], M[..., 2, :], dim=-1)).sum(-1)


def fundamental_7point(
    x1: Tensor, x2: Tensor, mask: Tensor | None = None, rank_tol: float | None = None
) -> FundamentalSolutions:
    """Minimal 7-point solver: up to three fundamental matrices.

    The 7x9 design matrix (normalised coordinates) has a 2-dimensional null space ``{l F1 + m F2}``; the rank
    constraint ``det(l F1 + m F2) = 0`` is a homogeneous cubic, solved in closed form in ``m / l`` or ``l / m``
    (whichever has the larger leading coefficient, so no solution is lost at infinity).

    Args:
        x1: pixels in image 1, (*B, 7, 2).
        x2: pixels in image 2, (*B, 7, 2).
        mask: optional bool (*B, 7); a problem with a masked-out row has only 6 points and fails.
        rank_tol: threshold of the degeneracy test (module doc); default dtype-dependent.

    Returns:
        ``FundamentalSolutions(F (*B, 3, 3, 3), valid (*B, 3), success (*B,))``.
    """
    check_points(x1, "x1", 2)
    if x1.shape[-2] != 7:
        raise ValueError(f"fundamental_7point needs exactly 7 correspondences, got x1 of shape {tuple(x1.shape)}")
    c = prepare_correspondences({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, None, mask)
    p1, p2 = c.points
    w = c.weights
    tol = _default_tol(x1.dtype) if rank_tol is None else rank_tol
    n1 = normalize_points(p1, w)
    n2 = normalize_points(p2, w)
    A = _design(n1.points, n2.points) * w[..., None]  # (..., 7, 9)
    with torch.no_grad():
        M = A.transpose(-1, -2) @ A
        evals, evecs = torch.linalg.eigh(0.5 * (M + M.transpose(-1, -2)))
    ok = c.finite & ((w > 0).sum(-1) == 7) & torch.isfinite(evals).all(-1)
    ok = ok & (_gap_ratio(A.detach(), None, evecs, evals, 2) > tol)
    N = _project_nullspace(A, evecs[..., :2], ok)
    F1 = N[..., 0].reshape(*N.shape[:-2], 3, 3)
    F2 = N[..., 1].reshape(*N.shape[:-2], 3, 3)
    d1, d2 = _det3(F1), _det3(F2)
    t12 = (_adj3(F1) * F2.transpose(-1, -2)).sum((-1, -2))  # tr(adj(F1) F2)
    t21 = (_adj3(F2) * F1.transpose(-1, -2)).sum((-1, -2))  # tr(adj(F2) F1)
    # det(F1 + z F2) = d2 z^3 + t21 z^2 + t12 z + d1 ; det(z F1 + F2) = d1 z^3 + t12 z^2 + t21 z + d2
    use_t = d2.detach().abs() >= d1.detach().abs()
    ca = torch.where(use_t, d2, d1)
    cb = torch.where(use_t, t21, t12)
    cc = torch.where(use_t, t12, t21)
    cd = torch.where(use_t, d1, d2)
    z, valid = real_cubic_roots(ca, cb, cc, cd)  # (..., 3)
    zz = z[..., None, None]
    Fa, Fb = F1[..., None, :, :], F2[..., None, :, :]
    Fn = torch.where(use_t[..., None, None, None], Fa + zz * Fb, zz * Fa + Fb)  # (..., 3, 3, 3)
    F = _denormalize(Fn, n1.T[..., None, :, :], n2.T[..., None, :, :])
    valid = valid & ok[..., None] & torch.isfinite(F).flatten(-2).all(-1)
    F = torch.where(valid[..., None, None], F, torch.zeros_like(F))
    return FundamentalSolutions(F, valid, valid.any(-1))


def _check_model_points(M: Tensor, x1: Tensor, x2: Tensor, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """Validates a model (*B, 3, 3) or (*B, S, 3, 3) against points (*B, N, 2); returns broadcastable views."""
    check_shape(M, name, (3, 3), "(*B, 3, 3) or (*B, S, 3, 3)")
    check_float(M, name)
    check_points(x1, "x1", 2)
    check_points(x2, "x2", 2)
    check_same_device_dtype({name: M, "x1": x1, "x2": x2})
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if M.ndim == x1.ndim + 1:  # several models per problem: points (*B, 1, N, 2)
        x1, x2 = x1[..., None, :, :], x2[..., None, :, :]
    return M, x1, x2


def _epipolar_terms(F: Tensor, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x2^T F x1, |(F x1)_{0:2}|^2, |(F^T x2)_{0:2}|^2), each (..., N)."""
    o = torch.ones_like(x1[..., :1])
    h1 = torch.cat([x1, o], -1)
    h2 = torch.cat([x2, o], -1)
    Fx1 = h1 @ F.transpose(-1, -2)  # (..., N, 3) rows F x1
    Ftx2 = h2 @ F  # rows F^T x2
    num = (h2 * Fx1).sum(-1)
    return num, (Fx1[..., :2] ** 2).sum(-1), (Ftx2[..., :2] ** 2).sum(-1)


def sampson_distance(F: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    """Squared Sampson error ``(x2^T F x1)^2 / (|F x1|_{12}^2 + |F^T x2|_{12}^2)``, pixels^2.

    Args:
        F: (*B, 3, 3) fundamental matrices, or (*B, S, 3, 3) several hypotheses per problem.
        x1: pixels in image 1, (*B, N, 2).
        x2: pixels in image 2, (*B, N, 2).

    Returns:
        (*B, N), or (*B, S, N) for stacked hypotheses. A zero denominator (e.g. F = 0) is clamped so the result
        stays finite.
    """
    F, x1, x2 = _check_model_points(F, x1, x2, "F")
    num, a, b = _epipolar_terms(F, x1, x2)
    return num * num / (a + b).clamp_min(torch.finfo(F.dtype).tiny)


def symmetric_epipolar_distance(F: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    """Squared symmetric epipolar distance: sum of squared point-to-epipolar-line distances in both images.

    ``(x2^T F x1)^2 (1 / |F x1|_{12}^2 + 1 / |F^T x2|_{12}^2)``, pixels^2. Shapes as in :func:`sampson_distance`.
    """
    F, x1, x2 = _check_model_points(F, x1, x2, "F")
    num, a, b = _epipolar_terms(F, x1, x2)
    tiny = torch.finfo(F.dtype).tiny
    n2 = num * num
    return n2 / a.clamp_min(tiny) + n2 / b.clamp_min(tiny)
