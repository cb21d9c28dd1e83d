"""Small-matrix kernels on the *batch-last* layout, for solvers that run 10^5 tiny problems on a CPU.

A batch of small matrices is usually stored batch-first, (B, 3, 3). Element-wise work on that layout runs
with inner loops of length 3 (or 9) and broadcasts over tiny trailing dims, which PyTorch's CPU kernels do
slowly; reductions over the last few entries are not vectorised either. Here the batch is the *last*
dimension instead: a 3x3 matrix is (3, 3, *rest) with ``M[i, j]`` a (*rest) vector, so every operation is a
long contiguous vector operation. The solvers convert at their boundary (one small copy each way).

Nothing here loops over problems; loops are over matrix rows (at most 9 iterations).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product of (3, *rest) vectors along dim 0."""
    return a.roll(-1, 0) * b.roll(-2, 0) - a.roll(-2, 0) * b.roll(-1, 0)


def adj3(M: Tensor) -> Tensor:
    """Adjugate of 3x3 matrices (3, 3, *rest): its column i is the cross product of rows i + 1 and i + 2."""
    M1, M2 = M.roll(-1, 0), M.roll(-2, 0)
    return (M1.roll(-1, 1) * M2.roll(-2, 1) - M1.roll(-2, 1) * M2.roll(-1, 1)).transpose(0, 1)


def det3(M: Tensor) -> Tensor:
    """Determinant of 3x3 matrices (3, 3, *rest) -> (*rest)."""
    return (M[0] * cross(M[1], M[2])).sum(0)


def normalize_points(u: Tensor, v: Tensor, w: Tensor, eps: float = 1e-12) -> tuple[Tensor, ...]:
    """Weighted Hartley normalisation of 2D points, batch-last (same maths as
    :func:`torch3dv.linalg.normalization.normalize_points`).

    Args:
        u, v: coordinates (N, *rest).
        w: non-negative weights (N, *rest).
        eps: guard for empty or collapsed sets.

    Returns:
        ``(un, vn, s, mu, mv)``: normalised coordinates (N, *rest), the scale s and the weighted centroid
        (mu, mv), each (*rest); ``xn = s (x - m)``.
    """
    wsum = w.sum(0).clamp_min(eps)
    mu = (w * u).sum(0) / wsum
    mv = (w * v).sum(0) / wsum
    du = u - mu
    dv = v - mv
    dist = torch.sqrt(du * du + dv * dv + eps * eps)
    s = math.sqrt(2.0) / ((w * dist).sum(0) / wsum).clamp_min(eps)
    return du * s, dv * s, s, mu, mv


@torch.no_grad()
def householder_nullspace(A: Tensor, refine: bool = True) -> tuple[Tensor, Tensor]:
    """Orthonormal null space of wide matrices from a Householder QR of ``A^T``, batch-last.

    ``A^T = Q R`` by m Householder reflections (no pivoting: unconditionally backward stable); the last n - m
    columns of ``Q`` span ``null(A)`` and are orthonormal. ``|R_kk|`` is the distance of row k of A from the
    span of rows 0..k-1, so a (nearly) vanishing ``|R_kk|`` reveals a (nearly) rank-deficient A. Works on the
    design matrix itself, so the condition number is not squared as with ``eigh(A^T A)``. With ``refine``, one
    step of iterative refinement ``N <- N - A^+ (A N)`` (``A^+ = Q_1 R^-T`` from the same factorisation) follows,
    then re-orthonormalisation. No gradient.

    Args:
        A: (m, n, *rest) with m < n.
        refine: apply the refinement step.

    Returns:
        ``(N, r)``: N (n, n - m, *rest) orthonormal with ``A N ~ 0``; r (m, *rest) = ``|R_kk|``.
    """
    m, n = A.shape[:2]
    R = A.detach().clone()
    tiny = torch.finfo(A.dtype).tiny
    vs, taus, r, diag = [], [], [], []
    for k in range(m):
        x = R[k, k:]  # (n - k, *rest); becomes the Householder vector v = x + sign(x_0) |x| e_0 in place
        nx = x.square().sum(0).sqrt()
        alpha = torch.copysign(nx, x[0])
        v0 = x[0] + alpha
        tau = (alpha * v0).clamp_min(tiny).reciprocal()  # 2 / |v|^2; a zero row gives v = 0 and no update
        x[0] = v0
        if k + 1 < m:
            rest = R[k + 1:, k:]
            rest.addcmul_((tau * (rest * x).sum(1))[:, None], x, value=-1)
        vs.append(x)
        taus.append(tau)
        r.append(nx)
        diag.append(-alpha)  # R_kk

    def apply_q(Y: Tensor) -> Tensor:  # Q Y = H_0 H_1 ... H_{m-1} Y, in place
        for k in range(m - 1, -1, -1):
            Yk = Y[k:]
            vk = vs[k][:, None]
            Yk.addcmul_((taus[k] * (Yk * vk).sum(0))[None], vk, value=-1)
        return Y

    k = n - m
    Y = torch.zeros((n, k) + A.shape[2:], dtype=A.dtype, device=A.device)
    for j in range(k):
        Y[m + j, j] = 1.0
    Y = apply_q(Y)
    if refine:
        res = (A.detach()[:, :, None] * Y[None]).sum(1)  # A Y (m, k, *rest)
        z = torch.zeros_like(Y)  # R^-T (A Y) in the first m rows, zero below
        for i in range(m):
            acc = res[i] - (R[i, :i, None] * z[:i]).sum(0) if i else res[i]
            z[i] = acc / diag[i]
        d = apply_q(z)  # A^+ (A Y)
        Y = torch.where(torch.isfinite(d.sum((0, 1))), Y - d, Y)
        # re-orthonormalise (modified Gram-Schmidt)
        cols = []
        for j in range(k):
            y = Y[:, j]
            for c in cols:
                y = y - (c * y).sum(0) * c
            cols.append(y * y.square().sum(0).clamp_min(tiny).rsqrt())
        Y = torch.stack(cols, 1)
    return Y, torch.stack(r, 0)


