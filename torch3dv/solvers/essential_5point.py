"""Minimal 5-point essential-matrix solver (Nister 2004), batched and differentiable.

Convention (README, "Conventions"): ``x2n^T E x1n = 0`` for normalised image coordinates ``xn = K^-1 x`` and
``E = [t]x R`` with ``cam2_from_cam1 = (R, t)``.

Algorithm (everything batched, no loop over problems; large batches are processed in chunks of ``_CHUNK``
problems so that the temporaries stay cache sized). Float32 inputs are solved in float64 internally (like
kornia's ``find_essential``): rounding in the elimination and in the degree-10 polynomial otherwise loses about
half of the float32 digits and many true solutions (float32 throughout: ~85% of noise-free samples within 1e-3).
The results are returned in the input dtype.

1. The five epipolar rows ``kron(x2n, x1n)`` (scaled to unit norm) have a 4-dimensional null space, computed by a
   vectorised Householder QR of their transpose (orthonormal basis, no LAPACK call): ``E = x X + y Y + z Z + W``.
   A diagonal entry of R below ``eps^(2/3)`` marks a rank-deficient sample (repeated or otherwise degenerate
   points): no solution.
2. ``det(E) = 0`` and ``E E^T E - tr(E E^T) E / 2 = 0`` give ten cubics in (x, y, z): their 10x20 coefficient
   matrix is obtained by evaluating the constraints at the 20 points ``e_a``, ``e_a +- e_b``, ``e_a + e_b + e_c``
   of the coefficient space and inverting that (exact, sparse) interpolation by one product with a constant 20x20
   matrix; then the rows of the reduced system that step 3 needs: one batched LAPACK LU of the 10x10 block
   (partial pivoting), the substitutions written out over the batch axis (see :func:`_reduce`).
3. Nister's hidden-variable step: rows (x^2 z, x^2), (y^2 z, y^2), (xyz, xy) of the reduced system give a 3x3
   matrix ``B(z)`` whose entries are polynomials in z (degrees 3, 3, 4); ``det B(z)`` has degree 10.
4. Its real roots come from :func:`torch3dv.linalg.polynomial.real_roots_list` (Sturm-count isolation on a grid
   of the two charts |z| <= 1 and |1/z| < 1, one Sturm sequence per polynomial, bracketed Newton; no eigenvalue
   problem), as a flat list of homogeneous roots ``z = u / v`` (a root at, or near, infinity is still handled).
   All later steps run on that list (about 4.8 roots per problem) rather than on ten padded slots.
5. For each root the null vector of ``B(z)`` (the best of the three cross products of its rows) gives (x, y) and
   ``E ~ v (x X + y Y + W) + u Z``, normalised to unit Frobenius norm (sign: the entry of largest magnitude is
   positive).
6. Polish: where the ten essential constraints of the unit-norm ``E`` are not already at rounding level, one
   Gauss-Newton step on them in the four homogeneous coefficients of (X, Y, Z, W), analytic Jacobian (it repairs
   the accuracy lost in the elimination of ill-conditioned samples and in roots left short of full convergence), a
   second one for the few that remain far; solutions whose residual stays above ``1e4 eps^(3/4)`` are dropped as
   spurious.

Accuracy (noise-free random scenes ``two_view_scene(100000, 5, seed=11)``; error of the solution closest to the
ground truth, relative Frobenius distance up to sign): float64 median ~2e-14, 99.99% below 1e-6 (kornia
``find_essential``: median ~3e-14, 99.7%); float32 inputs: median ~1.5e-6 (kornia the same), 99.85% below 1e-3
(kornia 99.84%).

Gradients. Steps 1-6 run without autograd. When the inputs require grad, every valid solution ``E0`` is
refined by one Gauss-Newton step on the square-consistent system ``{A(x) e = 0, G(e) = 0, (|e|^2 - 1)/2 = 0}``
(``A``: the five epipolar rows, with autograd; ``G``: the ten cubic essential constraints; all Jacobians
evaluated at the detached ``E0``): ``e = e0 - (J^T J)^-1 J^T r(e0)``. At a solution ``r(e0) = 0`` so the value
is unchanged (up to rounding; the step also polishes it), and the derivative is the implicit-function derivative
``de = -(J^T J)^-1 A^T dA e0``, i.e. the exact first-order motion of the isolated solution. It is undefined at
degenerate samples (J rank deficient, e.g. a double root), where it is clamped to stay finite.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_matching_points
from torch3dv.linalg.polynomial import real_roots_list

# problems per chunk and CPU thread (cache-sized work for each thread: one thread is fastest at 4000, two at
# about 8000); not a multiple of a large power of two: strided copies and gathers over the batch axis of the
# entry-major temporaries are several times slower there (cache-set conflicts)
_CHUNK = 4000
_POLISH_STEPS = 2
_POLISH_TOL = 1e3  # residual (units of eps) above which a solution is polished
_NEWTON_ITERS, _NEWTON_MAX = 4, 13
_CONSTRAINT_COLUMNS = 40000  # columns per evaluation of the constraints in _constraint_matrix


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

# Interpolation points of the cubic forms in w = (x, y, z, 1): e_a (4), e_a + e_b (6), e_a - e_b (6) and
# e_a + e_b + e_c (4). With f the value at a point, the coefficients of w_a^3, w_a^2 w_b, w_a w_b^2, w_a w_b w_c
# are c_aaa = f(e_a), c_aab = (f(e_a + e_b) - f(e_a - e_b)) / 2 - c_bbb, c_abb = (f(e_a + e_b) + f(e_a - e_b)) / 2
# - c_aaa and c_abc = f(e_a + e_b + e_c) - f(e_a + e_b) - f(e_a + e_c) - f(e_b + e_c) + c_aaa + c_bbb + c_ccc.
_PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
_TRIPLES = [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]
_PAIR_A, _PAIR_B = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])


def epipolar_rows(x1n: Tensor, x2n: Tensor) -> Tensor:
    """Rows ``kron(x2h, x1h)`` (*B, N, 9) with ``row . vec(E) = x2h^T E x1h`` (E row-major)."""
    x1h = torch.cat([x1n, torch.ones_like(x1n[..., :1])], -1)
    x2h = torch.cat([x2n, torch.ones_like(x2n[..., :1])], -1)
    return (x2h[..., :, None] * x1h[..., None, :]).flatten(-2)


def _epipolar_rows_T(x1: Tensor, x2: Tensor) -> Tensor:
    """The five epipolar rows in entry-major layout (9, 5, n), scaled to unit norm, for x1, x2 (n, 5, 2)."""
    n = x1.shape[0]
    a = torch.ones(3, 5, n, dtype=x1.dtype, device=x1.device)
    b = torch.ones(3, 5, n, dtype=x1.dtype, device=x1.device)
    a[:2] = x1.permute(2, 1, 0)
    b[:2] = x2.permute(2, 1, 0)
    A = (b[:, None] * a[None]).reshape(9, 5, n)  # kron(x2h, x1h)
    return A / (A * A).sum(0).sqrt_().clamp_min_(torch.finfo(x1.dtype).tiny)


def _null_space(A: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal null-space basis (9, 4, n) of the (5, 9) matrices ``A[:, :, p].T`` (A: (9, 5, n) entry-major,
    unit rows) and a full-rank flag (n,).

    Householder QR of the 9x5 matrices ``A[:, :, p]``, vectorised over the batch (every operation runs on
    contiguous (.., n) blocks): the last four columns of Q span the null space.
    """
    n = A.shape[2]
    tiny = torch.finfo(A.dtype).tiny
    W = A.clone()
    vs, betas, diag = [], [], []
    for k in range(5):
        v = W[k:, k].clone()  # (9 - k, n)
        nrm = (v * v).sum(0).sqrt_()
        x0 = v[0].clone()
        v[0].add_(torch.copysign(nrm, x0))
        beta = (nrm * (nrm + x0.abs())).clamp_min_(tiny).reciprocal_()  # 2 / |v|^2
        if k < 4:
            rest = W[k:, k + 1:]  # (9 - k, 4 - k, n)
            dots = (rest * v[:, None]).sum(0).mul_(beta)
            rest.addcmul_(v[:, None], dots[None], value=-1.0)
        vs.append(v)
        betas.append(beta)
        diag.append(nrm)
    Y = A.new_zeros(9, 4, n)
    Y[5:].copy_(torch.eye(4, dtype=A.dtype, device=A.device)[:, :, None].expand(4, 4, n))
    for k in range(4, -1, -1):
        part = Y[k:]
        dots = (part * vs[k][:, None]).sum(0).mul_(betas[k])
        part.addcmul_(vs[k][:, None], dots[None], value=-1.0)
    full_rank = torch.stack(diag).amin(0) > torch.finfo(A.dtype).eps ** (2.0 / 3.0)
    return Y, full_rank


