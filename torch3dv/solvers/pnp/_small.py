"""Closed-form batched 3x3 helpers used by the PnP solvers (element-wise arithmetic, fast at batch 100k).

LAPACK calls on tiny matrices cost a few microseconds each on CPU, which dominates at batch 100k, so the
3x3 eigenvalues, Cholesky factor and polar decomposition below are written as element-wise tensor code.
All are differentiable by plain autograd (the polar decomposition through its unrolled Newton iterations,
whose derivative converges with the iterates).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sym3_eigvals(C: Tensor) -> Tensor:
    """Eigenvalues (..., 3), ascending, of symmetric (..., 3, 3) matrices (trigonometric closed form).

    Absolute accuracy ~ eps * ||C||, enough to test the smallest eigenvalue against a relative threshold.
    """
    a00, a11, a22 = C[..., 0, 0], C[..., 1, 1], C[..., 2, 2]
    a01, a02, a12 = C[..., 0, 1], C[..., 0, 2], C[..., 1, 2]
    q = (a00 + a11 + a22) / 3.0
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p2 = b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * p1
    p = torch.sqrt(p2 / 6.0)
    ps = torch.where(p > 0, p, torch.ones_like(p))
    det_b = (b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02) + a02 * (a01 * a12 - b11 * a02))
    r = (det_b / (ps ** 3) / 2.0).clamp(-1.0, 1.0)
    phi = torch.acos(r) / 3.0
    e_max = q + 2.0 * p * torch.cos(phi)
    e_min = q + 2.0 * p * torch.cos(phi + 2.0 * math.pi / 3.0)
    e_mid = 3.0 * q - e_max - e_min
    return torch.stack([e_min, e_mid, e_max], dim=-1)


def cholesky3(C: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Lower Cholesky factor of SPD (..., 3, 3) matrices in closed form.

    Returns:
        ``(L, ok)``; pivots below ``eps * trace`` are clamped (``ok`` False there) so L stays finite.
    """
    floor = eps * (C[..., 0, 0] + C[..., 1, 1] + C[..., 2, 2]).clamp_min(torch.finfo(C.dtype).tiny)
    d0 = C[..., 0, 0]
    ok = d0 > floor
    l00 = torch.sqrt(torch.maximum(d0, floor))
    l10 = C[..., 1, 0] / l00
    l20 = C[..., 2, 0] / l00
    d1 = C[..., 1, 1] - l10 * l10
    ok = ok & (d1 > floor)
    l11 = torch.sqrt(torch.maximum(d1, floor))
    l21 = (C[..., 2, 1] - l20 * l10) / l11
    d2 = C[..., 2, 2] - l20 * l20 - l21 * l21
    ok = ok & (d2 > floor)
    l22 = torch.sqrt(torch.maximum(d2, floor))
    z = torch.zeros_like(l00)
    L = torch.stack([l00, z, z, l10, l11, z, l20, l21, l22], dim=-1).reshape(C.shape)
    return L, ok


def lower3_solve(L: Tensor, b: Tensor) -> Tensor:
    """Solves ``L y = b`` for lower-triangular L (..., 3, 3) and right-hand sides b (..., N, 3) (row vectors)."""
    l00, l10, l11 = L[..., 0, 0, None], L[..., 1, 0, None], L[..., 1, 1, None]
    l20, l21, l22 = L[..., 2, 0, None], L[..., 2, 1, None], L[..., 2, 2, None]
    y0 = b[..., 0] / l00
    y1 = (b[..., 1] - l10 * y0) / l11
    y2 = (b[..., 2] - l20 * y0 - l21 * y1) / l22
    return torch.stack([y0, y1, y2], dim=-1)


def cofactor3(X: Tensor) -> Tensor:
    """Cofactor matrices (..., 3, 3): ``cof(X) = det(X) X^{-T}``."""
    r0, r1, r2 = X[..., 0, :], X[..., 1, :], X[..., 2, :]
    return torch.stack([torch.linalg.cross(r1, r2, dim=-1), torch.linalg.cross(r2, r0, dim=-1),
                        torch.linalg.cross(r0, r1, dim=-1)], dim=-2)


def polar3(H: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Orthogonal polar factor of (..., 3, 3) matrices with det > 0 by Higham's scaled Newton iteration.

    ``X <- (g X + X^{-T} / g) / 2`` with ``g = |det X|^{-1/3}``; for det(H) > 0 the limit is the rotation
    closest to H (the special-Procrustes solution). Six to eight iterations reach working precision for
    condition numbers up to ~1e6.

    Returns:
        ``(R, ok)`` where ``ok`` is False where det(H) <= 0 or the iteration produced non-finite values
        (R is then the identity).
    """
    tiny = torch.finfo(H.dtype).tiny
    scale = H.flatten(-2).norm(dim=-1).clamp_min(tiny)
    X = H / scale[..., None, None]
    cof = cofactor3(X)
    det = (X[..., 0, :] * cof[..., 0, :]).sum(-1)
    ok = det > 1e3 * torch.finfo(H.dtype).eps ** 2
    eye = torch.eye(3, dtype=H.dtype, device=H.device)
    X = torch.where(ok[..., None, None], X, eye)
    for i in range(iterations):
        if i > 0:
            cof = cofactor3(X)
            det = (X[..., 0, :] * cof[..., 0, :]).sum(-1)
        det = torch.where(ok, det, torch.ones_like(det))
        g = det.abs().clamp_min(tiny) ** (-1.0 / 3.0)
        X = 0.5 * (g[..., None, None] * X + cof / (g * det)[..., None, None])
    ok = ok & torch.isfinite(X).flatten(-2).all(-1)
    return torch.where(ok[..., None, None], X, eye), ok


def spd_solve_small(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Solves SPD systems ``A x = b`` for tiny k (A (..., k, k), b (..., k)) by an unrolled Cholesky.

    Element-wise over the batch (no LAPACK call per matrix). Returns ``(x, ok)``; where a pivot is not
    positive ``ok`` is False and ``x`` is zero.
    """
    k = A.shape[-1]
    tiny = torch.finfo(A.dtype).tiny
    L = [[None] * k for _ in range(k)]
    ok = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
    inv_diag = []
    for j in range(k):
        s = A[..., j, j]
        for m in range(j):
            s = s - L[j][m] * L[j][m]
        ok = ok & (s > 0)
        d = torch.sqrt(s.clamp_min(tiny))
        inv_diag.append(1.0 / d)
        for i in range(j + 1, k):
            s2 = A[..., i, j]
            for m in range(j):
                s2 = s2 - L[i][m] * L[j][m]
            L[i][j] = s2 * inv_diag[j]
        L[j][j] = d
    y = []
    for i in range(k):
        s = b[..., i]
        for m in range(i):
            s = s - L[i][m] * y[m]
        y.append(s * inv_diag[i])
    x = [None] * k
    for i in reversed(range(k)):
        s = y[i]
        for m in range(i + 1, k):
            s = s - L[m][i] * x[m]
        x[i] = s * inv_diag[i]
    out = torch.stack(x, dim=-1)
    ok = ok & torch.isfinite(out).all(-1)
    return torch.where(ok[..., None], out, torch.zeros_like(out)), ok