def smallest_sq_singular_value(F: Tensor) -> Tensor:
    """Smallest eigenvalue of ``F^T F`` (i.e. ``sigma_3(F)^2``) for 3x3 matrices (3, 3, *rest), differentiable.

    The characteristic polynomial ``l^3 - a l^2 + b l - c`` takes its coefficients from F itself
    (``a = |F|^2``, ``b = |adj F|^2``, ``c = det(F)^2``), which keeps ``c`` accurate when F is nearly
    singular. The root starts from the trigonometric formula (or the lower bound ``c / b`` when larger), is
    polished by two guarded Newton steps (monotone: the polynomial is concave and increasing there), and
    gets its gradient from one more Newton step whose value is discarded (the implicit-function-theorem
    derivative, as in :mod:`torch3dv.linalg.cubic`). The derivative does not exist when the two smallest
    singular values coincide.
    """
    adj = adj3(F)
    a = F.square().sum((0, 1))
    b = adj.square().sum((0, 1))
    d = (F[0] * adj[:, 0]).sum(0)  # det(F) = row 0 . (row 1 x row 2)
    c = d * d
    tiny = torch.finfo(F.dtype).tiny
    with torch.no_grad():
        a0, b0, c0 = a.detach(), b.detach(), c.detach()
        P = b0 - a0 * a0 / 3  # depressed cubic t^3 + P t + Q with l = t + a / 3; P <= 0 for real roots
        Q = a0 * b0 / 3 - 2 * a0 * a0 * a0 / 27 - c0
        m = torch.sqrt((-P / 3).clamp_min(0))
        arg = -Q / (2 * (m * m * m).clamp_min(tiny))
        phi = torch.acos(arg.clamp(-1.0, 1.0)) / 3
        lam = a0 / 3 + 2 * m * torch.cos(phi - 4 * math.pi / 3)
        lam = torch.maximum(lam, c0 / b0.clamp_min(tiny))  # c / b <= sigma_3^2
        for _ in range(2):
            # left of the smaller critical point p is increasing and concave, so a step with p' > 0 ends at or
            # left of the root (never beyond it); p' <= 0 means we are not there and keep the estimate
            p = ((lam - a0) * lam + b0) * lam - c0
            dp = (3 * lam - 2 * a0) * lam + b0
            new = lam - p / dp.clamp_min(tiny)
            lam = torch.where((dp > 0) & (new >= 0), new, lam)  # NaN fails the comparisons
    if not (a.requires_grad or b.requires_grad or c.requires_grad):
        return lam
    p = ((lam - a) * lam + b) * lam - c
    dp = ((3 * lam - 2 * a) * lam + b).detach()
    step = -p / dp.clamp_min(tiny ** 0.5)
    return lam + (step - step.detach())


