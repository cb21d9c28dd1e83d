"""EPnP (Lepetit, Moreno-Noguer, Fua 2009), batched, weighted, for N >= 4 points, planar or not.

World points are written as affine combinations ``X_i = sum_j alpha_ij c_j`` of control points: the weighted
centroid ``c_0`` and ``c_0 + l_k`` for the columns ``l_k`` of a whitening factor of the weighted covariance
(its Cholesky factor; for planar point sets, detected per problem from the covariance eigenvalues, a 2D
whitening inside the plane and 3 control points). With normalised image points ``(u_i, v_i)``, each
correspondence gives two linear equations in the camera-frame control points ``c^cam``:

    sum_j alpha_ij (x_j - u_i z_j) = 0,        sum_j alpha_ij (y_j - v_i z_j) = 0.

Implementation choices (for speed at batch 100k and for exactness on noise-free data):

* The camera-frame points are parametrised as ``P_i = p + sum_k a_ik q_k`` (``p`` the camera-frame centroid,
  ``q_k`` the control-point offsets, ``a_i`` the whitened coordinates). The x and y coordinates of ``(p, q)``
  are eliminated in closed form (weighted least squares given the depths ``z``; the normal matrix is
  ``sum w`` times the identity thanks to the whitening), leaving a 4x4 (planar: 3x3) Schur complement ``S``
  in the depths. Its eigenvectors for the smallest eigenvalues, lifted back to 12 (9) coordinates, span the
  EPnP solution space; this replaces the paper's 12x12 eigen-decomposition (same space for noise-free data).
* Non-planar: all 4 basis vectors, ``beta`` started from the smallest one (paper's N = 1 case; the N = 2 and
  N = 3 linearisations are added when a problem has fewer than 6 points) and refined by Gauss-Newton on
  the 6 control-point distances; candidates are ranked by reprojection error (with a cheap Gram-Schmidt
  rotation). Planar: the single smallest vector with its scale from the 3 distances (letting 3 betas fit 3
  distances exactly is less accurate under noise). Exactly 4 non-coplanar points (where the EPnP space is
  the whole 4D depth space) are solved by P3P on three points, the fourth picking the solution.
* The pose is the weighted absolute orientation of the reconstructed points in closed form: the
  cross-covariance reduces to ``D L^T`` (D: camera-frame offsets, L: whitening factor), whose rotation
  factor comes from a scaled Newton polar iteration (rank-2 planar case completed by the normals);
  ``t = p - R c_0``.
* The common case (non-planar, at least 6 used points, finite) runs in
  :mod:`torch3dv.solvers.pnp._epnp_general`: the same iteration with the batch axis innermost, in cache-sized
  chunks, all small algebra unrolled; Gauss-Newton on the depths themselves (the eigenvectors of ``S`` are an
  orthonormal basis of the same space, so the iterates are the same) started from the null vector of ``S``
  taken from its adjugate, without ``eigh``. The other problems go through the code below.

On 1-px noise this matches or beats OpenCV's ``SOLVEPNP_EPNP`` in median rotation and translation error
(tests/test_pnp.py), planar and non-planar.

Gradients flow through everything by plain autograd: ``eigh`` of the small Schur complement (finite while the
used eigenvalues are simple, true for non-degenerate problems; in the common case the adjugate of ``S`` and one
power step instead), the closed-form 3x3 algebra, the unrolled Gauss-Newton and polar iterations. Refine with :func:`torch3dv.solvers.pnp.refine.refine_pnp` for the
maximum-likelihood pose.

Failures (``success=False``, pose ``(I, 0)``): fewer than 4 used points, collinear or coincident world points,
non-finite inputs, or a used point behind the returned camera.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch3dv.solvers.pnp._common import (
    AbsolutePose,
    check_points_shape,
    depths_positive,
    finalize,
    planarity_tolerance,
    prepare_pnp,
)
from torch3dv.solvers.pnp._epnp_general import epnp_general
from torch3dv.solvers.pnp._small import cholesky3, lower3_solve, polar3, spd_solve_small, sym3_eigvals

_GN_ITERATIONS = 3


def epnp(
    x: Tensor,
    X: Tensor,
    K: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> AbsolutePose:
    """Camera pose from N >= 4 2D-3D correspondences by EPnP (planar and non-planar point sets).

    Args:
        x: pixels (*B, N, 2) (pixel (0, 0) is the centre of the top-left pixel).
        X: world points (*B, N, 3), metres.
        K: intrinsics (*B, 3, 3) (or broadcastable).
        weights: optional non-negative weights (*B, N).
        mask: optional bool (*B, N); False rows are padding and may hold NaN.

    Returns:
        :class:`AbsolutePose` with ``cam_from_world`` (R (*B, 3, 3), t (*B, 3)) and ``success`` (*B,).

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    check_points_shape(x, X)
    prep = prepare_pnp(x, X, K, weights, mask)
    batch, dtype, dev = prep.batch, x.dtype, x.device
    N = x.shape[-2]
    if N < 4:
        eye = torch.eye(3, dtype=dtype, device=dev).expand(*batch, 3, 3)
        return AbsolutePose(eye.clone(), torch.zeros(*batch, 3, dtype=dtype, device=dev),
                            torch.zeros(batch, dtype=torch.bool, device=dev))
    xn, Xw, w = prep.xn.reshape(-1, N, 2), prep.X.reshape(-1, N, 3), prep.w.reshape(-1, N)
    ok_in = prep.ok.reshape(-1)
    if N >= 6:
        # the common case (non-planar, >= 6 used points) by the entry-major path, the rest below
        R, t, success, handled = epnp_general(xn, Xw, w, ok_in)
        rest = torch.nonzero(~handled).flatten()
        if rest.numel() > 0:
            Rr, tr, okr = _epnp_rest(xn[rest], Xw[rest], w[rest], ok_in[rest])
            R = R.index_put((rest,), Rr)
            t = t.index_put((rest,), tr)
            success = success.index_put((rest,), okr)
    else:
        R, t, success = _epnp_rest(xn, Xw, w, ok_in)
    R = R.reshape(*batch, 3, 3)
    t = t.reshape(*batch, 3)
    success = success.reshape(batch) & depths_positive(R, t, prep.X, prep.w)
    return finalize(R, t, success)


