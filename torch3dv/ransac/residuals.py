"""Squared residuals of H hypotheses against N points, for M problems at once: (M, H, N) tensors.

These are the scoring kernels of the robust estimator, so they are written for speed: the parameters of every
hypothesis are broadcast entry by entry against the point coordinates (point axis innermost), and the work is
done in blocks of problems whose temporaries stay cache sized. On CPU this is several times faster than
(M, 3H, 3) @ (M, 3, N) matmuls with their tiny inner dimension followed by reductions over a size-3 axis.
Without autograd the block temporaries are updated in place; with autograd the same formulas run out of place.

All residuals are squared and in the data's units (pixels or metres):

* :func:`sampson_sq`: Sampson error of ``x2^T F x1 = 0``; optionally also its denominator
  ``|(F x1)_12|^2 + |(F^T x2)_12|^2`` (used by the IRLS polish).
* :func:`transfer_sq`: one-way transfer error ``|pi(H x1) - x2|^2``.
* :func:`reprojection_sq`: ``|pi(K (R X + t)) - x|^2``, ``inf`` for points not in front of the camera.
* :func:`euclidean_sq`: ``|A X + t - Y|^2`` for ``P = [A | t]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BLOCK = 1 << 17  # residual entries per block


def _blocks(M: int, per_problem: int):
    step = max(1, _BLOCK // max(1, per_problem))
    return [(s, min(M, s + step)) for s in range(0, M, step)]


def _entries(P: Tensor) -> Tensor:
    """(M, H, a, b) -> (a * b, M, H, 1): one broadcastable tensor per parameter entry."""
    M, H = P.shape[:2]
    return P.reshape(M, H, P.shape[2] * P.shape[3]).permute(2, 0, 1).unsqueeze(-1)


def _coords(x: Tensor) -> list[Tensor]:
    """(M, N, d) -> d tensors (M, 1, N)."""
    return [c[:, None] for c in x.unbind(-1)]


def _fma(c: Tensor, a: Tensor, x: Tensor, b: Tensor, y: Tensor) -> Tensor:
    """c + a x + b y."""
    return torch.addcmul(torch.addcmul(c, a, x), b, y)


def sampson_sq(F: Tensor, x1: Tensor, x2: Tensor, with_denominator: bool = False):
    """Squared Sampson error (M, H, N) of F (M, H, 3, 3) for pixels x1, x2 (M, N, 2).

    Returns ``r2`` or, with ``with_denominator``, ``(r2, den)``.
    """
    M, H = F.shape[:2]
    N = x1.shape[-2]
    grad = torch.is_grad_enabled() and (F.requires_grad or x1.requires_grad or x2.requires_grad)
    f = _entries(F)
    u1, v1 = _coords(x1)
    u2, v2 = _coords(x2)
    tiny = torch.finfo(F.dtype).tiny
    out = torch.empty(M, H, N, dtype=F.dtype, device=F.device) if not grad else None
    den_out = torch.empty(M, H, N, dtype=F.dtype, device=F.device) if (with_denominator and not grad) else None
    parts, dparts = [], []
    for s, e in _blocks(M, H * N):
        g = f[:, s:e]
        a, b, c, d = u1[s:e], v1[s:e], u2[s:e], v2[s:e]
        l0, l1, l2 = _fma(g[2], g[0], a, g[1], b), _fma(g[5], g[3], a, g[4], b), _fma(g[8], g[6], a, g[7], b)
        m0, m1 = _fma(g[6], g[0], c, g[3], d), _fma(g[7], g[1], c, g[4], d)
        num = _fma(l2, l0, c, l1, d)
        if grad:
            den = (l0 * l0 + l1 * l1 + m0 * m0 + m1 * m1).clamp_min(tiny)
            parts.append(num * num / den)
            dparts.append(den)
        else:
            den = l0.square_().addcmul_(l1, l1).addcmul_(m0, m0).addcmul_(m1, m1).clamp_min_(tiny)
            torch.div(num.square_(), den, out=out[s:e])
            if den_out is not None:
                den_out[s:e] = den
    if grad:
        out = torch.cat(parts) if parts else F.new_zeros(M, H, N)
        den_out = torch.cat(dparts) if dparts else F.new_zeros(M, H, N)
    return (out, den_out) if with_denominator else out


def transfer_sq(Hm: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    """Squared one-way transfer error (M, H, N) of homographies Hm (M, H, 3, 3), pixels x1, x2 (M, N, 2)."""
    M, H = Hm.shape[:2]
    N = x1.shape[-2]
    grad = torch.is_grad_enabled() and (Hm.requires_grad or x1.requires_grad or x2.requires_grad)
    h = _entries(Hm)
    u1, v1 = _coords(x1)
    u2, v2 = _coords(x2)
    eps = torch.finfo(Hm.dtype).eps
    parts = []
    for s, e in _blocks(M, H * N):
        g = h[:, s:e]
        a, b = u1[s:e], v1[s:e]
        w = _fma(g[8], g[6], a, g[7], b)
        w = torch.where(w.abs() < eps, torch.full_like(w, eps), w)
        du = _fma(g[2], g[0], a, g[1], b) / w - u2[s:e]
        dv = _fma(g[5], g[3], a, g[4], b) / w - v2[s:e]
        parts.append(du * du + dv * dv if grad else du.square_().addcmul_(dv, dv))
    return torch.cat(parts) if parts else Hm.new_zeros(M, H, N)


def reprojection_sq(P: Tensor, X: Tensor, x: Tensor, K: Tensor) -> Tensor:
    """Squared reprojection error (M, H, N) of poses P = [R | t] (M, H, 3, 4), world points X (M, N, 3), pixels
    x (M, N, 2), intrinsics K (M, 3, 3); ``inf`` where a point is not in front of the camera."""
    M, H = P.shape[:2]
    N = X.shape[-2]
    p = _entries(P)
    X0, X1, X2 = _coords(X)
    u, v = _coords(x)
    k = K.reshape(M, 9).t()[:, :, None, None]  # (9, M, 1, 1)
    eps = torch.finfo(P.dtype).eps
    parts = []
    for s, e in _blocks(M, H * N):
        g = p[:, s:e]
        a, b, c = X0[s:e], X1[s:e], X2[s:e]
        xc = torch.addcmul(_fma(g[3], g[0], a, g[1], b), g[2], c)
        yc = torch.addcmul(_fma(g[7], g[4], a, g[5], b), g[6], c)
        zc = torch.addcmul(_fma(g[11], g[8], a, g[9], b), g[10], c)
        front = zc > eps
        inv_z = 1.0 / torch.where(front, zc, torch.ones_like(zc))
        xn, yn = xc * inv_z, yc * inv_z
        kk = k[:, s:e]
        du = _fma(kk[2] - u[s:e], kk[0], xn, kk[1], yn)
        dv = torch.addcmul(kk[5] - v[s:e], kk[4], yn)
        r2 = du * du + dv * dv
        parts.append(torch.where(front, r2, torch.full_like(r2, float("inf"))))
    return torch.cat(parts) if parts else P.new_zeros(M, H, N)


def euclidean_sq(P: Tensor, X: Tensor, Y: Tensor) -> Tensor:
    """Squared distance (M, H, N) between ``A X + t`` (``P = [A | t]``, (M, H, 3, 4)) and Y; X, Y (M, N, 3)."""
    M, H = P.shape[:2]
    N = X.shape[-2]
    p = _entries(P)
    X0, X1, X2 = _coords(X)
    Y0, Y1, Y2 = _coords(Y)
    parts = []
    for s, e in _blocks(M, H * N):
        g = p[:, s:e]
        a, b, c = X0[s:e], X1[s:e], X2[s:e]
        d0 = torch.addcmul(_fma(g[3] - Y0[s:e], g[0], a, g[1], b), g[2], c)
        d1 = torch.addcmul(_fma(g[7] - Y1[s:e], g[4], a, g[5], b), g[6], c)
        d2 = torch.addcmul(_fma(g[11] - Y2[s:e], g[8], a, g[9], b), g[10], c)
        parts.append(d0 * d0 + d1 * d1 + d2 * d2)
    return torch.cat(parts) if parts else P.new_zeros(M, H, N)