def rank2(F: Tensor) -> Tensor:
    """Closest rank-2 matrix in Frobenius norm of 3x3 matrices (3, 3, *rest): ``F (I - v v^T)``.

    v is the smallest right singular vector: the largest cross product of two rows of ``F^T F - sigma_3^2 I``
    (:func:`smallest_sq_singular_value`). Closed form, no SVD; differentiable while the two smallest singular
    values differ.
    """
    lam = smallest_sq_singular_value(F)
    S = (F[:, :, None] * F[:, None, :]).sum(0)  # F^T F
    eye = torch.eye(3, dtype=F.dtype, device=F.device).reshape((3, 3) + (1,) * (F.ndim - 2))
    C = adj3(S - lam * eye)  # columns: cross products of the rows of S - lam I
    with torch.no_grad():
        n = C.square().sum(0)
        n0, n1, n2 = n.unbind(0)
        pick0 = (n0 >= n1) & (n0 >= n2)
        pick1 = n1 >= n2
    c0, c1, c2 = C.unbind(1)
    v = torch.where(pick0, c0, torch.where(pick1, c1, c2))
    v = v * v.square().sum(0).clamp_min(torch.finfo(F.dtype).tiny).rsqrt()
    Fv = (F * v[None]).sum(1)  # (3, *rest)
    return F - Fv[:, None] * v[None]


@torch.no_grad()
def spd_inverse(M: Tensor) -> Tensor:
    """Inverse of symmetric positive definite matrices (n, n, *rest) by Gauss-Jordan elimination without pivoting
    (stable for SPD matrices: every pivot is a positive Schur complement). No gradient."""
    n = M.shape[0]
    P = M.clone()
    for k in range(n):
        ip = 1 / P[k, k]
        r = P[k] * ip
        c = P[:, k].clone()
        P.addcmul_(c[:, None], r[None], value=-1)
        P[k] = r
        P[:, k] = -c * ip
        P[k, k] = ip
    return P


def matmul(M: Tensor, X: Tensor) -> Tensor:
    """``M X`` for M (n, n, *rest) and X (n, *cols, *rest) (cols: 0 or 1 dims), as n fused multiply-adds."""
    extra = X.ndim - M.ndim + 1  # number of column dims of X
    Mc = M.reshape(M.shape[0], M.shape[1], *(1,) * extra, *M.shape[2:])
    out = Mc[:, 0] * X[0]
    for j in range(1, M.shape[1]):
        out.addcmul_(Mc[:, j], X[j])
    return out


def _orthonormalize(X: Tensor) -> Tensor:
    """Modified Gram-Schmidt on the columns of X (n, k, *rest)."""
    tiny = torch.finfo(X.dtype).tiny
    cols = []
    for j in range(X.shape[1]):
        x = X[:, j]
        for q in cols:
            x = x - (q * x).sum(0) * q
        cols.append(x * x.square().sum(0).clamp_min(tiny).rsqrt())
    return torch.stack(cols, 1)