def _epnp_rest(xn: Tensor, Xw: Tensor, w: Tensor, ok_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """EPnP on a flat batch (B, N, .) of any kind (planar, 4 or 5 points, degenerate): R, t, success (before the
    cheirality test)."""
    N, dtype, dev = xn.shape[-2], xn.dtype, xn.device
    tiny = torch.finfo(dtype).tiny
    wsum = w.sum(-1)
    c0 = (w[..., None] * Xw).sum(-2) / wsum.clamp_min(tiny)[..., None]
    D = Xw - c0[:, None, :]
    C = (D * w[..., None]).transpose(-1, -2) @ D / wsum.clamp_min(tiny)[:, None, None]
    ev = sym3_eigvals(C.detach())
    top = ev[:, 2].clamp_min(tiny)
    tol = planarity_tolerance(dtype)
    planar = ev[:, 0] <= tol * top
    ok = (ok_in & ((w != 0).sum(-1) >= 4) & (ev[:, 1] > tol * top) & (ev[:, 2] > tiny))

    # failed problems are swapped for a fixed well-posed stand-in problem so nothing degenerates
    xs, Xs = _stand_in(N, dtype, dev)
    xn = torch.where(ok[:, None, None], xn, xs)
    Xw = torch.where(ok[:, None, None], Xw, Xs)
    w = torch.where(ok[:, None], w, torch.ones_like(w))
    planar = planar & ok
    Bf = w.shape[0]
    idx_p = torch.nonzero(planar).flatten()
    idx_n = torch.nonzero(~planar).flatten()
    outs_R, outs_t, outs_ok, idxs = [], [], [], []
    for idx, is_planar in ((idx_n, False), (idx_p, True)):
        if idx.numel() == 0:
            continue
        args = (xn, Xw, w) if idx.numel() == Bf else (xn[idx], Xw[idx], w[idx])
        Ri, ti, oki = _epnp_core(*args, planar=is_planar)
        outs_R.append(Ri)
        outs_t.append(ti)
        outs_ok.append(oki)
        idxs.append(idx)
    if len(idxs) == 1:
        R, t, okc = outs_R[0], outs_t[0], outs_ok[0]
    else:
        order = torch.argsort(torch.cat(idxs))
        R, t, okc = torch.cat(outs_R)[order], torch.cat(outs_t)[order], torch.cat(outs_ok)[order]
    # exactly 4 non-coplanar points: the EPnP solution space is the whole 4D space of control-point depths
    # and the distance equations alone are solved poorly (as in the paper / OpenCV); use P3P on three of the
    # points and keep the solution that best reprojects the fourth
    four = ok & ~planar & ((w != 0).sum(-1) == 4)
    if bool(four.any()):
        idx4 = torch.nonzero(four).flatten()
        R4, t4, ok4 = _p4p(xn[idx4], Xw[idx4], w[idx4])
        R = R.index_put((idx4,), R4)
        t = t.index_put((idx4,), t4)
        okc = okc.index_put((idx4,), ok4)
    return R, t, ok & okc


def _p4p(xn: Tensor, X: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Problems with exactly four used rows: P3P on the first three, the fourth picks the solution."""
    from torch3dv.solvers.pnp.p3p import p3p

    order = torch.argsort((w == 0).to(torch.int8), dim=-1, stable=True)[:, :4]
    xs = torch.gather(xn, 1, order[..., None].expand(-1, -1, 2))
    Xs = torch.gather(X, 1, order[..., None].expand(-1, -1, 3))
    y = torch.cat([xs, torch.ones_like(xs[..., :1])], dim=-1)
    y = y / y.norm(dim=-1, keepdim=True)
    sol = p3p(y[:, :3], Xs[:, :3])
    Xc = (sol.R @ Xs[:, None, 3, :, None])[..., 0] + sol.t  # (B, 4, 3)
    z = Xc[..., 2]
    zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    err = ((Xc[..., :2] / zs[..., None] - xs[:, None, 3]) ** 2).sum(-1)
    err = torch.where(sol.valid & (z > 0), err, torch.full_like(err, float("inf")))
    best = err.argmin(-1)
    ar = torch.arange(X.shape[0], device=X.device)
    return sol.R[ar, best], sol.t[ar, best], torch.isfinite(err[ar, best])


def _stand_in(N: int, dtype, dev) -> tuple[Tensor, Tensor]:
    i = torch.arange(N, dtype=dtype, device=dev)
    Xs = torch.stack([torch.cos(2.1 * i + 0.3), torch.sin(1.7 * i + 1.1), 4.0 + torch.cos(3.3 * i)], dim=-1)
    return Xs[:, :2] / Xs[:, 2:], Xs


def _pairs(n: int) -> tuple[list[int], list[int]]:
    i, j = torch.triu_indices(n, n, 1).tolist()
    return i, j


def _whitening(X: Tensor, w: Tensor, planar: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Centroid c0 (B, 3), world axes Lw (B, 3, d) with X_i - c0 = Lw a_i, and whitened coordinates a (B, N, d).

    The weighted second moment of ``a`` is the identity. Non-planar: Lw is the Cholesky factor of the
    covariance. Planar: Lw = U L2 with an orthonormal in-plane basis U (3x2) and the 2x2 Cholesky factor L2.
    """
    dtype = X.dtype
    tiny = torch.finfo(dtype).tiny
    wsum = w.sum(-1).clamp_min(tiny)
    c0 = (w[..., None] * X).sum(-2) / wsum[:, None]
    D = X - c0[:, None, :]
    if not planar:
        C = (D * w[..., None]).transpose(-1, -2) @ D / wsum[:, None, None]
        L, _ = cholesky3(C, torch.finfo(dtype).eps)
        return c0, L, lower3_solve(L, D)
    C = (D * w[..., None]).transpose(-1, -2) @ D / wsum[:, None, None]
    # plane normal: the largest cross product of two rows of (C - e_min I) (all rows lie in the plane)
    ev = sym3_eigvals(C.detach())
    Cm = C - ev[:, 0, None, None] * torch.eye(3, dtype=dtype, device=X.device)
    r0, r1, r2 = Cm[:, 0], Cm[:, 1], Cm[:, 2]
    cands = torch.stack([torch.linalg.cross(r0, r1, dim=-1), torch.linalg.cross(r0, r2, dim=-1),
                         torch.linalg.cross(r1, r2, dim=-1)], dim=1)
    best = cands.detach().norm(dim=-1).argmax(-1)
    n = cands[torch.arange(X.shape[0], device=X.device), best]
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(tiny)
    # in-plane orthonormal basis; the helper axis is the world axis least aligned with n
    helper = torch.nn.functional.one_hot(n.detach().abs().argmin(-1), 3).to(dtype)
    u1 = torch.linalg.cross(n, helper, dim=-1)
    u1 = u1 / u1.norm(dim=-1, keepdim=True).clamp_min(tiny)
    u2 = torch.linalg.cross(n, u1, dim=-1)
    U = torch.stack([u1, u2], dim=-1)  # (B, 3, 2)
    q = D @ U  # (B, N, 2)
    c00 = (w * q[..., 0] * q[..., 0]).sum(-1) / wsum
    c01 = (w * q[..., 0] * q[..., 1]).sum(-1) / wsum
    c11 = (w * q[..., 1] * q[..., 1]).sum(-1) / wsum
    l00 = torch.sqrt(c00.clamp_min(tiny))
    l10 = c01 / l00
    l11 = torch.sqrt((c11 - l10 * l10).clamp_min(tiny))
    a0 = q[..., 0] / l00[:, None]
    a1 = (q[..., 1] - l10[:, None] * a0) / l11[:, None]
    z = torch.zeros_like(l00)
    L2 = torch.stack([l00, z, l10, l11], dim=-1).reshape(-1, 2, 2)
    return c0, U @ L2, torch.stack([a0, a1], dim=-1)


def _epnp_core(xn: Tensor, X: Tensor, w: Tensor, planar: bool) -> tuple[Tensor, Tensor, Tensor]:
    """EPnP on a flat batch (B, N, .); returns R (B, 3, 3), t (B, 3), ok (B,)."""
    dtype = X.dtype
    tiny = torch.finfo(dtype).tiny
    c0, Lw, a = _whitening(X, w, planar)
    nc = a.shape[-1] + 1
    B = X.shape[0]
    # camera points P_i = p + sum_k a_ik q_k (p = camera control point 0, q_k = c^cam_k - p); the design
    # rows phi_i = (1, a_i) are orthonormal under the weights, so sum_i w_i phi_i phi_i^T = wsum * I.
    phi = torch.cat([torch.ones_like(a[..., :1]), a], dim=-1)  # (B, N, nc)
    u, v = xn[..., 0], xn[..., 1]
    wsum = w.sum(-1).clamp_min(tiny)
    W4 = torch.stack([w * u, w * v, w * (u * u + v * v)], dim=1)  # (B, 3, N)
    PP = (phi[..., :, None] * phi[..., None, :]).reshape(B, -1, nc * nc)
    mom = (W4 @ PP).reshape(B, 3, nc, nc)
    Hu, Hv, Huv = mom[:, 0], mom[:, 1], mom[:, 2]
    # least-squares x and y of (p, q) given their depths z: x = Hu z / wsum, y = Hv z / wsum; what is left is
    # the Schur complement S in the depths
    Hxy = torch.cat([Hu, Hv], dim=-2) / wsum[:, None, None]  # (B, 2 nc, nc)
    S = Huv - torch.cat([Hu, Hv], dim=-2).transpose(-1, -2) @ Hxy
    S = 0.5 * (S + S.transpose(-1, -2))
    S = S / torch.diagonal(S, dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)[:, None, None]
    _, E = torch.linalg.eigh(S)  # ascending; columns = depth vectors of the basis
    # basis size: all 4 vectors in the general case; in the planar case a single vector (with the scale from
    # the distances) is more accurate under noise than letting 3 betas fit 3 distances exactly
    k = 1 if planar else nc
    E = E[..., :k]
    XY = (Hxy @ E).reshape(B, 2, nc, k)
    Vpq = torch.stack([XY[:, 0], XY[:, 1], E], dim=-2)  # (B, nc, 3, k): (p, q_1..q_d) per basis vector
    p_vec, Q = Vpq[:, 0], Vpq[:, 1:]  # (B, 3, k), (B, d, 3, k)

    # squared world distances between control points c_0 = c0, c_k = c0 + l_k, and the k x k Gram matrices of
    # the camera-frame differences per basis pair: pair (0, j) -> q_j, pair (i, j) -> q_i - q_j
    Gq = torch.einsum("bjxa,blxc->bjlac", Q, Q)  # (B, d, d, k, k)
    Gw = Lw.transpose(-1, -2) @ Lw  # (B, d, d)
    pi, pj = _pairs(nc)
    G_list, r_list = [], []
    for i, j in zip(pi, pj):
        if i == 0:
            G_list.append(Gq[:, j - 1, j - 1])
            r_list.append(Gw[:, j - 1, j - 1])
        else:
            G_list.append(Gq[:, i - 1, i - 1] + Gq[:, j - 1, j - 1] - Gq[:, i - 1, j - 1] - Gq[:, j - 1, i - 1])
            r_list.append(Gw[:, i - 1, i - 1] + Gw[:, j - 1, j - 1] - 2.0 * Gw[:, i - 1, j - 1])
    Gp = torch.stack(G_list, dim=1)  # (B, P, k, k)
    rho = torch.stack(r_list, dim=1)  # (B, P)

    inits = [_betas_1(Gp, rho)]
    # with >= 6 points the one-vector start followed by Gauss-Newton on all betas is as accurate as the
    # paper's three starts (measured against OpenCV); near-minimal problems keep all of them
    if not planar and bool(((w != 0).sum(-1) < 6).any()):
        inits += [_betas_2(Gp, rho, k), _betas_3(Gp, rho, k)]
    betas = _gauss_newton(torch.stack(inits, dim=-1), Gp, rho)  # (B, k, S)

    # camera-frame p and q per candidate, sign so that the centroid (p) is in front
    pc = torch.einsum("bxk,bks->bsx", p_vec, betas)  # (B, S, 3)
    Dc = torch.einsum("bjxk,bks->bsxj", Q, betas)  # (B, S, 3, d) = R Lw for exact data
    sgn = torch.where(pc[..., 2:3] < 0, -1.0, 1.0).to(dtype)
    pc = pc * sgn
    Dc = Dc * sgn[..., None]
    if len(inits) == 1:
        pc_b, Dc_b = pc[:, 0], Dc[:, 0]
        err_ok = torch.ones_like(pc_b[:, 0], dtype=torch.bool)
    else:
        # rank the candidates by reprojection error with a cheap rotation (Gram-Schmidt, see _rank_rotation)
        Rg = _rank_rotation(Dc, Lw)
        t_g = pc - torch.einsum("bsij,bj->bsi", Rg, c0)
        Xc = torch.einsum("bsij,bnj->bsni", Rg, X) + t_g[..., None, :]
        z = Xc[..., 2]
        z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
        e = (Xc[..., 0] / z - u[:, None]) ** 2 + (Xc[..., 1] / z - v[:, None]) ** 2
        err = (w[:, None] * e).sum(-1)
        err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
        # problems with >= 6 points keep the first candidate whatever the rest of the batch needs
        many = ((w != 0).sum(-1) >= 6)[:, None] & (torch.arange(err.shape[1], device=err.device) > 0)
        err = torch.where(many, torch.full_like(err, float("inf")), err)
        best = err.argmin(dim=1)
        ar = torch.arange(X.shape[0], device=X.device)
        pc_b, Dc_b = pc[ar, best], Dc[ar, best]
        err_ok = torch.isfinite(err[ar, best])
    # weighted absolute orientation: rotation factor of the cross-covariance D Lw^T
    H = Dc_b @ Lw.transpose(-1, -2)
    if planar:
        # complete the rank-2 cross-covariance so that its polar factor is the special-Procrustes rotation
        m = torch.linalg.cross(Dc_b[..., 0], Dc_b[..., 1], dim=-1)
        nw = torch.linalg.cross(Lw[..., 0], Lw[..., 1], dim=-1)
        nw = nw / nw.norm(dim=-1, keepdim=True).clamp_min(tiny)
        m = m / m.norm(dim=-1, keepdim=True).clamp_min(tiny)
        H = H + (H.flatten(-2).norm(dim=-1) / 2.0)[:, None, None] * (m[..., :, None] * nw[..., None, :])
    R, okp = polar3(H, 8 if dtype == torch.float64 else 7)
    t = pc_b - (R @ c0[..., None])[..., 0]
    return R, t, okp & err_ok


def _rank_rotation(Dc: Tensor, Lw: Tensor) -> Tensor:
    """A rotation close to the candidate's, for ranking only (B, S, 3, 3).

    For exact data ``Dc = R Lw``, so R maps the world directions ``l_1, l_2`` (columns of Lw) to the columns
    ``d_1, d_2`` of Dc; the rotation between the orthonormal frames they span is a cheap estimate.
    """
    tiny = torch.finfo(Dc.dtype).tiny
    Fc = _frame(Dc[..., 0], Dc[..., 1], tiny)
    Fw = _frame(Lw[..., 0], Lw[..., 1], tiny)
    return torch.einsum("bsik,bjk->bsij", Fc, Fw)


def _frame(a: Tensor, b: Tensor, tiny: float) -> Tensor:
    e1 = a / a.norm(dim=-1, keepdim=True).clamp_min(tiny)
    e3 = torch.linalg.cross(a, b, dim=-1)
    e3 = e3 / e3.norm(dim=-1, keepdim=True).clamp_min(tiny)
    e2 = torch.linalg.cross(e3, e1, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def _lstsq_small(A: Tensor, b: Tensor) -> Tensor:
    """Least squares via ridge-stabilised normal equations for tiny systems A (B, m, n), b (B, m)."""
    AtA = A.transpose(-1, -2) @ A
    n = AtA.shape[-1]
    ridge = 1e-12 * torch.diagonal(AtA, dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(A.dtype).tiny)
    AtA = AtA + ridge[:, None, None] * torch.eye(n, dtype=A.dtype, device=A.device)
    L, _ = torch.linalg.cholesky_ex(AtA)
    return torch.cholesky_solve(A.transpose(-1, -2) @ b[..., None], L)[..., 0]


def _betas_1(G: Tensor, rho: Tensor) -> Tensor:
    """One basis vector: beta_1^2 |dv_1|^2 = rho in least squares."""
    g = G[..., 0, 0]
    b2 = (g * rho).sum(-1) / (g * g).sum(-1).clamp_min(torch.finfo(G.dtype).tiny)
    rest = torch.zeros(G.shape[0], G.shape[-1] - 1, dtype=G.dtype, device=G.device)
    return torch.cat([torch.sqrt(b2.abs())[:, None], rest], dim=-1)


def _betas_2(G: Tensor, rho: Tensor, k: int) -> Tensor:
    """Two basis vectors, linearised in (b11, b12, b22)."""
    A = torch.stack([G[..., 0, 0], 2 * G[..., 0, 1], G[..., 1, 1]], dim=-1)
    sol = _lstsq_small(A, rho)
    b1 = torch.sqrt(sol[:, 0].abs())
    b2 = torch.sqrt(sol[:, 2].abs()) * torch.where(sol[:, 1] * sol[:, 0] < 0, -1.0, 1.0).to(G.dtype)
    rest = torch.zeros(G.shape[0], k - 2, dtype=G.dtype, device=G.device)
    return torch.cat([b1[:, None], b2[:, None], rest], dim=-1)


def _betas_3(G: Tensor, rho: Tensor, k: int) -> Tensor:
    """Three basis vectors, linearised in (b11, b12, b13, b22, b23, b33) (6 distances, 6 unknowns)."""
    A = torch.stack([G[..., 0, 0], 2 * G[..., 0, 1], 2 * G[..., 0, 2], G[..., 1, 1], 2 * G[..., 1, 2],
                     G[..., 2, 2]], dim=-1)
    sol = _lstsq_small(A, rho)
    sg = torch.where(sol[:, 0] < 0, -1.0, 1.0).to(G.dtype)
    b1 = torch.sqrt(sol[:, 0].abs())
    b2 = torch.sqrt(sol[:, 3].abs()) * torch.where(sol[:, 1] * sg < 0, -1.0, 1.0).to(G.dtype)
    b3 = torch.sqrt(sol[:, 5].abs()) * torch.where(sol[:, 2] * sg < 0, -1.0, 1.0).to(G.dtype)
    rest = torch.zeros(G.shape[0], k - 3, dtype=G.dtype, device=G.device)
    return torch.cat([b1[:, None], b2[:, None], b3[:, None], rest], dim=-1)


def _gauss_newton(betas: Tensor, Gp: Tensor, rho: Tensor) -> Tensor:
    """Gauss-Newton on beta^T Gp beta = rho_p for every pair p; betas (B, k, S), Gp (B, P, k, k).

    Written with element-wise products: batched matmuls of 4x4 matrices are dominated by per-matrix
    overhead on CPU.
    """
    k = Gp.shape[-1]
    Gt = Gp.permute(0, 2, 3, 1)[..., None, :]  # (B, k, k, 1, P)
    eye = torch.eye(k, dtype=betas.dtype, device=betas.device)
    for _ in range(_GN_ITERATIONS):
        bt = betas[:, :, :, None]  # (B, k, S, 1)
        Gb = Gt[:, :, 0] * bt[:, 0:1]
        for a in range(1, k):
            Gb = Gb + Gt[:, :, a] * bt[:, a:a + 1]  # (B, k, S, P) = (Gp beta)_a
        r = (Gb * bt).sum(1) - rho[:, None, :]  # (B, S, P)
        J = 2.0 * Gb
        JtJ = torch.stack([torch.stack([(J[:, a] * J[:, c]).sum(-1) for c in range(k)], dim=-1)
                           for a in range(k)], dim=-2)  # (B, S, k, k)
        Jtr = (J * r[:, None]).sum(-1).transpose(1, 2)  # (B, S, k)
        ridge = 1e-10 * torch.diagonal(JtJ, dim1=-2, dim2=-1).sum(-1) + torch.finfo(J.dtype).tiny
        step, _ = spd_solve_small(JtJ + ridge[..., None, None] * eye, Jtr)
        betas = betas - step.transpose(-1, -2)
    return betas
