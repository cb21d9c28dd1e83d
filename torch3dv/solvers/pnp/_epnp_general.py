"""EPnP for the common case (non-planar, at least 6 used points) in entry-major layout, for large batches on CPU.

The same algorithm as :mod:`torch3dv.solvers.pnp.epnp` (non-planar branch, one start), written with the batch
axis innermost and contiguous (every tensor is (entries..., b)), in chunks of ``_CHUNK`` problems, with the
small fixed-size algebra (3x3 moments and Cholesky, the 4x4 Schur complement, its null vector, the
Gauss-Newton solves, the polar iteration) unrolled into element-wise operations. Two changes of formulation,
neither of which changes the result beyond rounding:

* Gauss-Newton runs on the four control-point depths ``z`` directly instead of on the coefficients ``beta`` of
  the eigenvectors of the Schur complement ``S``: the eigenvectors form an orthonormal basis of the same 4D
  space and Gauss-Newton (with a ridge proportional to the trace of ``J^T J``) is invariant under an orthogonal
  change of variables, so the iterates are the same.
* Only the start needs an eigenvector, the one of the smallest eigenvalue of ``S``: it is taken from the
  adjugate of ``S`` (``adj(S) = sum_k prod_(j != k) lambda_j v_k v_k^T``, dominated by ``v_1``: its largest
  column) and refined by one power step with the adjugate (an inverse-iteration step), instead of a LAPACK
  ``eigh`` per problem.

Gradients flow by plain autograd (element-wise operations, gathers). Problems that are not handled here
(planar, fewer than 6 used points, degenerate or non-finite) are flagged and solved by the general code.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from torch3dv.solvers.pnp._common import planarity_tolerance
from torch3dv.solvers.pnp._small import sym3_eigvals

# problems per chunk (temporaries stay cache sized); not a power of two (cache-set conflicts of strided copies)
_CHUNK = 3000
_GN_ITERATIONS = 3

_PI, _PJ = [0, 0, 0, 1, 1, 2], [1, 2, 3, 2, 3, 3]  # control-point pairs (i < j), as in epnp._pairs(4)
_U10 = [(i, j) for i in range(4) for j in range(i, 4)]  # unique entries of a symmetric 4x4 matrix
_FULL16 = [_U10.index((min(i, j), max(i, j))) for i in range(4) for j in range(4)]  # 10 unique -> 16
_TABLES: dict = {}
_SYM3 = torch.tensor([0, 1, 2, 1, 3, 4, 2, 4, 5])  # 6 unique -> 9 entries of a symmetric 3x3 matrix
_IA, _IB = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 1, 2, 1, 2, 2])  # covariance entries


def _adjugate_tables() -> tuple[list[int], list[int], list[int], list[float]]:
    """Index tables of the 10 unique cofactors of a symmetric 4x4 matrix (flat, row-major) as sums of 6 signed
    triple products each (the 3x3 minors by the Leibniz formula)."""
    i1, i2, i3, sg = [], [], [], []
    for i, j in _U10:
        rows = [r for r in range(4) if r != i]
        cols = [c for c in range(4) if c != j]
        for perm in itertools.permutations(range(3)):
            inv = sum(perm[a] > perm[b] for a in range(3) for b in range(a + 1, 3))
            i1.append(4 * rows[0] + cols[perm[0]])
            i2.append(4 * rows[1] + cols[perm[1]])
            i3.append(4 * rows[2] + cols[perm[2]])
            sg.append((-1.0) ** (inv + i + j))
    return i1, i2, i3, sg


# cofactor (cross-product) rows of a 3x3 matrix X (flat, row-major): cof = X[a] X[b] - X[c] X[d]
_COF = ([4, 5, 3, 7, 8, 6, 1, 2, 0], [8, 6, 7, 2, 0, 1, 5, 3, 4],
        [5, 3, 4, 8, 6, 7, 2, 0, 1], [7, 8, 6, 1, 2, 0, 4, 5, 3])


def _tables(dtype: torch.dtype, device: torch.device) -> dict:
    key = (dtype, device)
    t = _TABLES.get(key)
    if t is None:
        i1, i2, i3, sg = _adjugate_tables()
        lng = {"dtype": torch.long, "device": device}
        pz = torch.zeros(6, 4, dtype=dtype)
        for p, (i, j) in enumerate(zip(_PI, _PJ)):
            pz[p, j] += 1.0
            if i > 0:
                pz[p, i] -= 1.0
        ia = [i for i, _ in _U10]
        ib = [j for _, j in _U10]
        t = {
            "adj": tuple(torch.tensor(v, **lng) for v in (i1, i2, i3)),
            "adj_sign": torch.tensor(sg, dtype=dtype, device=device)[:, None],
            "full16": torch.tensor(_FULL16, **lng),
            "diag4": torch.tensor([0, 5, 10, 15], **lng),
            "u10a": torch.tensor(ia, **lng), "u10b": torch.tensor(ib, **lng),
            "pi": torch.tensor(_PI, **lng), "pj": torch.tensor(_PJ, **lng),
            "pz": pz.to(device)[:, :, None],  # (6, 4, 1): z-part of the pair difference vectors
            "cof": tuple(torch.tensor(v, **lng) for v in _COF),
            "eye9": torch.eye(3, dtype=dtype, device=device).reshape(9, 1),
        }
        _TABLES[key] = t
    return t


def _moments(we: Tensor, Xe: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Weight sum (b,), its clamped inverse, centroid c0 (3, b), covariance entries (6, b) (00, 01, 02, 11, 12,
    22) and centred points (3, N, b) for weights (N, b) and points (3, N, b)."""
    tiny = torch.finfo(Xe.dtype).tiny
    wsum = we.sum(0)
    iw = wsum.clamp_min(tiny).reciprocal()
    c0 = (Xe * we).sum(1) * iw
    D = Xe - c0[:, None]
    Dw = D * we
    C = (Dw.index_select(0, _IA.to(we.device)) * D.index_select(0, _IB.to(we.device))).sum(1) * iw
    return wsum, iw, c0, C, D


