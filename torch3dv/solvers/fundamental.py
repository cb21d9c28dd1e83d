"""Fundamental matrix: normalised weighted 8-point, 7-point, and epipolar error measures.

Convention (README, "Conventions"): ``x2^T F x1 = 0`` for pixels x1 in image 1 and x2 in image 2, i.e. ``F``
maps image-1 points to epipolar lines in image 2.

Both solvers work in Hartley-normalised coordinates (weighted; the maths of
:func:`torch3dv.linalg.normalize_points`) and denormalise at the end as ``F = T2^T Fn T1``; the returned matrices
have unit Frobenius norm (sign arbitrary).

Null space. The design matrix ``A`` has rows ``kron(x2n, x1n)`` (homogeneous, normalised).

* Minimal problems (exactly 8 rows for the 8-point solver, the 7-point solver) take the null space of ``A``
  itself from a Householder QR of ``A^T`` (plus one step of iterative refinement in float64)
  (:func:`torch3dv.linalg.batch_last.householder_nullspace`): backward stable, no squared condition number,
  and much cheaper than ``eigh`` of ``A^T A``.
* Least squares (N > 8) takes the smallest eigenvector of ``A^T W A`` (assembled from point moments, without
  forming A) by block inverse iteration with a Rayleigh-Ritz step and a residual check, falling back to
  ``torch.linalg.eigh`` for the rare unconverged problem (:func:`_null_eigvecs`); its residuals are at or below
  those of ``eigh``. From ``MOMENTS_BF_MIN`` (32) rows on, normalisation and moments run batch-first in
  cache-sized blocks of problems, the moments as one batched matmul (:func:`_least_squares_bf`, shared with
  the DLT and the essential 8-point solver): about 3x faster at N = 512 than the batch-last layout, which
  needs a transposed copy of every point and one multiply-add per row.

Degeneracy test. The 8-point solver requires a 1-dimensional null space, the 7-point solver a 2-dimensional
one. Minimal problems: ``min_k R_kk^2 / |A|_F^2 > rank_tol``, with ``|R_kk|`` the distance of row k of ``A``
from the span of the previous rows (QR above; rows of zero weight are zeroed, other weights cannot change an
exactly determined solution). Least squares: ``|W^1/2 A v_1|^2 / l_max > rank_tol`` for the
second eigenvector ``v_1`` (Rayleigh quotient recomputed from the correspondences, which unlike the eigenvalue
of the squared normal matrix is not buried in its rounding) and the largest eigenvalue ``l_max``. Defaults:
1e-18 for float64; 1e-8 for float32 (1e-7 for the 7-point solver). Measured on 20000 noise-free scenes each:
planar scenes give ratios <= 3e-24 (float64) and <= 4e-12 (8 points) / 4e-8 (7 points) in float32; general
7/8-point problems give >= 1e-13 and are all accepted in float64, while in float32 0.6% of the 8-point and
0.05% of the 7-point problems fall below the threshold and are rejected as numerically degenerate. A planar
scene (or all points sharing one homography) gives a 3-dimensional null space and is reported as failure when
it is noise-free; with pixel noise the null space is only *nearly* degenerate and no threshold can tell it from
a weak general scene, so RANSAC-level degeneracy handling (e.g. DEGENSAC) remains the caller's job.

Gradients. For N > 8 with autograd on, the null vector comes from ``eigh`` of the 9x9 normal matrix (finite
gradients whenever the smallest eigenvalue is simple, which the degeneracy test enforces). Minimal null spaces
are computed without autograd and given the derivative of one projection ``N0 - A^T (A A^T)^-1 A N0`` while
keeping their value (``N0 + (P - P.detach())``): that derivative is the exact first-order variation of the
null space, also for the 2-dimensional 7-point one where individual eigenvectors have none. The rank-2
projection is a closed form (smallest eigenpair of ``F^T F`` from its characteristic cubic with implicit-function
gradients, no SVD), differentiable while the two smallest singular values differ; the 7-point cubic roots get
implicit-function gradients too (:mod:`torch3dv.linalg.cubic`). Failed problems return zeros; do not
back-propagate through them.

Speed. Large batches run in chunks of a few thousand problems on the batch-last layout of
:mod:`torch3dv.linalg.batch_last`: at batch 10^5 on one CPU thread the minimal solvers take well under a
microsecond per problem of LAPACK-free element-wise work.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import (
    Correspondences,
    check_float,
    check_matching_points,
    check_points,
    check_same_device_dtype,
    check_shape,
    prepare_correspondences,
)
from torch3dv.linalg import batch_last as bl
from torch3dv.linalg.batch_last import householder_nullspace
from torch3dv.linalg.cubic import real_cubic_roots_first
from torch3dv.solvers._batching import CHUNK, chunked


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


def _prepare(x1: Tensor, x2: Tensor, weights: Tensor | None, mask: Tensor | None) -> Correspondences:
    """:func:`torch3dv._checks.prepare_correspondences` with a cheaper test for its no-mask, no-weights fast path.

    Without mask and weights, one global sum per tensor decides that every row is finite (NaN and inf propagate
    into it; a sum that merely overflows sends us to the full per-row check), so the common case skips the
    per-row reductions, which cost more than the 8-point solver itself at batch 10^5 on a CPU. Same result.
    """
    if weights is None and mask is None:
        named = {"x1": x1, "x2": x2}
        check_matching_points(named, {"x1": 2, "x2": 2})
        if bool(torch.isfinite(x1.sum() + x2.sum())):
            lead = x1.shape[:-1]
            return Correspondences((x1, x2), torch.ones(lead, dtype=x1.dtype, device=x1.device),
                                   torch.ones(lead[:-1], dtype=torch.bool, device=x1.device))
    return prepare_correspondences({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, weights, mask)


def _default_tol(dtype: torch.dtype, seven: bool = False) -> float:
    return 1e-18 if dtype == torch.float64 else (1e-7 if seven else 1e-8)


def _adj3(M: Tensor) -> Tensor:
    """Adjugate of 3x3 matrices (..., 3, 3): columns are cross products of rows."""
    r0, r1, r2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    cols = [torch.linalg.cross(r1, r2, dim=-1), torch.linalg.cross(r2, r0, dim=-1), torch.linalg.cross(r0, r1, dim=-1)]
    return torch.stack(cols, dim=-1)


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


# ---------------------------------------------------------------------------------------------------------------
# batch-last internals (torch3dv.linalg.batch_last): points (N, b), 3x3 matrices (3, 3, ..., b)


def _chunk_size(n: int) -> int:
    """Problems per chunk: per intra-op thread, up to ``CHUNK`` problems and about 2^18 correspondences.

    Scaling with the thread count keeps each thread's share of an operation cache-sized while the number of
    parallel regions (one fork/join per operation and chunk) stays that of one thread.
    """
    return max(256, min(CHUNK, (1 << 18) // max(n, 1))) * max(torch.get_num_threads(), 1)


def _normalized_pair(p1: Tensor, p2: Tensor, w: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
    """Both images' points (b, N, 2) and weights (b, N), batch-last and Hartley-normalised in one pass.

    Returns ``((u1, v1, s1, mu1, mv1), (u2, v2, s2, mu2, mv2), wt)``: coordinates (N, b), scales and centroids
    (b,), weights (N, b).
    """
    xt = torch.stack([p1, p2], 0).permute(3, 2, 0, 1).contiguous()  # (2 coords, N, 2 images, b)
    wt = w.t().contiguous()
    u, v, s, mu, mv = bl.normalize_points(xt[0], xt[1], wt[:, None])
    return (u[:, 0], v[:, 0], s[0], mu[0], mv[0]), (u[:, 1], v[:, 1], s[1], mu[1], mv[1]), wt


class _PairBF(NamedTuple):
    """Hartley-normalised coordinates of both images, batch-first: u1, v1, u2, v2 and weights w (b, N); scales
    and centroids s1, mu1, mv1, s2, mu2, mv2 (b,)."""

    u1: Tensor
    v1: Tensor
    u2: Tensor
    v2: Tensor
    w: Tensor
    s1: Tensor
    mu1: Tensor
    mv1: Tensor
    s2: Tensor
    mu2: Tensor
    mv2: Tensor


# least-squares problems with at least this many rows are normalised and reduced batch-first: their moments are
# then one batched matmul per problem block instead of N batch-last multiply-adds, and no transposed copy of the
# points is made (about 3x faster at N = 512)
MOMENTS_BF_MIN = 32


def _normalized_pair_bf(p1: Tensor, p2: Tensor, w: Tensor, eps: float = 1e-12) -> _PairBF:
    """Weighted Hartley normalisation of points p1, p2 (b, N, 2) with weights w (b, N), batch-first (same maths
    as :func:`torch3dv.linalg.batch_last.normalize_points`)."""
    wsum = w.sum(-1).clamp_min(eps)[:, None]  # (b, 1)
    P = torch.cat([p1, p2], -1)  # (b, N, 4)
    c = (w[:, None, :] @ P)[:, 0] / wsum  # (b, 4) weighted centroids
    d = P - c[:, None, :]
    dd = d * d
    dist = torch.stack([dd[..., 0] + dd[..., 1], dd[..., 2] + dd[..., 3]], -1).add_(eps * eps).sqrt_()  # (b, N, 2)
    s = math.sqrt(2.0) / ((w[:, None, :] @ dist)[:, 0] / wsum).clamp_min(eps)  # (b, 2)
    x = d * s.repeat_interleave(2, dim=-1)[:, None, :]
    return _PairBF(x[..., 0], x[..., 1], x[..., 2], x[..., 3], w, s[:, 0], c[:, 0], c[:, 1], s[:, 1], c[:, 2],
                   c[:, 3])


def _products6_bf(u: Tensor, v: Tensor) -> Tensor:
    """:func:`_products6` batch-first: (b, 6, N) from u, v (b, N)."""
    return torch.stack([u * u, u * v, u, v * v, v, torch.ones_like(u)], 1)


_BF_ROWS = 1 << 16  # rows per block of the batch-first moment assembly (cache-sized temporaries)


def _least_squares_bf(p1: Tensor, p2: Tensor, w: Tensor, finite: Tensor, tol: float, min_rows: int,
                      moments, residual_sq) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Weighted least-squares null vector of a 9-column design in Hartley-normalised coordinates, batch-first.

    ``moments(q)`` maps a block of :class:`_PairBF` (bs problems) to its normal matrix (9, 9, bs);
    ``residual_sq(q, G)`` gives ``sum_n w_n |A_n g|^2`` (bs,) for candidates G (bs, 3, 3, 1). The points are
    normalised and reduced in blocks of about ``_BF_ROWS`` rows, the eigenproblem runs once on the whole batch,
    and the degeneracy test (module doc) takes the Rayleigh quotient of the second eigenvector from the normal
    matrix where that already decides it (its rounding error is below ``64 eps tr(M)``, far above ``tol l_max``),
    recomputing it from the points only for the rest.

    Returns ``(null vector (9, b), ok (b,), (s1, mu1, mv1, s2, mu2, mv2))``.
    """
    b, n = w.shape
    step = max(1, _BF_ROWS // max(n, 1))
    Ms, norms = [], []
    for s in range(0, b, step):
        q = _normalized_pair_bf(p1[s:s + step], p2[s:s + step], w[s:s + step])
        Ms.append(moments(q))
        norms.append(torch.stack([q.s1, q.mu1, q.mv1, q.s2, q.mu2, q.mv2], 0))
    M = torch.cat(Ms, -1) if len(Ms) > 1 else Ms[0]
    norm = torch.cat(norms, -1) if len(norms) > 1 else norms[0]
    ok = finite & ((w > 0).sum(-1) >= min_rows)
    f, f1, lmax = _null_eigvecs(M)
    with torch.no_grad():
        Md = M.detach()
        tr = _trace9(Md)
        num = (f1 * bl.matmul(Md, f1)).sum(0)  # Rayleigh quotient from the normal matrix
        exact = ~(num > (64 * torch.finfo(M.dtype).eps + tol) * tr)
        if bool(exact.any()):
            idx = exact.nonzero()[:, 0]
            q = _normalized_pair_bf(p1[idx], p2[idx], w[idx])
            num[idx] = residual_sq(q, f1[:, idx].reshape(3, 3, -1).permute(2, 0, 1)[..., None])
    ok = ok & _rank_test(num, Md, lmax, tol)
    return f, ok, norm.unbind(0)


def _minimal_nullspace_bl(A: Tensor, ok: Tensor, fro2: Tensor, refine: bool | None = None) -> tuple[Tensor, Tensor]:
    """Orthonormal null basis (9, 9 - m, b) of minimal designs A (m, 9, b) and the rank-test ratio (b,).

    :func:`torch3dv.linalg.batch_last.householder_nullspace` (refined in float64, where it then matches the
    accuracy of the former eigh + projection; in float32 the unrefined basis is already more accurate than
    that); with autograd on, the gradient comes from one
    differentiable projection (:func:`_project_nullspace`) while the value stays the Householder basis
    (``N0 + (P - P.detach())``), so results do not depend on whether gradients are requested. The ratio is
    ``min_k R_kk^2 / |A|_F^2`` (module doc); ``fro2`` = ``|A|_F^2``.
    """
    N0, r = householder_nullspace(A, refine=(A.dtype == torch.float64) if refine is None else refine)
    ratio = r.square().amin(0) / fro2.detach().clamp_min(torch.finfo(A.dtype).tiny)
    if not A.requires_grad:
        return N0, ratio
    Abf = A.permute(2, 0, 1)
    N0bf = N0.permute(2, 0, 1)
    P = _project_nullspace(Abf, N0bf, ok & torch.isfinite(ratio))
    return (N0bf + (P - P.detach())).permute(1, 2, 0), ratio


def _null_eigvecs(M: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Smallest and second smallest eigenvectors (9, b) of normal matrices M (9, 9, b), and the largest
    eigenvalue (b,) where it comes for free (else None; see :func:`_rank_test`).

    Without autograd: :func:`torch3dv.linalg.batch_last.smallest_eigenpairs` (block inverse iteration, 6 steps in
    float64, 3 in float32); problems whose residual ``|M v - l v|`` exceeds ``4 eps tr(M)`` (not converged: the
    smallest eigenvalue is nearly repeated; about 1 in 10^4 noisy problems) are redone with
    ``torch.linalg.eigh``, whose own residuals reach ``1.5 eps tr(M)``. With autograd, ``eigh`` for all (for its
    gradient). The second eigenvector only serves the degeneracy test and carries no gradient.
    """
    if torch.is_grad_enabled() and M.requires_grad:
        evals, V = torch.linalg.eigh(M.permute(2, 0, 1))
        return V[..., 0].t(), V[..., 1].t().detach(), evals[:, -1].detach()
    v0, v1, _, res = bl.smallest_eigenpairs(M, 6 if M.dtype == torch.float64 else 3)
    tr = _trace9(M)
    redo = ~(res <= 4 * torch.finfo(M.dtype).eps * tr) & torch.isfinite(tr)
    if bool(redo.any()):
        idx = redo.nonzero()[:, 0]
        _, V = torch.linalg.eigh(M[:, :, idx].permute(2, 0, 1))
        v0[:, idx] = V[..., 0].t()
        v1[:, idx] = V[..., 1].t()
    return v0, v1, None


def _trace9(M: Tensor) -> Tensor:
    return M[0, 0] + M[1, 1] + M[2, 2] + M[3, 3] + M[4, 4] + M[5, 5] + M[6, 6] + M[7, 7] + M[8, 8]


@torch.no_grad()
def _rank_test(num: Tensor, M: Tensor, lmax: Tensor | None, tol: float) -> Tensor:
    """``num / l_max > tol`` (module doc) with ``l_max`` of M (9, 9, b) estimated only where it matters.

    ``tr(M) / 9 <= l_max <= tr(M)`` already decides every problem with ``num > tol tr`` (pass) or
    ``9 num <= tol tr`` (fail); the few in between get :func:`torch3dv.linalg.batch_last.largest_eigenvalue`.
    """
    if lmax is not None:
        return num / lmax > tol  # NaN fails
    tr = _trace9(M)
    ok = num > tol * tr
    undecided = ~ok & (9 * num > tol * tr)
    if bool(undecided.any()):
        idx = undecided.nonzero()[:, 0]
        ok[idx] = num[idx] > tol * bl.largest_eigenvalue(M[:, :, idx])
    return ok


def _sym_pairs(M6: Tensor) -> Tensor:
    """Expands moments over the 6 symmetric index pairs of two 3-vectors into the 9x9 Kronecker layout."""
    return M6.reshape(36, -1)[_KRON_IDX.to(M6.device)].reshape(9, 9, -1)


def _pair_index() -> Tensor:
    pair = [[0, 1, 2], [1, 3, 4], [2, 4, 5]]
    idx = torch.empty(81, dtype=torch.long)
    for p in range(3):
        for q in range(3):
            for r in range(3):
                for s in range(3):
                    idx[(3 * p + q) * 9 + 3 * r + s] = pair[p][r] * 6 + pair[q][s]
    return idx


_KRON_IDX = _pair_index()


def _products6(u: Tensor, v: Tensor) -> Tensor:
    """The 6 distinct entries of h h^T for h = (u, v, 1): (6, N, b) in the order uu, uv, u, vv, v, 1."""
    return torch.stack([u * u, u * v, u, v * v, v, torch.ones_like(u)], 0)


def _contract_points(P: Tensor, Q: Tensor) -> Tensor:
    """``sum_n P[:, n] Q[:, n]^T`` for P (p, N, b), Q (q, N, b) -> (p, q, b).

    A loop of in-place multiply-adds over n (each step one vectorised update of the (p, q, b) block) unless n is
    large against b or autograd is on: a batched matmul on these batch-last views copies every problem's slice
    separately and costs ~35 us per problem on a CPU, against ~4 us per loop step.
    """
    n, b = P.shape[1], P.shape[2]
    grad = torch.is_grad_enabled() and (P.requires_grad or Q.requires_grad)
    if n <= 64 or (not grad and n <= 8 * b):
        out = P[:, 0, None] * Q[None, :, 0]
        for i in range(1, n):
            out.addcmul_(P[:, i, None], Q[None, :, i])
        return out
    return (P.permute(2, 0, 1) @ Q.permute(2, 1, 0)).permute(1, 2, 0)


def _denormalize_bl(G: Tensor, s1: Tensor, m1: tuple[Tensor, Tensor], s2: Tensor, m2: tuple[Tensor, Tensor]) -> Tensor:
    """``T2^T G T1`` for ``T = [[s, 0, -s mu], [0, s, -s mv], [0, 0, 1]]``, G (3, 3, ..., b), unit Frobenius norm."""
    t1u, t1v = -s1 * m1[0], -s1 * m1[1]
    t2u, t2v = -s2 * m2[0], -s2 * m2[1]
    c0, c1, c2 = G.unbind(1)
    GT = torch.stack([c0 * s1, c1 * s1, c0 * t1u + c1 * t1v + c2], 1)  # G T1
    r0, r1, r2 = GT.unbind(0)
    F = torch.stack([r0 * s2, r1 * s2, r0 * t2u + r1 * t2v + r2], 0)  # T2^T G T1
    return F * F.square().sum((0, 1)).clamp_min(torch.finfo(F.dtype).tiny).rsqrt()


def _f8_moments(q: _PairBF) -> Tensor:
    """Normal matrix (9, 9, bs) of the weighted epipolar design, batch-first blocks."""
    return _sym_pairs(((_products6_bf(q.u2, q.v2) * q.w[:, None]) @ _products6_bf(q.u1, q.v1).mT).permute(1, 2, 0))


def _f8_residual_sq(q: _PairBF, G: Tensor) -> Tensor:
    """``sum_n w_n (x2n^T G x1n)^2`` (bs,) for G (bs, 3, 3, 1)."""
    t = [G[:, p, 0] * q.u1 + G[:, p, 1] * q.v1 + G[:, p, 2] for p in range(3)]
    res = q.u2 * t[0] + q.v2 * t[1] + t[2]
    return (q.w * res * res).sum(-1)


def _f8_core(p1: Tensor, p2: Tensor, w: Tensor, finite: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """8-point on flat batches (b, N, 2); returns (F (b, 3, 3), ok (b,))."""
    b, n = w.shape
    if n >= MOMENTS_BF_MIN:  # least squares on many rows: batch-first normalisation and moments
        f, ok, (s1, mu1, mv1, s2, mu2, mv2) = _least_squares_bf(p1, p2, w, finite, tol, 8, _f8_moments,
                                                                 _f8_residual_sq)
    else:
        (u1, v1, s1, mu1, mv1), (u2, v2, s2, mu2, mv2), wt = _normalized_pair(p1, p2, w)
        used = (wt > 0).to(wt.dtype)
        ok = finite & (used.sum(0) >= 8)
        if n == 8:  # exactly determined: Householder null vector of the 8x9 design (module doc)
            a2, b2 = u2 * used, v2 * used
            A = torch.stack([a2 * u1, a2 * v1, a2, b2 * u1, b2 * v1, b2, used * u1, used * v1, used], 1)  # (8, 9, b)
            fro2 = (used * (u1 * u1 + v1 * v1 + 1) * (u2 * u2 + v2 * v2 + 1)).sum(0)
            N, ratio = _minimal_nullspace_bl(A, ok, fro2)
            f = N[:, 0]
            ok = ok & (ratio > tol)  # NaN fails
        else:  # least squares: smallest eigenvector of A^T W A, assembled from point moments
            M = _sym_pairs(_contract_points(_products6(u2, v2) * wt, _products6(u1, v1)))
            f, f1, lmax = _null_eigvecs(M)
            with torch.no_grad():  # Rayleigh quotient of the 2nd eigenvector, recomputed from the points
                G = f1.reshape(3, 3, b)
                t = [G[p, 0] * u1 + G[p, 1] * v1 + G[p, 2] for p in range(3)]
                res = u2 * t[0] + v2 * t[1] + t[2]
            ok = ok & _rank_test((wt * res * res).sum(0).detach(), M.detach(), lmax, tol)
    Fn = f.reshape(3, 3, b)
    Fn = torch.where(ok, Fn, _STAND_IN.to(Fn))
    F = _denormalize_bl(bl.rank2(Fn), s1, (mu1, mv1), s2, (mu2, mv2))
    ok = ok & torch.isfinite(F.sum((0, 1)))
    F = torch.where(ok, F, torch.zeros_like(F))
    return F.permute(2, 0, 1).contiguous(), ok


_STAND_IN = torch.tensor([3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0]).reshape(3, 3, 1)  # distinct singular values


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
        rank_tol: threshold of the degeneracy test (module doc); default dtype-dependent.

    Returns:
        ``FundamentalResult(F (*B, 3, 3), success (*B,))``. ``success`` is False for fewer than 8 points with
        non-zero weight, NaN/inf in a used row, or a design matrix whose null space is not 1-dimensional
        (e.g. a noise-free planar scene). Failed problems hold ``F = 0``.
    """
    c = _prepare(x1, x2, weights, mask)
    p1, p2 = c.points
    n = c.weights.shape[-1]
    tol = _default_tol(x1.dtype) if rank_tol is None else rank_tol
    lead = c.weights.shape[:-1]
    F, ok = chunked(lambda a, b, ww, f: _f8_core(a, b, ww, f, tol),
                    p1.reshape(-1, n, 2), p2.reshape(-1, n, 2), c.weights.reshape(-1, n), c.finite.reshape(-1),
                    chunk=_chunk_size(n))
    return FundamentalResult(F.reshape(*lead, 3, 3), ok.reshape(lead))


def _f7_core(p1: Tensor, p2: Tensor, w: Tensor, finite: Tensor, tol: float,
             refine: bool | None = None) -> tuple[Tensor, Tensor]:
    """7-point on flat batches (b, 7, 2); returns (F (b, 3, 3, 3), valid (b, 3))."""
    b = w.shape[0]
    (u1, v1, s1, mu1, mv1), (u2, v2, s2, mu2, mv2), wt = _normalized_pair(p1, p2, w)  # w is 0/1 here
    ok = finite & (wt.sum(0) == 7)
    a2, b2 = u2 * wt, v2 * wt
    A = torch.stack([a2 * u1, a2 * v1, a2, b2 * u1, b2 * v1, b2, wt * u1, wt * v1, wt], 1)  # (7, 9, b)
    fro2 = (wt * (u1 * u1 + v1 * v1 + 1) * (u2 * u2 + v2 * v2 + 1)).sum(0)
    N, ratio = _minimal_nullspace_bl(A, ok, fro2, refine)
    ok = ok & (ratio > tol)
    F1 = N[:, 0].reshape(3, 3, b)
    F2 = N[:, 1].reshape(3, 3, b)
    d1, d2 = bl.det3(F1), bl.det3(F2)
    t12 = (bl.adj3(F1) * F2.transpose(0, 1)).sum((0, 1))  # tr(adj(F1) F2)
    t21 = (bl.adj3(F2) * F1.transpose(0, 1)).sum((0, 1))  # tr(adj(F2) F1)
    # det(F1 + z F2) = d2 z^3 + t21 z^2 + t12 z + d1 ; det(z F1 + F2) = d1 z^3 + t12 z^2 + t21 z + d2
    use_t = d2.detach().abs() >= d1.detach().abs()
    ca = torch.where(use_t, d2, d1)
    cb = torch.where(use_t, t21, t12)
    cc = torch.where(use_t, t12, t21)
    cd = torch.where(use_t, d1, d2)
    z, valid = real_cubic_roots_first(ca, cb, cc, cd)  # (3, b)
    Fa, Fb = F1[:, :, None], F2[:, :, None]
    Fn = torch.where(use_t, Fa + z * Fb, z * Fa + Fb)  # (3, 3, 3 solutions, b)
    F = _denormalize_bl(Fn, s1, (mu1, mv1), s2, (mu2, mv2))
    valid = valid & ok & torch.isfinite(F.sum((0, 1)))
    F = torch.where(valid, F, torch.zeros_like(F))
    return F.permute(3, 2, 0, 1).contiguous(), valid.t().contiguous()


def fundamental_7point(
    x1: Tensor, x2: Tensor, mask: Tensor | None = None, rank_tol: float | None = None, refine: bool | None = None
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
        refine: one step of iterative refinement of the null space (module doc); default on in float64 only.
            RANSAC turns it off for its hypotheses (a quarter of the solver's time), which its local optimisation
            refits anyway.

    Returns:
        ``FundamentalSolutions(F (*B, 3, 3, 3), valid (*B, 3), success (*B,))``.
    """
    check_points(x1, "x1", 2)
    if x1.shape[-2] != 7:
        raise ValueError(f"fundamental_7point needs exactly 7 correspondences, got x1 of shape {tuple(x1.shape)}")
    c = _prepare(x1, x2, None, mask)
    p1, p2 = c.points
    tol = _default_tol(x1.dtype, seven=True) if rank_tol is None else rank_tol
    lead = c.weights.shape[:-1]
    F, valid = chunked(lambda a, b, ww, f: _f7_core(a, b, ww, f, tol, refine),
                       p1.reshape(-1, 7, 2), p2.reshape(-1, 7, 2), c.weights.reshape(-1, 7), c.finite.reshape(-1),
                       chunk=_chunk_size(7))
    valid = valid.reshape(*lead, 3)
    return FundamentalSolutions(F.reshape(*lead, 3, 3, 3), valid, valid.any(-1))


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
