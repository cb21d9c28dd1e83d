"""Minimal 5-point essential-matrix solver (Nister 2004), batched and differentiable.

Convention (README, "Conventions"): ``x2n^T E x1n = 0`` for normalised image coordinates ``xn = K^-1 x`` and
``E = [t]x R`` with ``cam2_from_cam1 = (R, t)``.

Algorithm (everything batched, no loop over problems; large batches are processed in chunks of
``_CHUNK`` problems to keep the temporaries cache sized):

1. The five epipolar rows ``kron(x2n, x1n)`` (rows scaled to unit norm) have a 4-dimensional null space,
   computed by Gauss-Jordan elimination with complete pivoting (vectorised, no LAPACK call) and
   orthonormalised: ``E = x X + y Y + z Z + W``. A fifth pivot below ``eps^(2/3)`` times the first marks a
   rank-deficient sample (repeated or otherwise degenerate points): no solution.
2. ``det(E) = 0`` and ``2 E E^T E - tr(E E^T) E = 0`` give ten cubics in (x, y, z): a 10x20 coefficient matrix,
   built with a few tensor products and a fixed monomial table, reduced by one batched 10x10 linear solve.
3. Nister's hidden-variable step: rows (x^2 z, x^2), (y^2 z, y^2), (xyz, xy) of the reduced system give a 3x3
   matrix ``B(z)`` whose entries are polynomials in z (degrees 3, 3, 4); ``det B(z)`` has degree 10.
4. Its real roots come from :func:`torch3dv.linalg.polynomial.real_roots_homogeneous` (grid sign changes in the
   two charts |z| <= 1 and |1/z| < 1, pair detection, bracketed Newton; no eigenvalue problem). Roots are kept
   homogeneous ``z = u / v`` so that a root at (or near) infinity is still handled.
5. For each root the null vector of ``B(z)`` (the best of the three cross products of its rows) gives (x, y) and
   ``E ~ v (x X + y Y + W) + u Z``, normalised to unit Frobenius norm (sign: the entry of largest magnitude is
   positive).
6. Polish: one Gauss-Newton step on the ten original cubics in the four homogeneous coefficients of
   (X, Y, Z, W) (taken where the residual is above rounding level; it repairs the accuracy lost in the
   elimination of ill-conditioned samples), then solutions whose residual stays above ``1e4 eps^(3/4)`` are
   dropped as spurious.

Accuracy (noise-free random scenes, float64, 4000 samples): median error of the best solution ~4e-15, 99.8%
below 1e-6 (kornia ``find_essential``: 99.6%, PoseLib: 96%). In float32 everything runs in float32 (no silent
promotion): median ~3e-6, ~85% below 1e-3; use float64 inputs when minimal samples must be accurate.

Gradients. Steps 1-5 run without autograd. When the inputs require grad, every valid solution ``E0`` is
refined by one Gauss-Newton step on the square-consistent system ``{A(x) e = 0, G(e) = 0, (|e|^2 - 1)/2 = 0}``
(``A``: the five epipolar rows, with autograd; ``G``: the ten cubic essential constraints; all Jacobians
evaluated at the detached ``E0``): ``e = e0 - (J^T J)^-1 J^T r(e0)``. At a solution ``r(e0) = 0`` so the value
is unchanged (up to rounding; the step also polishes it), and the derivative is the implicit-function derivative
``de = -(J^T J)^-1 A^T dA e0``, i.e. the exact first-order motion of the isolated solution. It is undefined at
degenerate samples (J rank deficient, e.g. a double root), where it is clamped to stay finite.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_matching_points
from torch3dv.linalg.polynomial import polymul, polyval_homogeneous, real_roots_homogeneous

_CHUNK = 4096


class EssentialSolutions(NamedTuple):
    """Result of :func:`essential_5point`.

    Attributes:
        E: (*B, 10, 3, 3) essential matrices (unit Frobenius norm), zeros in invalid slots.
        valid: (*B, 10) bool, True for the real solutions (valid slots first).
        success: (*B,) bool, ``valid.any(-1)``.
    """

    E: Tensor
    valid: Tensor
    success: Tensor


# Nister's monomial order: the ten eliminated monomials first, then the ten that remain.
_MONOMIALS = [
    (0, 0, 0), (1, 1, 1), (0, 0, 1), (0, 1, 1), (0, 0, 2), (0, 0, 3), (1, 1, 2), (1, 1, 3), (0, 1, 2), (0, 1, 3),
    (0, 2, 2), (0, 2, 3), (0, 3, 3), (1, 2, 2), (1, 2, 3), (1, 3, 3), (2, 2, 2), (2, 2, 3), (2, 3, 3), (3, 3, 3),
]  # variables: 0 = x, 1 = y, 2 = z, 3 = 1
_TABLES: dict = {}

# quadratic monomials in w = (x, y, z, 1), as sorted index pairs
_QUAD = [(a, b) for a in range(4) for b in range(a, 4)]


def _tables(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Product tables: (linear x linear) (16, 10) -> quadratic, (quadratic x linear) (40, 20) -> cubic, and
    the derivative table D (10, 20 * 4): d(cubic monomial m)/d w_d = sum_q D[q, (m, d)] (quadratic monomial q),
    and selection tables S2 (16, 10), S3 (40, 20) that evaluate the quadratic / cubic monomials."""
    key = (dtype, device)
    out = _TABLES.get(key)
    if out is None:
        qidx = {m: i for i, m in enumerate(_QUAD)}
        cidx = {m: i for i, m in enumerate(_MONOMIALS)}
        T2 = torch.zeros(16, 10, dtype=dtype)
        for a, b in itertools.product(range(4), repeat=2):
            T2[4 * a + b, qidx[tuple(sorted((a, b)))]] = 1.0
        T3 = torch.zeros(40, 20, dtype=dtype)
        for q, (a, b) in enumerate(_QUAD):
            for c in range(4):
                T3[4 * q + c, cidx[tuple(sorted((a, b, c)))]] = 1.0
        D = torch.zeros(10, 20, 4, dtype=dtype)
        for mi, mono in enumerate(_MONOMIALS):
            for d in set(mono):
                rest = list(mono)
                rest.remove(d)
                D[qidx[tuple(rest)], mi, d] = float(mono.count(d))
        S2 = torch.zeros(16, 10, dtype=dtype)  # picks one product a*b per quadratic monomial
        for q, (a, b) in enumerate(_QUAD):
            S2[4 * a + b, q] = 1.0
        S3 = torch.zeros(40, 20, dtype=dtype)  # picks one product quad*c per cubic monomial
        for mi, (a, b, c) in enumerate(_MONOMIALS):
            S3[4 * qidx[(a, b)] + c, mi] = 1.0
        out = (T2.to(device), T3.to(device), D.reshape(10, 80).to(device), S2.to(device), S3.to(device))
        _TABLES[key] = out
    return out