def _constraints_T(E: Tensor, out: Tensor | None = None) -> Tensor:
    """The ten cubic essential constraints ``det(E)``, ``E E^T E - tr(E E^T) E / 2`` (row-major) for E in
    entry-major layout (9, K) (row-major entries of K matrices) -> (10, K) (written into ``out`` if given).

    Written out on contiguous (K,) / (3, K) blocks, accumulating in place (fewer passes over memory):
    broadcast-and-reduce formulations of these 3x3 products are several times slower on CPU for long K.
    """
    shape = E.shape[1:]
    e = E.unbind(0)
    R0, R1, R2 = E.reshape(3, 3, *shape).unbind(0)
    Sb = E.new_empty((6,) + shape)  # E E^T, upper triangle
    S = {}
    k = 0
    for i in range(3):
        for j in range(i, 3):
            S[i, j] = S[j, i] = torch.mul(e[3 * i], e[3 * j], out=Sb[k]).addcmul_(e[3 * i + 1], e[3 * j + 1]) \
                .addcmul_(e[3 * i + 2], e[3 * j + 2])
            k += 1
    h = torch.add(S[0, 0], S[1, 1]).add_(S[2, 2]).mul_(0.5)
    for i in range(3):
        S[i, i].sub_(h)  # S - h I
    if out is None:
        out = E.new_empty((10,) + shape)
    T = out[1:].reshape(3, 3, *shape).unbind(0)
    for i in range(3):
        torch.mul(R0, S[i, 0], out=T[i]).addcmul_(R1, S[i, 1]).addcmul_(R2, S[i, 2])
    c = E.new_empty((3,) + shape)  # first row of the cofactor matrix
    torch.mul(e[4], e[8], out=c[0]).addcmul_(e[5], e[7], value=-1.0)
    torch.mul(e[5], e[6], out=c[1]).addcmul_(e[3], e[8], value=-1.0)
    torch.mul(e[3], e[7], out=c[2]).addcmul_(e[4], e[6], value=-1.0)
    torch.mul(e[0], c[0], out=out[0]).addcmul_(e[1], c[1]).addcmul_(e[2], c[2])
    return out