def _classify(we: Tensor, Xe: Tensor, ok_in: Tensor) -> Tensor:
    """True for the problems of a chunk that this path solves: finite inputs (``ok_in``), at least 6 used
    points, non-collinear and non-planar (the same thresholds as :func:`torch3dv.solvers.pnp.epnp.epnp`)."""
    dtype = Xe.dtype
    tiny = torch.finfo(dtype).tiny
    cnt = (we != 0).sum(0)
    _, _, _, C, _ = _moments(we, Xe)
    Cm = C.index_select(0, _SYM3.to(C.device)).reshape(3, 3, -1).permute(2, 0, 1)
    ev = sym3_eigvals(Cm)
    top = ev[:, 2].clamp_min(tiny)
    tol = planarity_tolerance(dtype)
    return ok_in & (cnt >= 6) & (ev[:, 1] > tol * top) & (ev[:, 2] > tiny) & (ev[:, 0] > tol * top)


def _spd_solve4(h: list[Tensor], g: list[Tensor]) -> Tensor:
    """Solves H x = g for symmetric 4x4 H given by its 10 unique entries ``h`` (``_U10`` order, (b,) each) by an
    unrolled Cholesky; zero where a pivot is not positive or the result is not finite (like
    :func:`torch3dv.solvers.pnp._small.spd_solve_small`)."""
    tiny = torch.finfo(h[0].dtype).tiny
    h00, h01, h02, h03, h11, h12, h13, h22, h23, h33 = h
    s0 = h00
    l00 = s0.clamp_min(tiny).sqrt()
    i0 = l00.reciprocal()
    l10, l20, l30 = h01 * i0, h02 * i0, h03 * i0
    s1 = h11 - l10 * l10
    i1 = s1.clamp_min(tiny).rsqrt()
    l21 = (h12 - l20 * l10) * i1
    l31 = (h13 - l30 * l10) * i1
    s2 = h22 - l20 * l20 - l21 * l21
    i2 = s2.clamp_min(tiny).rsqrt()
    l32 = (h23 - l30 * l20 - l31 * l21) * i2
    s3 = h33 - l30 * l30 - l31 * l31 - l32 * l32
    i3 = s3.clamp_min(tiny).rsqrt()
    y0 = g[0] * i0
    y1 = (g[1] - l10 * y0) * i1
    y2 = (g[2] - l20 * y0 - l21 * y1) * i2
    y3 = (g[3] - l30 * y0 - l31 * y1 - l32 * y2) * i3
    x3 = y3 * i3
    x2 = (y2 - l32 * x3) * i2
    x1 = (y1 - l21 * x2 - l31 * x3) * i1
    x0 = (y0 - l10 * x1 - l20 * x2 - l30 * x3) * i0
    x = torch.stack([x0, x1, x2, x3])
    ok = (torch.minimum(torch.minimum(s0, s1), torch.minimum(s2, s3)) > 0) & torch.isfinite(x0 + x1 + x2 + x3)
    return torch.where(ok, x, 0.0)