def _sym3_low_eigvecs(T: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two smallest eigenpairs of symmetric 3x3 matrices (3, 3, *rest): (l0, y0, l1, y1), vectors (3, *rest).

    Eigenvalues by the trigonometric formula; y0 as the largest cross product of two rows of ``T - l0 I``; y1
    the same for l1, made orthogonal to y0 (``y1 = y0 x y2`` would need the largest eigenvector)."""
    tiny = torch.finfo(T.dtype).tiny
    q = (T[0, 0] + T[1, 1] + T[2, 2]) / 3
    eye = torch.eye(3, dtype=T.dtype, device=T.device).reshape((3, 3) + (1,) * (T.ndim - 2))
    B = T - q * eye
    p = (B.square().sum((0, 1)) / 6).sqrt()
    r = det3(B / p.clamp_min(tiny)) / 2
    phi = torch.acos(r.clamp(-1.0, 1.0)) / 3
    l0 = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    l2 = q + 2 * p * torch.cos(phi)
    l1 = 3 * q - l0 - l2

    def vec(lam: Tensor) -> Tensor:
        c0, c1, c2 = adj3(T - lam * eye).unbind(1)  # cross products of the rows
        n0, n1, n2 = c0.square().sum(0), c1.square().sum(0), c2.square().sum(0)
        v = torch.where((n0 >= n1) & (n0 >= n2), c0, torch.where(n1 >= n2, c1, c2))
        return v * v.square().sum(0).clamp_min(tiny).rsqrt()

    y0 = vec(l0)
    y1 = vec(l1)
    y1 = y1 - (y0 * y1).sum(0) * y0
    y1 = y1 * y1.square().sum(0).clamp_min(tiny).rsqrt()
    return l0, y0, l1, y1


_START = (0.41, -0.77, 0.23, 0.58, -0.12, -0.95, 0.66, 0.34, -0.29, 0.17, 0.88, -0.52, -0.61, 0.05, 0.73, 0.92,
          -0.38, 0.14, -0.25, 0.49, -0.83, 0.31, 0.69, -0.07, 0.57, -0.44, 0.26)


@torch.no_grad()
def smallest_eigenpairs(M: Tensor, iters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The two smallest eigenpairs of symmetric positive semi-definite 9x9 matrices (9, 9, *rest), no LAPACK.

    Subspace (block inverse) iteration on three vectors with the explicit inverse of the slightly shifted
    ``M + sigma I`` (``sigma = 64 eps tr(M)``, which moves no eigenvector; :func:`spd_inverse`), a
    Rayleigh-Ritz step on the 3-dimensional subspace and one residual-correction step for the smallest
    eigenvector. The error of the smallest eigenvector decays like ``((l_0 + sigma) / (l_3 + sigma))^iters``; the caller checks the residual ``|M v - l v|`` (returned) and
    falls back to ``torch.linalg.eigh`` where it has not converged. No gradient.

    Returns:
        ``(v0, v1, l0, residual)``: eigenvectors (9, *rest) of the smallest and second smallest eigenvalue,
        the smallest eigenvalue (Ritz value) and ``|M v0 - l0 v0|`` (*rest).
    """
    n = M.shape[0]
    tr = sum(M[i, i] for i in range(n))
    eye = torch.eye(n, dtype=M.dtype, device=M.device).reshape((n, n) + (1,) * (M.ndim - 2))
    P = spd_inverse(M + (64 * torch.finfo(M.dtype).eps) * tr * eye)
    X = torch.tensor(_START, dtype=M.dtype, device=M.device).reshape(n, 3, *(1,) * (M.ndim - 2))
    X = X.expand(n, 3, *M.shape[2:])
    for _ in range(iters):
        X = _orthonormalize(matmul(P, X))
    MX = matmul(M, X)  # (9, 3, *rest)
    T = torch.stack([torch.stack([(X[:, i] * MX[:, j]).sum(0) for j in range(3)], 0) for i in range(3)], 0)
    T = 0.5 * (T + T.transpose(0, 1))
    l0, y0, _, y1 = _sym3_low_eigvecs(T)
    v0 = (X * y0[None]).sum(1)
    v1 = (X * y1[None]).sum(1)
    # one residual-correction step: v <- v - P (M v - l v) is an inverse iteration step whose error from the
    # rounding of P multiplies the (small) residual, not v, which lowers the accuracy floor to that of M
    v0 = v0 - matmul(P, (MX * y0[None]).sum(1) - l0 * v0)
    tiny = torch.finfo(M.dtype).tiny
    v0 = v0 * v0.square().sum(0).clamp_min(tiny).rsqrt()
    v1 = v1 - (v0 * v1).sum(0) * v0
    v1 = v1 * v1.square().sum(0).clamp_min(tiny).rsqrt()
    Mv = matmul(M, v0)
    l0 = (v0 * Mv).sum(0)
    res = (Mv - l0 * v0).square().sum(0).sqrt()
    return v0, v1, l0, res


@torch.no_grad()
def largest_eigenvalue(M: Tensor, iters: int = 6) -> Tensor:
    """Lower estimate of the largest eigenvalue of symmetric PSD matrices (n, n, *rest), no LAPACK, no gradient.

    The Rayleigh quotient after ``iters`` power iterations started from the column with the largest diagonal
    entry (never below ``tr(M) / n`` nor ``max_i M_ii``).
    """
    n = M.shape[0]
    d = torch.stack([M[i, i] for i in range(n)], 0)
    dmax = d.amax(0)
    x = (M * (d == dmax).to(M.dtype)[None]).sum(1)
    tiny = torch.finfo(M.dtype).tiny
    for _ in range(iters):
        x = x * x.square().sum(0).clamp_min(tiny).rsqrt()
        x = matmul(M, x)
    x = x * x.square().sum(0).clamp_min(tiny).rsqrt()
    rq = (x * matmul(M, x)).sum(0)
    return torch.maximum(rq, torch.maximum(dmax, d.sum(0) / n))