_INTERP: dict = {}


def _interpolation_matrix(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The (20, 20) matrix taking the values of a cubic form at the 20 interpolation points to its coefficients in
    ``_MONOMIALS`` order (see the formulas above ``_PAIRS``)."""
    key = (dtype, device)
    M = _INTERP.get(key)
    if M is None:
        col = {mono: j for j, mono in enumerate(_MONOMIALS)}
        pidx = {p: 4 + i for i, p in enumerate(_PAIRS)}  # f(e_a + e_b); f(e_a - e_b) at + 6
        M = torch.zeros(20, 20, dtype=torch.float64)
        for a in range(4):
            M[col[(a, a, a)], a] = 1.0
        for (a, b), i in pidx.items():
            M[col[(a, a, b)], i] += 0.5
            M[col[(a, a, b)], i + 6] -= 0.5
            M[col[(a, a, b)], b] -= 1.0
            M[col[(a, b, b)], i] += 0.5
            M[col[(a, b, b)], i + 6] += 0.5
            M[col[(a, b, b)], a] -= 1.0
        for t, (a, b, c) in enumerate(_TRIPLES):
            r = col[(a, b, c)]
            M[r, 16 + t] = 1.0
            for p in ((a, b), (a, c), (b, c)):
                M[r, pidx[p]] -= 1.0
            for q in (a, b, c):
                M[r, q] += 1.0
        M = M.to(dtype=dtype, device=device)
        _INTERP[key] = M
    return M


def _constraint_matrix(N: Tensor) -> Tensor:
    """Ten cubic constraints for E = sum_a N[:, a] w_a, w = (x, y, z, 1), N (9, 4, n) entry-major.

    Returns the coefficients (10 constraints, 20 monomials, n) in ``_MONOMIALS`` order; row 0: det(E); rows 1-9:
    E E^T E - tr(E E^T) E / 2 (row-major). (Temporaries are written in place where they are large: fresh
    multi-megabyte allocations cost page faults on CPU.)
    """
    n = N.shape[2]
    pts = N.new_empty(9, 20, n)
    pts[:, :4] = N
    Nc = N.unbind(1)
    for i, (a, b) in enumerate(_PAIRS):
        torch.add(Nc[a], Nc[b], out=pts[:, 4 + i])
        torch.sub(Nc[a], Nc[b], out=pts[:, 10 + i])
    for i, (a, b, c) in enumerate(_TRIPLES):
        torch.add(pts[:, 4 + _PAIRS.index((a, b))], Nc[c], out=pts[:, 16 + i])
    # evaluated a few points at a time: the temporaries of ~40,000 columns stay cache resident (the whole set of
    # 20 n columns is several times slower per column, with two threads even more)
    f = N.new_empty(10, 20, n)
    jb = max(1, min(20, _CONSTRAINT_COLUMNS // n))
    for j in range(0, 20, jb):
        _constraints_T(pts[:, j:j + jb].reshape(9, -1), out=f[:, j:j + jb].reshape(10, -1))
    del pts
    return torch.matmul(_interpolation_matrix(N.dtype, N.device), f)  # (10, 20, n)


def _transpose(x: Tensor, block: int = 1024) -> Tensor:
    """``x.t().contiguous()`` for a contiguous (K, k) x, on CPU copied in slabs of ``block`` rows of x (one copy
    of the whole transposed view is two to three times slower there, with two threads more)."""
    if x.device.type != "cpu":
        return x.t().contiguous()
    out = x.new_empty(x.shape[1], x.shape[0])
    for s in range(0, x.shape[0], block):
        out[:, s:s + block].copy_(x[s:s + block].t())
    return out


def _reduce(C: Tensor) -> tuple[Tensor, Tensor]:
    """Rows 4-9 of ``X = A^-1 B`` for the constraint matrices ``C = [A | B]`` (10, 20, n) (entry-major): (60, n)
    entry-major (row-major 6x10 blocks) and a success flag (n,).

    One batched LAPACK LU of the 10x10 blocks A (partial pivoting); the pivoting, the forward substitution with
    L (10 right-hand sides) and the back substitution of the six rows needed are written out on contiguous
    (.., n) blocks (a batched ``lu_solve`` costs twice the factorisation on CPU). The rows need no scaling: every
    constraint is a cubic in the orthonormal null-space basis, so they are balanced by construction (scaling them
    to unit norm changes neither the accuracy nor the number of solutions measurably).
    """
    n = C.shape[2]
    LU, piv, info = torch.linalg.lu_factor_ex(C[:, :10].permute(2, 1, 0).contiguous().mT)  # column-major blocks
    LUt = _transpose(LU.mT.reshape(n, 100))  # (100, n): entry (i, j) in row 10 j + i
    # row permutation: LAPACK's sequential swaps k <-> piv_k applied to the row indices
    perm = torch.arange(10, device=C.device)[:, None].repeat(1, n)
    pv = piv.t().long() - 1  # (10, n)
    for k in range(9):
        pk = pv[k:k + 1]
        a = perm[k:k + 1].clone()
        perm[k:k + 1] = perm.gather(0, pk)
        perm.scatter_(0, pk, a)
    Y = C[:, 10:].gather(0, perm[:, None].expand(10, 10, n))  # P B, (10 rows, 10 columns, n)
    for j in range(9):  # forward substitution with the unit lower triangle, column by column
        Y[j + 1:].addcmul_(LUt[10 * j + j + 1:10 * j + 10, None], Y[j:j + 1], value=-1.0)
    for j in range(9, 4, -1):  # back substitution, rows 9 .. 4 only
        Y[j].div_(LUt[11 * j])
        Y[4:j].addcmul_(LUt[10 * j + 4:10 * j + j, None], Y[j:j + 1], value=-1.0)
    Y[4].div_(LUt[44])
    X = Y[4:].reshape(60, n)
    return X, (info == 0) & torch.isfinite(X.sum(0))


def _hidden_variable_matrix(X: Tensor) -> Tensor:
    """Nister's B(z) from rows 4-9 of the reduced system, X (60, n) (see :func:`_reduce`), entry-major (39, n):
    the coefficients (ascending in z) of the x column (3 rows x 4), the y column (3 x 4) and the constant column
    (3 x 5).

    With rows ``a``, ``b`` = rows r, r + 1 of the reduced system (r = 4, 6, 8; columns xz^2, xz, x, yz^2, yz, y,
    z^3, z^2, z, 1):
    ``bx = (a2, a1 - b2, a0 - b1, -b0)``, ``by = (a5, a4 - b5, a3 - b4, -b3)``,
    ``b1 = (a9, a8 - b9, a7 - b8, a6 - b7, -b6)``.
    """
    ia, ib = _hv_index(X.device)
    flat = torch.cat([X, X.new_zeros(1, X.shape[1])])  # (61, n), last row: zero
    return flat.index_select(0, ia) - flat.index_select(0, ib)


_HV: dict = {}


def _hv_index(device: torch.device) -> tuple[Tensor, Tensor]:
    out = _HV.get(device)
    if out is None:
        Z = 60  # index of the zero row
        ia, ib = [], []
        for cols in ([(2, Z), (1, 2), (0, 1), (Z, 0)], [(5, Z), (4, 5), (3, 4), (Z, 3)],
                     [(9, Z), (8, 9), (7, 8), (6, 7), (Z, 6)]):
            for r in (0, 2, 4):  # rows 4, 6, 8 of Cr -> 0, 2, 4 of Cr[4:]
                for ca, cb in cols:
                    ia.append(Z if ca == Z else 10 * r + ca)
                    ib.append(Z if cb == Z else 10 * (r + 1) + cb)
        out = (torch.tensor(ia, device=device), torch.tensor(ib, device=device))
        _HV[device] = out
    return out


def _polymul_T(a: Tensor, b: Tensor) -> Tensor:
    """Product of polynomials in coefficient-major layout: (la, n) x (lb, n) -> (la + lb - 1, n)."""
    la, lb = a.shape[0], b.shape[0]
    out = a.new_zeros(la + lb - 1, a.shape[1])
    for i, ai in enumerate(a.unbind(0)):
        out[i:i + lb].addcmul_(b, ai)
    return out


def _det_polynomial(B: Tensor) -> Tensor:
    """det B(z), ascending coefficients (11, n), from B (39, n) (see :func:`_hidden_variable_matrix`)."""
    bx = [B[4 * r:4 * r + 4] for r in range(3)]
    by = [B[12 + 4 * r:16 + 4 * r] for r in range(3)]
    b1 = [B[24 + 5 * r:29 + 5 * r] for r in range(3)]
    m01 = _polymul_T(by[1], b1[2]) - _polymul_T(by[2], b1[1])  # degree 7
    m02 = _polymul_T(bx[1], b1[2]) - _polymul_T(bx[2], b1[1])
    m12 = _polymul_T(bx[1], by[2]) - _polymul_T(bx[2], by[1])  # degree 6
    return _polymul_T(bx[0], m01) - _polymul_T(by[0], m02) + _polymul_T(b1[0], m12)


def _spd_solve4(H: Tensor, g: Tensor) -> Tensor:
    """Solves H x = g for 4x4 SPD matrices in entry-major layout, H (4, 4, P), g (4, P), by an unrolled Cholesky
    (elementwise operations on contiguous (P,) vectors only)."""
    tiny = torch.finfo(H.dtype).tiny ** 0.5
    h = H.reshape(16, -1).unbind(0)
    g0, g1, g2, g3 = g.unbind(0)
    l00 = h[0].clamp_min(tiny).sqrt_()
    l10, l20, l30 = h[4] / l00, h[8] / l00, h[12] / l00
    l11 = torch.addcmul(h[5], l10, l10, value=-1.0).clamp_min_(tiny).sqrt_()
    l21 = torch.addcmul(h[9], l20, l10, value=-1.0).div_(l11)
    l31 = torch.addcmul(h[13], l30, l10, value=-1.0).div_(l11)
    l22 = torch.addcmul(h[10], l20, l20, value=-1.0).addcmul_(l21, l21, value=-1.0).clamp_min_(tiny).sqrt_()
    l32 = torch.addcmul(h[14], l30, l20, value=-1.0).addcmul_(l31, l21, value=-1.0).div_(l22)
    l33 = torch.addcmul(h[15], l30, l30, value=-1.0).addcmul_(l31, l31, value=-1.0) \
        .addcmul_(l32, l32, value=-1.0).clamp_min_(tiny).sqrt_()
    y0 = g0 / l00
    y1 = torch.addcmul(g1, l10, y0, value=-1.0).div_(l11)
    y2 = torch.addcmul(g2, l20, y0, value=-1.0).addcmul_(l21, y1, value=-1.0).div_(l22)
    y3 = torch.addcmul(g3, l30, y0, value=-1.0).addcmul_(l31, y1, value=-1.0).addcmul_(l32, y2, value=-1.0) \
        .div_(l33)
    x3 = y3 / l33
    x2 = torch.addcmul(y2, l32, x3, value=-1.0).div_(l22)
    x1 = torch.addcmul(y1, l21, x2, value=-1.0).addcmul_(l31, x3, value=-1.0).div_(l11)
    x0 = torch.addcmul(y0, l10, x1, value=-1.0).addcmul_(l20, x2, value=-1.0).addcmul_(l30, x3, value=-1.0) \
        .div_(l00)
    return torch.stack([x0, x1, x2, x3])


def _normalise_T(E: Tensor) -> Tensor:
    """Unit Frobenius norm, sign such that the largest-magnitude entry is positive. E (9, K) entry-major."""
    E = E / (E * E).sum(0).sqrt_().clamp_min_(torch.finfo(E.dtype).tiny)
    Ea = E.abs()
    big = (E * (Ea == Ea.amax(0))).sum(0)  # the largest entry (ties of opposite sign: 0, kept positive)
    return E * (1.0 - 2.0 * (big < 0).to(E.dtype))


def _gather_cols(X: Tensor, idx: Tensor) -> Tensor:
    """``X[:, idx]`` for X (k, K): ``gather`` is several times faster on CPU than ``index_select`` along dim 1."""
    return torch.gather(X, 1, idx[None].expand(X.shape[0], idx.numel()))


def _combine(Nr: Tensor, c: Tensor) -> Tensor:
    """``sum_a c_a N_a``: Nr (9, 4, P), c (4, P) -> (9, P)."""
    E = Nr[:, 0] * c[0]
    for a in range(1, 4):
        E = torch.addcmul(E, Nr[:, a], c[a])
    return E


def _residual_jacobian(E: Tensor, Nr: Tensor) -> tuple[Tensor, Tensor]:
    """The ten essential constraints G(E) (10, P) and their derivatives along the basis matrices,
    ``J[:, a] = DG(E)[N_a]`` (10, 4, P), for E (9, P) and Nr (9, 4, P) in entry-major layout.

    Analytic: ``D det(E)[H] = <cof(E), H>`` and, with ``S = E E^T``, ``W = E^T E``, ``h = tr(S) / 2`` and
    ``Q = E H^T``, ``D(E E^T E - h E)[H] = (S - h I) H + H W + (Q - tr(Q) I) E`` (3x3 products written out over
    the batch axis, the four directions at once).
    """
    P = E.shape[1]
    Em = E.view(3, 3, P)
    Hm = Nr.view(3, 3, 4, P)
    R0, R1, R2 = Em.unbind(0)
    cof = torch.stack([torch.linalg.cross(R1, R2, dim=0), torch.linalg.cross(R2, R0, dim=0),
                       torch.linalg.cross(R0, R1, dim=0)])  # cofactor matrix (3, 3, P)
    S = (Em[:, None] * Em[None]).sum(2)  # E E^T
    W = (Em[:, :, None] * Em[:, None]).sum(0)  # E^T E
    h = 0.5 * (S[0, 0] + S[1, 1] + S[2, 2])
    for i in range(3):
        S[i, i] -= h
    r = E.new_empty(10, P)
    torch.sum(R0 * cof[0], 0, out=r[0])
    T = r[1:].view(3, 3, P)
    torch.mul(S[:, 0, None], Em[0][None], out=T)
    T.addcmul_(S[:, 1, None], Em[1][None]).addcmul_(S[:, 2, None], Em[2][None])
    # directional derivatives (3, 3, 4 directions, P)
    Q = Em[:, 0, None, None] * Hm[None, :, 0]
    Q.addcmul_(Em[:, 1, None, None], Hm[None, :, 1]).addcmul_(Em[:, 2, None, None], Hm[None, :, 2])
    trQ = Q[0, 0] + Q[1, 1] + Q[2, 2]
    for i in range(3):
        Q[i, i] -= trQ
    J = E.new_empty(10, 4, P)
    torch.sum(cof.view(9, 1, P) * Nr, 0, out=J[0])
    D = J[1:].view(3, 3, 4, P)
    torch.mul(S[:, 0, None, None], Hm[0][None], out=D)
    for k in range(3):
        if k > 0:
            D.addcmul_(S[:, k, None, None], Hm[k][None])
        D.addcmul_(Hm[:, k, None], W[k][None, :, None]).addcmul_(Q[:, k, None], Em[k][None, :, None])
    return r, J


def _polish(E: Tensor, c: Tensor, Nr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Gauss-Newton step on the ten essential constraints of ``E = sum_a c_a N_a`` in the coefficients c.

    Args:
        E: (9, P) unit-norm solutions (entry-major), c: (4, P) their unit coefficients, Nr: (9, 4, P) the
            orthonormal null-space bases of their problems.

    Returns:
        the refined E (9, P), c (4, P) and the residual norm (P,) (Jacobian: :func:`_residual_jacobian`).
    """
    tiny = torch.finfo(E.dtype).tiny
    r, J = _residual_jacobian(E, Nr)
    H = (J[:, :, None] * J[:, None]).sum(0).addcmul_(c[:, None], c[None])
    g = (J * r[:, None]).sum(0)
    dc = torch.nan_to_num(_spd_solve4(H, g), nan=0.0, posinf=0.0, neginf=0.0)
    c1 = c - dc
    c1 = c1 / (c1 * c1).sum(0).sqrt_().clamp_min_(tiny)
    E1 = _combine(Nr, c1)
    G1 = _constraints_T(E1)
    return E1, c1, (G1 * G1).sum(0).sqrt_()


@torch.no_grad()
def _solve_chunk(x1: Tensor, x2: Tensor, E_out: Tensor, valid_out: Tensor) -> None:
    """No-grad 5-point solve for (n, 5, 2) inputs (the work dtype), written into the zero-initialised E_out
    (n' * 10, 9) (any float dtype) and valid_out (n' * 10,) bool, n' <= n (trailing problems are padding)."""
    n = x1.shape[0]
    dtype = x1.dtype
    device = x1.device
    tiny = torch.finfo(dtype).tiny
    eps = torch.finfo(dtype).eps
    N, ok = _null_space(_epipolar_rows_T(x1, x2))  # (9, 4, n) entry-major
    N = torch.where(ok, N, torch.eye(9, 4, dtype=dtype, device=device)[:, :, None])
    X, solved = _reduce(_constraint_matrix(N))  # rows 4-9 of the reduced 10x20 system
    ok &= solved
    B = _hidden_variable_matrix(X)  # (39, n)
    poly = torch.where(ok, _det_polynomial(B), 0.0).t()  # (n, 11)
    prob, slot, uv = real_roots_list(poly, iters=_NEWTON_ITERS, max_iter=_NEWTON_MAX)
    V = prob.numel()
    u, v = uv.t().unbind(0)
    # B(z) rows at each root, homogenised: [v bx(u, v), v by(u, v), b1(u, v)] . (x, y, 1) = 0
    Bp = _gather_cols(B, prob)
    u2, v2 = u * u, v * v
    m3 = (v2 * v, u * v2, u2 * v, u2 * u)  # u^k v^(3 - k)
    m4 = (v2 * v2, m3[1] * v, u2 * v2, m3[3] * v, u2 * u2)  # u^k v^(4 - k)
    bxv, byv, b1v = Bp[:12].reshape(3, 4, V), Bp[12:24].reshape(3, 4, V), Bp[24:].reshape(3, 5, V)
    rx, ry, r1 = bxv[:, 0] * m3[0], byv[:, 0] * m3[0], b1v[:, 0] * m4[0]
    for k in range(1, 4):
        rx.addcmul_(bxv[:, k], m3[k])
        ry.addcmul_(byv[:, k], m3[k])
        r1.addcmul_(b1v[:, k], m4[k])
    r1.addcmul_(b1v[:, 4], m4[4])
    # the three cross products of the rows (x, y, 1)-columns [v rx, v ry, r1]: (3 candidates, 3, V)
    rows = torch.stack([rx * v, ry * v, r1])  # (3 columns, 3 rows, V)
    ra, rb = rows.index_select(1, _PAIR_A.to(device)), rows.index_select(1, _PAIR_B.to(device))  # rows 0,0,1 / 1,2,2
    cands = torch.stack([torch.addcmul(ra[1] * rb[2], ra[2], rb[1], value=-1.0),
                         torch.addcmul(ra[2] * rb[0], ra[0], rb[2], value=-1.0),
                         torch.addcmul(ra[0] * rb[1], ra[1], rb[0], value=-1.0)], 1)
    nrm = (cands * cands).sum(1)
    w = (nrm == nrm.amax(0)).to(dtype)
    nv = (cands * (w / w.sum(0))[:, None]).sum(0)  # the largest of the three (averaged on exact ties)
    coef = torch.stack([v * nv[0], v * nv[1], u * nv[2], v * nv[2]])  # (4, V)
    coef.div_((coef * coef).sum(0).sqrt_().clamp_min_(tiny))
    Nr = _gather_cols(N.reshape(36, n), prob).reshape(9, 4, V)
    E = _combine(Nr, coef)  # (9, V), unit norm (orthonormal basis)
    G = _constraints_T(E)
    res = (G * G).sum(0).sqrt_()
    # polish the solutions that are not at rounding level yet (a second step for the few far ones)
    todo = (res > _POLISH_TOL * eps).nonzero()[:, 0]
    for step in range(_POLISH_STEPS):
        if todo.numel() == 0:
            break
        E0, c0, N0 = _gather_cols(E, todo), _gather_cols(coef, todo), _gather_cols(Nr.reshape(36, V), todo)
        res0 = res.index_select(0, todo)
        E1, c1, res1 = _polish(E0, c0, N0.reshape(9, 4, -1))
        better = (res1 < res0).to(dtype)
        E.index_copy_(1, todo, torch.lerp(E0, E1, better))
        res.index_copy_(0, todo, torch.minimum(res1, res0))
        if step + 1 < _POLISH_STEPS:
            coef.index_copy_(1, todo, torch.lerp(c0, c1, better))
            todo = todo.index_select(0, ((res1 > _POLISH_TOL * eps) & (res1 < 0.5 * res0)).nonzero()[:, 0])
    keep = (res < 1e4 * eps ** 0.75) & ok.index_select(0, prob)  # spurious roots; NaN residuals fail the test
    kidx = keep.nonzero()[:, 0]
    prob, slot, E = prob.index_select(0, kidx), slot.index_select(0, kidx), _gather_cols(E, kidx)
    # compact the slots (valid first)
    flat = prob * 10 + slot
    kept = torch.zeros(n * 10, dtype=torch.int8, device=device).index_fill_(0, flat, 1).reshape(n, 10)
    flat = prob * 10 + (kept.cumsum(-1, dtype=torch.int8) - 1).reshape(-1).index_select(0, flat)
    E_out.index_copy_(0, flat, _normalise_T(E).to(E_out.dtype).t().contiguous())
    valid_out.index_fill_(0, flat, True)


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
        slot and all-zero ``E``. Float32 inputs are solved in float64 internally and returned in float32. See the
        module docstring for the algorithm and the gradients.

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
    dtype = x1.dtype
    work = torch.float64 if dtype in (torch.float32, torch.float16, torch.bfloat16) else dtype
    # non-finite problems (a sum keeps NaN and inf; a reduction over the ten short rows is several times slower)
    ones = torch.ones(10, dtype=work, device=x1.device)
    finite = torch.isfinite(x1.detach().reshape(n, 10).to(work) @ ones + x2.detach().reshape(n, 10).to(work) @ ones)
    all_finite = bool(finite.all())
    if not all_finite:
        x1 = torch.where(finite[:, None, None], x1, torch.zeros_like(x1))
        x2 = torch.where(finite[:, None, None], x2, torch.zeros_like(x2))
    E = x1.new_zeros(n * 10, 9)
    valid = torch.zeros(n * 10, dtype=torch.bool, device=x1.device)
    chunk = _CHUNK * (min(4, max(1, torch.get_num_threads())) if x1.device.type == "cpu" else 1)
    for s in range(0, n, chunk):
        a, b = x1[s:s + chunk].detach().to(work), x2[s:s + chunk].detach().to(work)
        k = a.shape[0]
        if k % 64 == 0:  # pad with 8 degenerate (all-zero) problems, see _CHUNK
            a, b = torch.cat([a, a.new_zeros(8, 5, 2)]), torch.cat([b, b.new_zeros(8, 5, 2)])
        _solve_chunk(a, b, E[10 * s:10 * (s + k)], valid[10 * s:10 * (s + k)])
    E = E.reshape(n, 10, 3, 3)
    valid = valid.reshape(n, 10)
    if not all_finite:
        valid = valid & finite[:, None]
    if torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad):
        E = _implicit_refine(E, valid, epipolar_rows(x1, x2))
        E = torch.where(valid[..., None, None], E, torch.zeros_like(E))
    # (without grad the invalid slots are already zero)
    E = E.reshape(*lead, 10, 3, 3)
    valid = valid.reshape(*lead, 10)
    return EssentialSolutions(E, valid, valid[..., 0].clone())  # valid slots come first