def _cofactors(X: Tensor, T: dict) -> Tensor:
    """Cofactor matrices (9, b) of 3x3 matrices X (9, b) (row-major entries)."""
    a, b, c, d = T["cof"]
    return X.index_select(0, a) * X.index_select(0, b) - X.index_select(0, c) * X.index_select(0, d)


def _polar(H: Tensor, iterations: int, T: dict) -> tuple[Tensor, Tensor]:
    """:func:`torch3dv.solvers.pnp._small.polar3` for H (9, b) (row-major entries), entry-major."""
    dtype = H.dtype
    tiny = torch.finfo(dtype).tiny
    X = H * (H * H).sum(0).sqrt().clamp_min(tiny).reciprocal()
    cof = _cofactors(X, T)
    det = X[0] * cof[0] + X[1] * cof[1] + X[2] * cof[2]
    ok = det > 1e3 * torch.finfo(dtype).eps ** 2
    if not bool(ok.all()):
        X = torch.where(ok, X, T["eye9"])
        cof = _cofactors(X, T)
        det = X[0] * cof[0] + X[1] * cof[1] + X[2] * cof[2]
    for i in range(iterations):
        if i > 0:
            cof = _cofactors(X, T)
            det = X[0] * cof[0] + X[1] * cof[1] + X[2] * cof[2]
        g = det.abs().clamp_min(tiny).pow(-1.0 / 3.0)
        X = 0.5 * (g * X + cof * (g * det).reciprocal())
    ok = ok & torch.isfinite(X.sum(0))
    return torch.where(ok, X, T["eye9"]), ok


