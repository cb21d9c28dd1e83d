"""Extreme eigenpairs of batched symmetric 4x4 matrices: fast closed form, stable gradients.

Two solvers share this module: Horn's quaternion method for rigid alignment (largest eigenvector of a
traceless 4x4 matrix) and linear triangulation (smallest eigenvector of a 4x4 normal matrix).

Forward (``method="closed_form"``, the default): on CPU ``torch.linalg.eigh`` calls LAPACK once per 4x4
matrix (~3 us each), which dominates at batch 100k. Instead the extreme eigenvalue is found by Newton's
method on the characteristic polynomial, started outside the spectrum (from there Newton converges
monotonically to the extreme root and cannot jump to another one), and the eigenvector is the largest column
of the adjugate of ``A - mu I`` followed by two inverse-iteration steps with the same adjugate and one step
of iterative refinement (which brings the error from eps / (product of the three gaps) down to eps / gap).
All of it is
element-wise arithmetic on contiguous (B,) component tensors, 2-5x faster than ``eigh`` at batch 100k
on CPU and as accurate (eigenvector error ~ eps ||A|| / gap, like ``eigh``). ``method="eigh"`` uses
``torch.linalg.eigh`` as the slow, obvious reference.

Gradients: no autograd graph goes through ``eigh`` or the iterations (they run on detached values). The
output is ``v = v0 + G (A - A0) v0`` with ``A0 = A.detach()`` (so its value is exactly v0) and
``G = (lambda I - A0)^+ = (lambda I - A0 + v0 v0^T)^-1 (I - v0 v0^T)``, the first-order perturbation of a
simple eigenvector. The gradient is exact and only involves the gaps between the wanted eigenvalue and the
others, whereas the SVD/eigh backward formulas contain every 1 / (lambda_i - lambda_j) and give NaN/inf when
two *unrelated* eigenvalues coincide (e.g. an isotropic point cloud in Kabsch). When the wanted eigenvalue is
itself (nearly) repeated the problem is degenerate: ``G`` stays finite (its determinant is clamped) and the
callers report such problems with ``success=False`` (use ``gap``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# the 10 unique entries of a symmetric 4x4 matrix, row-major upper triangle
_IU = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]
_FULL = [[0, 1, 2, 3], [1, 4, 5, 6], [2, 5, 7, 8], [3, 6, 8, 9]]  # (i, j) -> index into _IU


class ExtremeEigen(NamedTuple):
    """Result of :func:`extreme_eigenpair4`.

    Attributes:
        vector: unit eigenvector (..., 4) (sign arbitrary), differentiable.
        value: its eigenvalue (...,), differentiable.
        gap: (...,) product of |lambda_j - lambda| over the three other eigenvalues, divided by ||A||_F^3
            (dimensionless, 0 when the wanted eigenvalue is repeated). Not differentiable.
    """

    vector: Tensor
    value: Tensor
    gap: Tensor


def _sym_adj(a: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Adjugate (10 unique entries, same order as ``_IU``) and determinant of a symmetric 4x4 matrix."""
    a00, a01, a02, a03, a11, a12, a13, a22, a23, a33 = a
    s0 = a00 * a11 - a01 * a01
    s1 = a00 * a12 - a01 * a02
    s2 = a00 * a13 - a01 * a03
    s3 = a01 * a12 - a11 * a02
    s4 = a01 * a13 - a11 * a03
    s5 = a02 * a13 - a12 * a03
    c5 = a22 * a33 - a23 * a23
    c4 = a12 * a33 - a13 * a23
    c3 = a12 * a23 - a13 * a22
    c2 = a02 * a33 - a03 * a23
    c1 = a02 * a23 - a03 * a22
    c0 = a02 * a13 - a03 * a12
    det = s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
    b = [
        a11 * c5 - a12 * c4 + a13 * c3,
        a02 * c4 - a01 * c5 - a03 * c3,
        a13 * s5 - a23 * s4 + a33 * s3,
        a22 * s4 - a12 * s5 - a23 * s3,
        a00 * c5 - a02 * c2 + a03 * c1,
        a23 * s2 - a03 * s5 - a33 * s1,
        a02 * s5 - a22 * s2 + a23 * s1,
        a03 * s4 - a13 * s2 + a33 * s0,
        a12 * s2 - a02 * s4 - a23 * s0,
        a02 * s3 - a12 * s1 + a22 * s0,
    ]
    return b, det