def epipolar_rows(x1n: Tensor, x2n: Tensor) -> Tensor:
    """Rows ``kron(x2h, x1h)`` (*B, N, 9) with ``row . vec(E) = x2h^T E x1h`` (E row-major)."""
    x1h = torch.cat([x1n, torch.ones_like(x1n[..., :1])], -1)
    x2h = torch.cat([x2n, torch.ones_like(x2n[..., :1])], -1)
    return (x2h[..., :, None] * x1h[..., None, :]).flatten(-2)


def _nullspace_5x9(A: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal null-space basis (n, 4, 9) of (n, 5, 9) matrices and a full-rank flag (n,)."""
    n = A.shape[0]
    dtype, device = A.dtype, A.device
    ar = torch.arange(n, device=device)
    M = A.clone()
    blocked = torch.zeros(n, 5, 9, dtype=torch.bool, device=device)
    used_c = torch.zeros(n, 9, dtype=torch.bool, device=device)
    rows, cols, pivs = [], [], []
    for _ in range(5):
        score = M.abs().masked_fill(blocked, -1.0)
        idx = score.reshape(n, 45).argmax(-1)
        r, c = idx // 9, idx % 9
        prow = M[ar, r]  # (n, 9)
        pv = prow[ar, c]
        pivs.append(pv.abs())
        prow = prow / torch.where(pv != 0, pv, torch.ones_like(pv))[:, None]
        col = M[ar, :, c]  # (n, 5)
        M = M - col[:, :, None] * prow[:, None, :]
        M[ar, r] = prow
        blocked[ar, r, :] = True
        blocked[ar, :, c] = True
        used_c[ar, c] = True
        rows.append(r)
        cols.append(c)
    eps = torch.finfo(dtype).eps
    full_rank = pivs[4] > eps ** (2.0 / 3.0) * pivs[0]
    free = (~used_c).nonzero(as_tuple=True)[1].reshape(n, 4)
    R = torch.stack(rows, 1)
    C = torch.stack(cols, 1)
    Mp = M.gather(1, R[:, :, None].expand(n, 5, 9))
    vals = Mp.gather(2, free[:, None, :].expand(n, 5, 4))  # (n, 5 pivots, 4 free)
    Nb = torch.zeros(n, 4, 9, dtype=dtype, device=device)
    Nb.scatter_(2, free[:, :, None], 1.0)
    Nb.scatter_(2, C[:, None, :].expand(n, 4, 5), -vals.transpose(1, 2))
    # Gram-Schmidt (the vectors are independent by construction)
    out = []
    for j in range(4):
        v = Nb[:, j]
        for u in out:
            v = v - (v * u).sum(-1, keepdim=True) * u
        out.append(v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny))
    return torch.stack(out, 1), full_rank


def _constraint_matrix(N: Tensor) -> Tensor:
    """Ten cubic constraints (n, 10, 20) for E = sum_a N[..., a] w_a, N (n, 3, 3, 4), w = (x, y, z, 1).

    Row 0: det(E); rows 1-9: 2 E E^T E - tr(E E^T) E (row-major), in the monomial order ``_MONOMIALS``.
    """
    n = N.shape[0]
    T2, T3, _, _, _ = _tables(N.dtype, N.device)
    # E E^T (symmetric, quadratic): P[i, l] = sum_k N[i, k] (x) N[l, k]
    P = sum(N[:, :, None, k, :, None] * N[:, None, :, k, None, :] for k in range(3))  # (n, 3, 3, 4, 4)
    P = (P.reshape(n * 9, 16) @ T2).reshape(n, 3, 3, 10)
    tr = P[:, 0, 0] + P[:, 1, 1] + P[:, 2, 2]  # (n, 10)
    Q = 2.0 * P - torch.eye(3, dtype=N.dtype, device=N.device)[:, :, None] * tr[:, None, None, :]
    # (2 E E^T - tr I) E: sum_l Q[i, l] (x) N[l, j]
    QN = sum(Q[:, :, None, l, :, None] * N[:, None, l, :, None, :] for l in range(3))  # (n, 3, 3, 10, 4)
    QN = (QN.reshape(n * 9, 40) @ T3).reshape(n, 9, 20)
    # det(E) = sum_j N[0, j] (x) cof[0, j], cof[0, j] = N[1, j+1] N[2, j+2] - N[1, j+2] N[2, j+1]
    N1, N2 = N[:, 1], N[:, 2]
    a1, a2 = N1.roll(-1, 1), N1.roll(-2, 1)
    b1, b2 = N2.roll(-1, 1), N2.roll(-2, 1)
    cof = (a1[:, :, :, None] * b2[:, :, None, :] - a2[:, :, :, None] * b1[:, :, None, :]).reshape(n * 3, 16) @ T2
    cof = cof.reshape(n, 3, 10)
    det = sum(cof[:, j, :, None] * N[:, 0, j, None, :] for j in range(3)).reshape(n, 40) @ T3  # (n, 20)
    return torch.cat([det[:, None], QN], 1)


def _hidden_variable_matrix(Cr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nister's B(z) from the reduced rows (n, 10, 10): coefficient tensors ascending in z for the x column
    (n, 3, 4), the y column (n, 3, 4) and the constant column (n, 3, 5)."""
    bx, by, b1 = [], [], []
    for r in (4, 6, 8):
        a, b = Cr[:, r], Cr[:, r + 1]
        bx.append(torch.stack([a[:, 2], a[:, 1] - b[:, 2], a[:, 0] - b[:, 1], -b[:, 0]], -1))
        by.append(torch.stack([a[:, 5], a[:, 4] - b[:, 5], a[:, 3] - b[:, 4], -b[:, 3]], -1))
        b1.append(torch.stack([a[:, 9], a[:, 8] - b[:, 9], a[:, 7] - b[:, 8], a[:, 6] - b[:, 7], -b[:, 6]], -1))
    return torch.stack(bx, 1), torch.stack(by, 1), torch.stack(b1, 1)


def _det_polynomial(bx: Tensor, by: Tensor, b1: Tensor) -> Tensor:
    """det B(z), ascending coefficients (n, 11)."""
    m01 = polymul(by[:, 1], b1[:, 2]) - polymul(by[:, 2], b1[:, 1])  # degree 7
    m02 = polymul(bx[:, 1], b1[:, 2]) - polymul(bx[:, 2], b1[:, 1])
    m12 = polymul(bx[:, 1], by[:, 2]) - polymul(bx[:, 2], by[:, 1])  # degree 6
    return polymul(bx[:, 0], m01) - polymul(by[:, 0], m02) + polymul(b1[:, 0], m12)


def _spd_solve(H: Tensor, g: Tensor) -> Tensor:
    """Solves H x = g for small SPD matrices H (..., k, k) by an unrolled Cholesky (elementwise ops only)."""
    k = H.shape[-1]
    tiny = torch.finfo(H.dtype).tiny ** 0.5
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        d = H[..., j, j] - sum((L[j][p] * L[j][p] for p in range(j)), torch.zeros_like(H[..., 0, 0]))
        d = torch.sqrt(d.clamp_min(tiny))
        L[j][j] = d
        for i in range(j + 1, k):
            v = H[..., i, j] - sum((L[i][p] * L[j][p] for p in range(j)), torch.zeros_like(d))
            L[i][j] = v / d
    y = []
    for i in range(k):
        y.append((g[..., i] - sum((L[i][p] * y[p] for p in range(i)), torch.zeros_like(g[..., 0]))) / L[i][i])
    x = [None] * k
    for i in range(k - 1, -1, -1):
        x[i] = (y[i] - sum((L[p][i] * x[p] for p in range(i + 1, k)), torch.zeros_like(y[0]))) / L[i][i]
    return torch.stack(x, -1)


_IDX: dict = {}


def _mono_index(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Index vectors: quadratic monomials in the flattened outer product c c^T (10 of 16), and the cubic
    monomials as (quadratic index, linear index) pairs."""
    out = _IDX.get(device)
    if out is None:
        qidx = {m: i for i, m in enumerate(_QUAD)}
        q = torch.tensor([4 * a + b for a, b in _QUAD], device=device)
        cq = torch.tensor([qidx[(a, b)] for a, b, _ in _MONOMIALS], device=device)
        cl = torch.tensor([c for _, _, c in _MONOMIALS], device=device)
        out = (q, cq, cl)
        _IDX[device] = out
    return out


def _monomials(c: Tensor) -> tuple[Tensor, Tensor]:
    """Quadratic (..., 10) and cubic (..., 20) monomials of c (..., 4) in the orders ``_QUAD`` / ``_MONOMIALS``."""
    q, cq, cl = _mono_index(c.device)
    quad = (c[..., :, None] * c[..., None, :]).flatten(-2).index_select(-1, q)
    mono = quad.index_select(-1, cq) * c.index_select(-1, cl)
    return quad, mono


def _polish(c: Tensor, M: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """One Gauss-Newton step on the ten homogeneous cubics ``M mono3(c) = 0`` with ``|c| = 1``, taken only for
    the valid solutions whose residual is not already at rounding level.

    Args:
        c: (n, S, 4) coefficients of (X, Y, Z, W), unit norm.
        M: (n, 10, 20) constraint matrix (unit rows).
        valid: (n, S) bool.

    Returns:
        the refined c and its residual norm ``|M mono3(c)|`` (n, S).
    """
    _, mono = _monomials(c)
    r = mono @ M.transpose(1, 2)  # (n, S, 10)
    res = r.norm(dim=-1)
    eps = torch.finfo(c.dtype).eps
    todo = valid & (res > (64 * eps if c.dtype == torch.float64 else 0.0))
    pi, si = todo.nonzero(as_tuple=True)
    if pi.numel() == 0:
        return c, res
    _, _, D, _, _ = _tables(c.dtype, c.device)
    cv = c[pi, si]  # (V, 4)
    Mv = M[pi]  # (V, 10, 20)
    rv = r[pi, si]  # (V, 10)
    quad, _ = _monomials(cv)
    dmono = (quad @ D).reshape(-1, 20, 4)
    J = Mv @ dmono  # (V, 10, 4)
    H = J.transpose(1, 2) @ J + cv[:, :, None] * cv[:, None, :]
    g = (J.transpose(1, 2) @ rv[:, :, None])[..., 0]
    dc = _spd_solve(H, g)
    cv = cv - torch.where(torch.isfinite(dc), dc, torch.zeros_like(dc))
    cv = cv / cv.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)
    _, mv = _monomials(cv)
    rv = (Mv @ mv[:, :, None])[..., 0]
    c = c.clone()
    c[pi, si] = cv
    res = res.clone()
    res[pi, si] = rv.norm(dim=-1)
    return c, res


@torch.no_grad()
def _solve_chunk(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """No-grad 5-point solve for (n, 5, 2) inputs: E (n, 10, 3, 3) and valid (n, 10)."""
    n = x1.shape[0]
    dtype = x1.dtype
    A = epipolar_rows(x1, x2)
    A = A / A.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    basis, ok = _nullspace_5x9(A)  # (n, 4, 9)
    N = basis.permute(0, 2, 1).reshape(n, 3, 3, 4)
    M = _constraint_matrix(N)  # (n, 10, 20)
    M = M / M.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    A10 = M[:, :, :10]
    A10 = torch.where(ok[:, None, None], A10, torch.eye(10, dtype=dtype, device=x1.device))
    Cr, info = torch.linalg.solve_ex(A10, M[:, :, 10:])
    ok = ok & (info == 0) & torch.isfinite(Cr).flatten(1).all(-1)
    Cr = torch.where(ok[:, None, None], Cr, torch.zeros_like(Cr))
    bx, by, b1 = _hidden_variable_matrix(Cr)
    poly = _det_polynomial(bx, by, b1)  # (n, 11)
    uv, valid = real_roots_homogeneous(poly)  # (n, 10, 2), (n, 10)
    u, v = uv[..., 0][:, None, :], uv[..., 1][:, None, :]  # (n, 1, 10)
    rx = v * polyval_homogeneous(bx, u, v)  # (n, 3, 10)
    ry = v * polyval_homogeneous(by, u, v)
    r1 = polyval_homogeneous(b1, u, v)
    rowsB = torch.stack([rx, ry, r1], -1)  # (n, 3 rows, 10 roots, 3)
    c01 = torch.linalg.cross(rowsB[:, 0], rowsB[:, 1], dim=-1)
    c02 = torch.linalg.cross(rowsB[:, 0], rowsB[:, 2], dim=-1)
    c12 = torch.linalg.cross(rowsB[:, 1], rowsB[:, 2], dim=-1)
    cands = torch.stack([c01, c02, c12], -2)  # (n, 10, 3, 3)
    best = cands.norm(dim=-1).argmax(-1)
    nv = cands.gather(2, best[..., None, None].expand(n, 10, 1, 3))[:, :, 0]  # (n, 10, 3)
    u, v = uv[..., 0], uv[..., 1]
    coef = torch.stack([v * nv[..., 0], v * nv[..., 1], u * nv[..., 2], v * nv[..., 2]], -1)  # (n, 10, 4)
    coef = coef / coef.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    coef, res = _polish(coef, M, valid & ok[:, None])
    E = coef @ basis  # (n, 10, 9)
    E = _normalise(E)
    # spurious roots (from near-degenerate eliminations) do not satisfy the original cubics: drop them
    res_tol = 1e4 * torch.finfo(dtype).eps ** 0.75
    valid = valid & ok[:, None] & torch.isfinite(E).all(-1) & (E.abs().amax(-1) > 0) & (res < res_tol)
    E = torch.where(valid[..., None], E, torch.zeros_like(E))
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)  # valid slots first
    E = E.gather(1, order[..., None].expand(n, 10, 9))
    valid = valid.gather(1, order)
    return E.reshape(n, 10, 3, 3), valid


def _normalise(E: Tensor) -> Tensor:
    """Unit Frobenius norm, sign such that the largest-magnitude entry is positive. E (..., 9)."""
    nrm = E.norm(dim=-1, keepdim=True)
    E = E / torch.where(nrm > 0, nrm, torch.ones_like(nrm))
    big = E.gather(-1, E.abs().argmax(-1, keepdim=True))
    return torch.where(big < 0, -E, E)


def essential_constraints(E: Tensor) -> Tensor:
    """The ten cubic constraints of the essential variety: ``det(E)`` and ``2 E E^T E - tr(E E^T) E``
    (row-major), (..., 10) for E (..., 3, 3)."""
    EEt = E @ E.transpose(-1, -2)
    tr = EEt.diagonal(dim1=-2, dim2=-1).sum(-1)
    T = 2.0 * EEt @ E - tr[..., None, None] * E
    return torch.cat([torch.linalg.det(E)[..., None], T.flatten(-2)], -1)


def _constraint_jacobian(E: Tensor) -> Tensor:
    """Jacobian (..., 10, 9) of :func:`essential_constraints` w.r.t. vec(E) (row-major)."""
    U = torch.eye(9, dtype=E.dtype, device=E.device).reshape(9, 3, 3)
    Eb = E[..., None, :, :]
    EtE = (E.transpose(-1, -2) @ E)[..., None, :, :]
    EEt = (E @ E.transpose(-1, -2))[..., None, :, :]
    tr = EEt.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]  # (..., 1, 1, 1)
    trEU = E.flatten(-2)[..., :, None, None]  # tr(E U_k^T) = E_k
    dT = 2.0 * (U @ EtE + Eb @ U.transpose(-1, -2) @ Eb + EEt @ U) - 2.0 * trEU * Eb - tr * U
    # d det / dE = cofactor matrix
    c0 = torch.linalg.cross(E[..., 1, :], E[..., 2, :], dim=-1)
    c1 = torch.linalg.cross(E[..., 2, :], E[..., 0, :], dim=-1)
    c2 = torch.linalg.cross(E[..., 0, :], E[..., 1, :], dim=-1)
    ddet = torch.cat([c0, c1, c2], -1)  # (..., 9)
    return torch.cat([ddet[..., None, :], dT.flatten(-2).transpose(-1, -2)], -2)


def _implicit_refine(E0: Tensor, valid: Tensor, A: Tensor) -> Tensor:
    """One Gauss-Newton step with autograd through ``A`` (n, 5, 9); E0 (n, S, 3, 3) detached."""
    E0 = E0.detach()
    e = E0.flatten(-2)  # (n, S, 9)
    A0 = A.detach()[:, None]  # (n, 1, 5, 9)
    Jg = _constraint_jacobian(E0)  # (n, S, 10, 9)
    g0 = essential_constraints(E0)  # (n, S, 10)
    JtJ = A0.transpose(-1, -2) @ A0 + Jg.transpose(-1, -2) @ Jg + e[..., :, None] * e[..., None, :]
    eye = torch.eye(9, dtype=E0.dtype, device=E0.device)
    JtJ = torch.where(valid[..., None, None], JtJ, eye)
    r = (A[:, None] @ e[..., None])[..., 0]  # (n, S, 5), with grad
    rhs = (A0.transpose(-1, -2) @ r[..., None])[..., 0] + (Jg.transpose(-1, -2) @ g0[..., None])[..., 0] \
        + e * (0.5 * ((e * e).sum(-1, keepdim=True) - 1.0))
    de = torch.linalg.solve_ex(JtJ, rhs[..., None])[0][..., 0]
    de = torch.where(valid[..., None] & torch.isfinite(de), de, torch.zeros_like(de))
    return (e - de).reshape(E0.shape)


def essential_5point(x1n: Tensor, x2n: Tensor) -> EssentialSolutions:
    """Essential matrices from exactly five calibrated correspondences (Nister's 5-point algorithm).

    Args:
        x1n: normalised image coordinates ``K1^-1 x1`` in camera 1, shape (*B, 5, 2).
        x2n: normalised image coordinates ``K2^-1 x2`` in camera 2, shape (*B, 5, 2).

    Returns:
        ``EssentialSolutions``: up to ten real solutions per problem, ``E`` (*B, 10, 3, 3) with
        ``x2n^T E x1n = 0``, unit Frobenius norm, valid slots first; ``valid`` (*B, 10); ``success`` (*B,).
        Problems with non-finite points or a rank-deficient 5x9 system (repeated points, ...) have no valid
        slot and all-zero ``E``. See the module docstring for the algorithm and the gradients.

    Raises:
        ValueError: on wrong shapes (N must be 5), integer dtypes, or mismatched devices/dtypes.
    """
    check_matching_points({"x1n": x1n, "x2n": x2n}, {"x1n": 2, "x2n": 2})
    if x1n.shape[-2] != 5:
        raise ValueError(f"essential_5point needs exactly 5 correspondences (*B, 5, 2), got {tuple(x1n.shape)}")
    lead = x1n.shape[:-2]
    x1 = x1n.reshape(-1, 5, 2)
    x2 = x2n.reshape(-1, 5, 2)
    n = x1.shape[0]
    finite = torch.isfinite(x1).flatten(1).all(-1) & torch.isfinite(x2).flatten(1).all(-1)
    x1 = torch.where(finite[:, None, None], x1, torch.zeros_like(x1))
    x2 = torch.where(finite[:, None, None], x2, torch.zeros_like(x2))
    Es, vs = [], []
    for s in range(0, n, _CHUNK):
        E_c, v_c = _solve_chunk(x1[s:s + _CHUNK].detach(), x2[s:s + _CHUNK].detach())
        Es.append(E_c)
        vs.append(v_c)
    if n == 0:
        E = x1.new_zeros(0, 10, 3, 3)
        valid = torch.zeros(0, 10, dtype=torch.bool, device=x1.device)
    else:
        E, valid = torch.cat(Es), torch.cat(vs)
    valid = valid & finite[:, None]
    if torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad):
        E = _implicit_refine(E, valid, epipolar_rows(x1, x2))
    E = torch.where(valid[..., None, None], E, torch.zeros_like(E))
    E = E.reshape(*lead, 10, 3, 3)
    valid = valid.reshape(*lead, 10)
    return EssentialSolutions(E, valid, valid.any(-1))