def _solve_chunk(ue: Tensor, ve: Tensor, Xe: Tensor, we: Tensor, T: dict) -> tuple[Tensor, Tensor, Tensor]:
    """EPnP on a chunk: normalised image coordinates u, v (N, b), world points (3, N, b), weights (N, b).
    Returns R (9, b) (row-major), t (3, b) and the polar-factor success (b,)."""
    dtype = Xe.dtype
    tiny = torch.finfo(dtype).tiny
    eps = torch.finfo(dtype).eps
    b = we.shape[1]
    _, iw, c0, C, D = _moments(we, Xe)
    # Cholesky factor L of the covariance (pivots floored at eps * trace, as cholesky3), whitened coordinates a
    floor = (eps * (C[0] + C[3] + C[5])).clamp_min(tiny)
    l00 = torch.maximum(C[0], floor).sqrt()
    l10, l20 = C[1] / l00, C[2] / l00
    l11 = torch.maximum(C[3] - l10 * l10, floor).sqrt()
    l21 = (C[4] - l20 * l10) / l11
    l22 = torch.maximum(C[5] - l20 * l20 - l21 * l21, floor).sqrt()
    a0 = D[0] / l00
    a1 = (D[1] - l10 * a0) / l11
    a2 = (D[2] - l20 * a0 - l21 * a1) / l22
    # moments sum_i w_i (u_i, v_i, u_i^2 + v_i^2) phi_i phi_i^T of phi_i = (1, a_i): (3, 10 unique, b)
    A4 = torch.stack([torch.ones_like(a0), a0, a1, a2])
    PP = A4.index_select(0, T["u10a"]) * A4.index_select(0, T["u10b"])  # (10, N, b)
    W3 = torch.stack([we * ue, we * ve, we * (ue * ue + ve * ve)])  # (3, N, b)
    mom = (W3[:, None] * PP[None]).sum(2).index_select(1, T["full16"]).reshape(3, 4, 4, b)
    Huv = mom[:2]  # (2, 4, 4, b): Hu, Hv
    # Schur complement in the depths, trace-normalised
    Bk = Huv.reshape(8, 4, b)  # S_jl = Huv_jl - sum_(c, m) H_cjm H_cml / wsum and H_c symmetric
    S = mom[2] - (Bk[:, :, None] * Bk[:, None]).sum(0) * iw
    S = S * (S[0, 0] + S[1, 1] + S[2, 2] + S[3, 3]).clamp_min(tiny).reciprocal()
    S16 = S.reshape(16, b)
    # null vector of S: the largest column of adj(S), one power step with adj(S)
    j1, j2, j3 = T["adj"]
    adj = (S16.index_select(0, j1) * S16.index_select(0, j2) * S16.index_select(0, j3) * T["adj_sign"])
    adj = adj.reshape(10, 6, b).sum(1)
    adj = adj.index_select(0, T["full16"]).reshape(4, 4, b)
    k = adj.reshape(16, b).index_select(0, T["diag4"]).argmax(0)
    v = torch.gather(adj, 1, k[None, None].expand(4, 1, b))  # (4, 1, b): column k
    v = (adj * v.transpose(0, 1)).sum(1)
    v = v * (v * v).sum(0).clamp_min(tiny).rsqrt()
    # camera x, y of (p, q_1, q_2, q_3) are (Hu z, Hv z) / wsum; pair difference vectors (q_0 = 0):
    # M (2, 6, 4, b) for x, y and the constant pattern pz (6, 4, 1) for z
    Hq = Huv * iw
    Hq = torch.cat([torch.zeros_like(Hq[:, :1]), Hq[:, 1:]], 1)
    M = Hq.index_select(1, T["pj"]) - Hq.index_select(1, T["pi"])
    pz = T["pz"]
    # squared distances between the world control points c_0 = c0, c_j = c0 + L[:, j - 1]
    zero = torch.zeros_like(l00)
    Lc = torch.stack([torch.stack([zero, l00, zero, zero]), torch.stack([zero, l10, l11, zero]),
                      torch.stack([zero, l20, l21, l22])])  # (3, 4, b): offsets of the control points
    dL = Lc.index_select(1, T["pj"]) - Lc.index_select(1, T["pi"])
    rho = (dL * dL).sum(0)  # (6, b)

    def pair_vectors(z: Tensor) -> tuple[Tensor, Tensor]:
        m = (M * z[None, None]).sum(2)  # (2, 6, b)
        mz = (pz * z[None]).sum(1)  # (6, b)
        return m, mz

    # start: beta_1^2 |M v|^2 = rho in least squares
    m, mz = pair_vectors(v)
    g = m[0] * m[0] + m[1] * m[1] + mz * mz
    b2 = (g * rho).sum(0) / (g * g).sum(0).clamp_min(tiny)
    z = v * b2.abs().sqrt()
    for _ in range(_GN_ITERATIONS):
        m, mz = pair_vectors(z)
        r = m[0] * m[0] + m[1] * m[1] + mz * mz - rho
        J = 2.0 * ((m[:, :, None] * M).sum(0) + mz[:, None] * pz)  # (6, 4, b)
        JJ = (J[:, :, None] * J[:, None]).sum(0).reshape(16, b)
        Jr = (J * r[:, None]).sum(0)  # (4, b)
        ridge = 1e-10 * (JJ[0] + JJ[5] + JJ[10] + JJ[15]) + tiny
        h = [JJ[4 * i + j] + ridge if i == j else JJ[4 * i + j] for i, j in _U10]
        z = z - _spd_solve4(h, list(Jr.unbind(0)))
    # camera-frame control points (p, p + q_j), sign so that p is in front
    cx = (Huv * z[None, None]).sum(2) * iw  # (2, 4, b)
    cam = torch.cat([cx, z[None]])  # (3, 4, b): x, y, z of (p, q_1, q_2, q_3)
    cam = cam * (1.0 - 2.0 * (z[0] < 0).to(dtype))
    pc, Dc = cam[:, 0], cam[:, 1:]  # (3, b), (3, 3, b) = R L for exact data
    # weighted absolute orientation: rotation factor of D L^T, t = p - R c0
    Lm = torch.stack([torch.stack([l00, zero, zero]), torch.stack([l10, l11, zero]),
                      torch.stack([l20, l21, l22])])  # (3, 3, b) lower triangular
    H = (Dc[:, None] * Lm[None]).sum(2).reshape(9, b)
    R, okp = _polar(H, 8 if dtype == torch.float64 else 7, T)
    t = pc - (R.reshape(3, 3, b) * c0[None]).sum(1)
    return R, t, okp