def _to_components(A: Tensor) -> list[Tensor]:
    """(..., 4, 4) -> 10 contiguous (n,) tensors (strided slices make element-wise ops ~10x slower)."""
    flat = A.reshape(-1, 16).transpose(0, 1).contiguous()
    return [flat[4 * i + j] for i, j in _IU]


def _from_components(b: list[Tensor], shape) -> Tensor:
    return torch.stack([b[_FULL[i][j]] for i in range(4) for j in range(4)], dim=-1).reshape(shape)


def sym_adjugate4(A: Tensor) -> tuple[Tensor, Tensor]:
    """Adjugate and determinant of symmetric (..., 4, 4) matrices (``A @ adj = det * I``)."""
    b, det = _sym_adj(_to_components(A))
    return _from_components(b, A.shape), det.reshape(A.shape[:-2])


def _matvec(b: list[Tensor], v: list[Tensor]) -> list[Tensor]:
    return [sum(b[_FULL[i][j]] * v[j] for j in range(4)) for i in range(4)]


def _normalize(v: list[Tensor]) -> list[Tensor]:
    n = torch.sqrt(sum(x * x for x in v))
    ok = n > torch.finfo(n.dtype).tiny ** 0.5
    inv = torch.where(ok, 1.0 / torch.where(ok, n, torch.ones_like(n)), torch.zeros_like(n))
    out = [x * inv for x in v]
    out[0] = torch.where(ok, out[0], torch.ones_like(n))  # e_0 for an all-zero vector
    return out