def epnp_general(xn: Tensor, X: Tensor, w: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Solves the problems of a flat batch (B, N, .) that are non-planar with at least 6 used points.

    Args:
        xn: normalised image coordinates (B, N, 2), X: world points (B, N, 3), w: weights (B, N) (padding rows
            zero everywhere), ok: (B,) finite inputs.

    Returns:
        R (B, 3, 3), t (B, 3), success (B,) (before the cheirality test) and handled (B,): the problems solved
        here; R, t and success of the others are meaningless (finite, no NaN in their gradients).
    """
    B = X.shape[0]
    dtype, device = X.dtype, X.device
    T = _tables(dtype, device)
    need_grad = torch.is_grad_enabled() and (xn.requires_grad or X.requires_grad or w.requires_grad)
    Rs, ts, oks, hs = [], [], [], []
    for s in range(0, B, _CHUNK):
        ue, ve = xn[s:s + _CHUNK].permute(2, 1, 0).contiguous().unbind(0)
        Xe = X[s:s + _CHUNK].permute(2, 1, 0).contiguous()
        we = w[s:s + _CHUNK].t().contiguous()
        with torch.no_grad():
            handled = _classify(we.detach(), Xe.detach(), ok[s:s + _CHUNK])
        if need_grad and not bool(handled.all()):
            # the others get a well-posed stand-in problem, so that nothing degenerates in their gradients
            from torch3dv.solvers.pnp.epnp import _stand_in

            N = X.shape[1]
            xs, Xs = _stand_in(N, dtype, device)
            ue = torch.where(handled, ue, xs[:, :1])
            ve = torch.where(handled, ve, xs[:, 1:])
            Xe = torch.where(handled, Xe, Xs.t()[:, :, None])
            we = torch.where(handled, we, 1.0)
        R, t, okp = _solve_chunk(ue, ve, Xe, we, T)
        Rs.append(R.t())
        ts.append(t.t())
        oks.append(okp & handled)
        hs.append(handled)
    if B == 0:
        none = torch.zeros(0, dtype=torch.bool, device=device)
        return X.new_zeros(0, 3, 3), X.new_zeros(0, 3), none, none
    R = torch.cat(Rs).reshape(B, 3, 3)
    return R, torch.cat(ts), torch.cat(oks), torch.cat(hs)