def _closed_form(
    A: Tensor, largest: bool, start: Tensor | None, max_newton: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Detached closed-form eigenpair of normalised (||A||_F = 1) symmetric matrices (n, 4, 4) layout-free."""
    a = _to_components(A)
    a00, a01, a02, a03, a11, a12, a13, a22, a23, a33 = a
    b, det = _sym_adj(a)
    tr = a00 + a11 + a22 + a33
    fro2 = a00 * a00 + a11 * a11 + a22 * a22 + a33 * a33 + 2 * (
        a01 * a01 + a02 * a02 + a03 * a03 + a12 * a12 + a13 * a13 + a23 * a23)
    c3 = -tr
    c2 = 0.5 * (tr * tr - fro2)
    c1 = -(b[0] + b[4] + b[7] + b[9])
    c0 = det
    mu = torch.full_like(tr, 1.0 if largest else -1.0) if start is None else start.reshape(-1).clone()
    # |p(mu)| below ~16 eps is rounding noise (coefficients are O(1) since ||A||_F = 1): converged
    tol = 16 * torch.finfo(A.dtype).eps
    for it in range(max_newton):
        p = (((mu + c3) * mu + c2) * mu + c1) * mu + c0
        dp = ((4 * mu + 3 * c3) * mu + 2 * c2) * mu + c1
        active = (p.abs() > tol) & (dp != 0)
        if it >= 3 and not bool(active.any()):
            break
        step = p / torch.where(active, dp, torch.ones_like(dp))
        mu = torch.where(active & torch.isfinite(step), mu - step, mu)
    sh = [x.clone() for x in a]
    for k in (0, 4, 7, 9):
        sh[k] = sh[k] - mu
    adj, _ = _sym_adj(sh)
    # largest column of the adjugate, then two inverse-iteration steps with the same (fixed-shift) adjugate
    best = None
    for j in range(4):
        col = [adj[_FULL[i][j]] for i in range(4)]
        n2 = sum(x * x for x in col)
        if best is None:
            best, v = n2, col
        else:
            upd = n2 > best
            best = torch.where(upd, n2, best)
            v = [torch.where(upd, x, y) for x, y in zip(col, v)]
    v = _normalize(v)
    for _ in range(2):
        v = _normalize(_matvec(adj, v))
    Av = _matvec(a, v)
    mu = sum(x * y for x, y in zip(v, Av))
    # one step of iterative refinement: the adjugate's rounding error grows like eps / (product of all three
    # gaps); solving (mu I - A) d = -(A v - mu v) on v's complement with G = (mu I - A + v v^T)^-1 contracts
    # that error by the same factor while the residual is exact to eps, giving eps / gap accuracy like eigh
    g = [-x for x in a]
    for k in (0, 4, 7, 9):
        g[k] = g[k] + mu
    for k, (i, j) in enumerate(_IU):
        g[k] = g[k] + v[i] * v[j]
    gadj, gdet = _sym_adj(g)
    tiny = torch.finfo(A.dtype).tiny ** 0.5
    ok = gdet.abs() > tiny
    inv = torch.where(ok, 1.0 / torch.where(ok, gdet, torch.ones_like(gdet)), torch.zeros_like(gdet))
    r = [x - mu * y for x, y in zip(Av, v)]
    vr = sum(x * y for x, y in zip(v, r))
    r = [x - vr * y for x, y in zip(r, v)]
    d = _matvec(gadj, r)
    v = _normalize([x + inv * y for x, y in zip(v, d)])
    Av = _matvec(a, v)
    mu = sum(x * y for x, y in zip(v, Av))
    dp = ((4 * mu + 3 * c3) * mu + 2 * c2) * mu + c1
    return torch.stack(v, -1), mu, dp.abs()


def extreme_eigenpair4(
    M: Tensor,
    largest: bool,
    start: Tensor | float | None = None,
    method: str = "closed_form",
    max_newton: int = 40,
) -> ExtremeEigen:
    """Largest or smallest eigenpair of symmetric (..., 4, 4) matrices.

    Args:
        M: symmetric matrices (..., 4, 4) (only the symmetric part is used).
        largest: the largest eigenvalue if True, else the smallest.
        start: optional Newton start, a bound on the wanted eigenvalue from outside the spectrum, in the units
            of ``M`` (e.g. 0 for the smallest eigenvalue of a PSD matrix). Default: -/+ ||M||_F.
        method: ``"closed_form"`` (Newton + adjugate inverse iteration) or ``"eigh"`` (reference).
        max_newton: cap on Newton steps (it stops earlier once every problem has converged).

    Returns:
        :class:`ExtremeEigen`. Finite for any finite input (an all-zero matrix gives e_0, value 0, gap 0).
    """
    if M.shape[-2:] != (4, 4):
        raise ValueError(f"M must have shape (..., 4, 4), got {tuple(M.shape)}")
    M = 0.5 * (M + M.transpose(-1, -2))
    A0 = M.detach()
    lead = M.shape[:-2]
    tiny = torch.finfo(M.dtype).tiny ** 0.5
    scale = A0.flatten(-2).norm(dim=-1).clamp_min(tiny)  # (...,)
    A = A0 / scale[..., None, None]
    eye = torch.eye(4, dtype=M.dtype, device=M.device)
    if method == "eigh":
        evals, evecs = torch.linalg.eigh(A)
        k = 3 if largest else 0
        v = evecs[..., k]
        mu = evals[..., k]
        gap = (evals - mu[..., None]).abs()
        gap = torch.cat([gap[..., :k], gap[..., k + 1:]], dim=-1).prod(-1)
    elif method == "closed_form":
        st = None
        if start is not None:
            st = (torch.as_tensor(start, dtype=M.dtype, device=M.device) / scale).expand(lead)
        v, mu, gap = _closed_form(A, largest, st, max_newton)
        v, mu, gap = v.reshape(*lead, 4), mu.reshape(lead), gap.reshape(lead)
    else:
        raise ValueError(f"method must be 'closed_form' or 'eigh', got {method!r}")

    value = scale * mu
    if torch.is_grad_enabled() and M.requires_grad:
        # first-order perturbation: dv = (mu I - A)^+ dA v, pseudo-inverse built from detached values
        vv = v[..., :, None] * v[..., None, :]
        adjG, detG = sym_adjugate4(mu[..., None, None] * eye - A + vv)
        detG = torch.where(detG.abs() < tiny, torch.where(detG < 0, -tiny, tiny), detG)
        G = (adjG / detG[..., None, None]) @ (eye - vv)
        dA_v = (M / scale[..., None, None] - A) @ v[..., None]  # value exactly zero, carries the gradient
        v = v + (G @ dA_v)[..., 0]
        value = (v.detach() * (M @ v.detach()[..., None])[..., 0]).sum(-1)
    return ExtremeEigen(v, value, gap)
