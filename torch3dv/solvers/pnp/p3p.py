"""P3P by Lambda Twist (Persson & Nordberg, ECCV 2018), batched, up to 4 solutions per problem.

Unknown depths ``L = (l1, l2, l3)`` put the camera-frame points at ``l_i y_i`` (unit bearings ``y_i``). Preserved
distances give three quadrics ``l_i^2 + l_j^2 + b_ij l_i l_j = a_ij`` with ``b_ij = -2 y_i . y_j`` and
``a_ij = |X_i - X_j|^2``. Eliminating the scale gives two homogeneous conics ``L^T D1 L = 0`` and
``L^T D2 L = 0``; a degenerate member ``D0 = k1 D1 + k2 D2`` of their pencil (a real root of the cubic
``det(D0) = 0``) is a pair of planes through the origin, found in closed form from the eigen-structure of the
rank-2 matrix ``D0`` (null vector by cross products, eigenvalues from its trace and adjugate trace). On each
plane the remaining conic is a quadratic with two solutions, giving at most 4 candidates; the scale follows
from the summed distance constraint. Each candidate is then polished by Newton's method on the three
distance equations, and the pose by aligning orthonormal frames of the world and camera triangles.

Gradients: the whole root-finding pipeline (cubic root, eigen-structure, quadratics) and the first Newton
iterations run without autograd; one final Newton step on the three distance equations is taken *with*
autograd from the detached depths, ``L = L0 - J(L0)^{-1} F(L0)``. Its value is ``L0`` (to rounding) and its
derivative is the implicit-function-theorem derivative ``dL = -J^{-1} dF``, exactly the derivative of the
true solution. The pose then follows ``L`` through smooth closed-form operations (cross products,
normalisations). The derivative does not exist at double solutions (singular ``J``), where it is clamped.

Accuracy: float64 recovers the true pose to ~1e-14 (1e-10 worst case over thousands of random problems) and
returns the same solution set as PoseLib. In float32 the median pose error is ~1e-6, but near-degenerate
configurations (nearly double solutions, where the pencil's cubic has clustered roots) lose accuracy: about
0.5% of random problems have errors above 1e-3; use float64 where that matters.

Validity: a candidate is valid when its depths are positive and finite, it satisfies the distance equations
to a relative tolerance, and it is not a duplicate of an earlier valid candidate. Collinear or coincident
world points, or coincident bearings, make every candidate invalid. Invalid slots hold ``(I, 0)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_same_device_dtype, check_shape
from torch3dv.solvers.pnp._common import PnPSolutions, adj3, det3

_NEWTON_NOGRAD = 5


def p3p(bearings: Tensor, X: Tensor) -> PnPSolutions:
    """All (up to 4) ``cam_from_world`` poses consistent with three bearing / world point pairs.

    Args:
        bearings: unit viewing rays in the camera frame (*B, 3, 3), one ray per row (e.g. from
            :func:`torch3dv.camera.pinhole.bearing_vectors`); rays are re-normalised.
        X: the corresponding world points (*B, 3, 3), one point per row, metres.

    Returns:
        :class:`PnPSolutions` with R (*B, 4, 3, 3), t (*B, 4, 3), valid (*B, 4) (valid solutions first,
        in no particular order otherwise) and success (*B,).

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    check_shape(bearings, "bearings", (3, 3), "(*B, 3, 3)")
    check_shape(X, "X", (3, 3), "(*B, 3, 3)")
    check_float(bearings, "bearings")
    check_float(X, "X")
    check_same_device_dtype({"bearings": bearings, "X": X})
    if bearings.shape != X.shape:
        raise ValueError(f"bearings {tuple(bearings.shape)} and X {tuple(X.shape)} must have the same shape")
    dtype, dev = X.dtype, X.device
    eps = torch.finfo(dtype).eps

    finite = torch.isfinite(bearings).flatten(-2).all(-1) & torch.isfinite(X).flatten(-2).all(-1)
    # harmless stand-in data for non-finite problems
    eye = torch.eye(3, dtype=dtype, device=dev)
    ys = torch.tensor([[0.0, 0.0, 1.0], [0.3, 0.0, 1.0], [0.0, 0.3, 1.0]], dtype=dtype, device=dev)
    bearings = torch.where(finite[..., None, None], bearings, ys)
    X = torch.where(finite[..., None, None], X, eye)
    y = bearings / bearings.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)

    y1, y2, y3 = y.unbind(-2)
    x1, x2, x3 = X.unbind(-2)
    b12 = -2.0 * (y1 * y2).sum(-1)
    b13 = -2.0 * (y1 * y3).sum(-1)
    b23 = -2.0 * (y2 * y3).sum(-1)
    d12, d13, d23 = x1 - x2, x1 - x3, x2 - x3
    a12, a13, a23 = (d12 * d12).sum(-1), (d13 * d13).sum(-1), (d23 * d23).sum(-1)
    asum = a12 + a13 + a23
    cr = torch.linalg.cross(d12, d13, dim=-1)
    # triangle quality: |d12 x d13| relative to the squared edge lengths (0 for collinear / coincident)
    area_ok = cr.norm(dim=-1) > 1e2 * eps * asum
    # bearings pairwise distinct
    bear_ok = (b12 > -2 + 10 * eps) & (b13 > -2 + 10 * eps) & (b23 > -2 + 10 * eps)
    ok = finite & area_ok & bear_ok & (asum > 0)

    with torch.no_grad():
        scale = torch.where(ok, asum / 3.0, torch.ones_like(asum)).detach()
        A = torch.stack([a12, a13, a23], -1).detach() / scale[..., None]
        Bc = torch.stack([b12, b13, b23], -1).detach()
        L0 = _lambda_twist(A, Bc)  # (*B, 4, 3) in units of sqrt(scale)
        for _ in range(_NEWTON_NOGRAD):
            L0 = _newton_step(L0, A[..., None, :], Bc[..., None, :])
        F = _residual(L0, A[..., None, :], Bc[..., None, :])
        tol = 10.0 * math.sqrt(eps)
        valid = (torch.isfinite(L0).all(-1) & (L0 > 0).all(-1) & (F.abs().amax(-1) <= tol * 3.0)
                 & ok[..., None])
        valid = _dedupe(L0, valid, tol)
        # valid solutions first
        order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)
        valid = torch.gather(valid, -1, order)
        L0 = torch.gather(L0, -2, order[..., None].expand_as(L0))
        L0 = torch.where(valid[..., None], L0, torch.ones_like(L0)) * torch.sqrt(scale)[..., None, None]

    # one Newton step with autograd: the implicit-function-theorem derivative of the depths
    Ag = torch.stack([a12, a13, a23], -1)[..., None, :]
    Bg = torch.stack([b12, b13, b23], -1)[..., None, :]
    L = _newton_step(L0, Ag, Bg)
    L = torch.where(valid[..., None], L, L0)

    # pose from orthonormal frames of the world and camera triangles: R = Fc Fw^T, t = l1 y1 - R x1
    l1, l2, l3 = L[..., 0:1], L[..., 1:2], L[..., 2:3]
    p1 = l1 * y1[..., None, :]
    e12 = p1 - l2 * y2[..., None, :]
    e13 = p1 - l3 * y3[..., None, :]
    Fc = _frame(e12, torch.linalg.cross(e12, e13, dim=-1))  # (*B, 4, 3, 3)
    Fw = _frame(d12, cr)  # (*B, 3, 3)
    R = torch.einsum("...sik,...jk->...sij", Fc, Fw)
    t = p1 - torch.einsum("...sij,...j->...si", R, x1)
    valid = valid & torch.isfinite(t).all(-1)
    R = torch.where(valid[..., None, None], R, eye)
    t = torch.where(valid[..., None], t, torch.zeros_like(t))
    return PnPSolutions(R, t, valid, valid.any(-1))


def _frame(a: Tensor, n: Tensor) -> Tensor:
    """Right-handed orthonormal frame (columns) from a first direction ``a`` and a normal ``n``."""
    tiny = torch.finfo(a.dtype).tiny
    e1 = a / a.norm(dim=-1, keepdim=True).clamp_min(tiny)
    e3 = n / n.norm(dim=-1, keepdim=True).clamp_min(tiny)
    e2 = torch.linalg.cross(e3, e1, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def _residual(L: Tensor, A: Tensor, Bc: Tensor) -> Tensor:
    l1, l2, l3 = L.unbind(-1)
    return torch.stack([
        l1 * (l1 + Bc[..., 0] * l2) + l2 * l2 - A[..., 0],
        l1 * (l1 + Bc[..., 1] * l3) + l3 * l3 - A[..., 1],
        l2 * (l2 + Bc[..., 2] * l3) + l3 * l3 - A[..., 2],
    ], dim=-1)


def _newton_step(L: Tensor, A: Tensor, Bc: Tensor) -> Tensor:
    """One Newton step on the three distance equations (Cramer's rule, skipped where J is singular).

    With F = (F12, F13, F23) the Jacobian is [[p, q, 0], [r, 0, s], [0, m, n]] where p = 2 l1 + b12 l2,
    q = 2 l2 + b12 l1, r = 2 l1 + b13 l3, s = 2 l3 + b13 l1, m = 2 l2 + b23 l3, n = 2 l3 + b23 l2.
    """
    l1, l2, l3 = L.unbind(-1)
    b12, b13, b23 = Bc.unbind(-1)
    a12, a13, a23 = A.unbind(-1)
    f1 = l1 * (l1 + b12 * l2) + l2 * l2 - a12
    f2 = l1 * (l1 + b13 * l3) + l3 * l3 - a13
    f3 = l2 * (l2 + b23 * l3) + l3 * l3 - a23
    p, q = 2 * l1 + b12 * l2, 2 * l2 + b12 * l1
    r, s = 2 * l1 + b13 * l3, 2 * l3 + b13 * l1
    m, n = 2 * l2 + b23 * l3, 2 * l3 + b23 * l2
    sm, rn = s * m, r * n
    det = -(p * sm + q * rn)
    good = det.abs() > 1e2 * torch.finfo(L.dtype).eps * (l1 * l1 + l2 * l2 + l3 * l3) ** 1.5
    inv = 1.0 / torch.where(good, det, torch.ones_like(det))
    inv = torch.where(good, inv, torch.zeros_like(inv))
    qs = q * s
    d1 = (qs * f3 - sm * f1 - q * n * f2) * inv
    d2 = (p * n * f2 - p * s * f3 - rn * f1) * inv
    d3 = (r * m * f1 - p * m * f2 - q * r * f3) * inv
    return torch.stack([l1 - d1, l2 - d2, l3 - d3], dim=-1)


def _dedupe(L: Tensor, valid: Tensor, tol: float) -> Tensor:
    """Drops a valid candidate equal (relative ``tol``) to an earlier valid one."""
    diff = (L[..., :, None, :] - L[..., None, :, :]).abs().amax(-1)
    mag = torch.maximum(L[..., :, None, :].abs().amax(-1), L[..., None, :, :].abs().amax(-1))
    same = diff <= tol * mag
    S = L.shape[-2]
    earlier = torch.ones(S, S, dtype=torch.bool, device=L.device).tril(-1)  # [i, j]: j < i
    dup = (same & earlier & valid[..., None, :]).any(-1)
    return valid & ~dup


def _cbrt(x: Tensor) -> Tensor:
    return torch.sign(x) * x.abs().pow(1.0 / 3.0)


def _cubic_root(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """A well-conditioned real root of x^3 + a x^2 + b x + c (the one with the largest |p'| when 3 are real)."""
    p = b - a * a / 3.0
    q = 2.0 * a ** 3 / 27.0 - a * b / 3.0 + c
    disc = (q / 2.0) ** 2 + (p / 3.0) ** 3
    # one real root (Cardano, cancellation-free)
    sq = torch.sqrt(disc.clamp_min(0.0))
    sgn = torch.where(q < 0, -1.0, 1.0).to(q.dtype)
    u = _cbrt(-q / 2.0 - sgn * sq)
    u_safe = torch.where(u == 0, torch.ones_like(u), u)
    t1 = torch.where(u == 0, torch.zeros_like(u), u - p / (3.0 * u_safe))
    # three real roots (Viete)
    m = torch.sqrt((-p / 3.0).clamp_min(0.0))
    m_safe = torch.where(m == 0, torch.ones_like(m), m)
    cosarg = torch.clamp(-q / (2.0 * m_safe ** 3), -1.0, 1.0)
    phi = torch.acos(cosarg)
    ks = torch.arange(3, dtype=a.dtype, device=a.device)
    t3 = 2.0 * m[..., None] * torch.cos((phi[..., None] - 2.0 * math.pi * ks) / 3.0)
    x3 = t3 - a[..., None] / 3.0
    dp = (3.0 * x3 + 2.0 * a[..., None]) * x3 + b[..., None]
    best = dp.abs().argmax(-1, keepdim=True)
    x_three = torch.gather(x3, -1, best)[..., 0]
    x = torch.where(disc > 0, t1 - a / 3.0, x_three)
    for _ in range(2):
        f = ((x + a) * x + b) * x + c
        df = (3.0 * x + 2.0 * a) * x + b
        good = df.abs() > torch.finfo(x.dtype).eps * (1.0 + x.abs()) ** 2
        x = torch.where(good, x - f / torch.where(good, df, torch.ones_like(df)), x)
    return x


def _null_vector(M: Tensor) -> Tensor:
    """Unit vector spanning the null space of rank-2 (..., 3, 3) matrices (largest row cross product)."""
    r0, r1, r2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    cands = torch.stack([torch.linalg.cross(r0, r1, dim=-1), torch.linalg.cross(r0, r2, dim=-1),
                         torch.linalg.cross(r1, r2, dim=-1)], dim=-2)
    nrm = cands.norm(dim=-1)
    best = nrm.argmax(-1, keepdim=True)
    v = torch.gather(cands, -2, best[..., None].expand(*best.shape, 3))[..., 0, :]
    n = torch.gather(nrm, -1, best)
    return v / n.clamp_min(torch.finfo(M.dtype).tiny)


def _matvec(Q: Tensor, v: Tensor) -> Tensor:
    return (Q * v[..., None, :]).sum(-1)


def _lambda_twist(A: Tensor, Bc: Tensor) -> Tensor:
    """Candidate depths (*B, 4, 3) (unpolished, up to sign) from normalised a_ij (*B, 3) and b_ij (*B, 3)."""
    a12, a13, a23 = A.unbind(-1)
    b12, b13, b23 = Bc.unbind(-1)
    o = torch.ones_like(a12)
    z = torch.zeros_like(a12)

    def sym(m00, m01, m02, m11, m12, m22):
        return torch.stack([m00, m01, m02, m01, m11, m12, m02, m12, m22], -1).reshape(*m00.shape, 3, 3)

    M12 = sym(o, b12 / 2, z, o, z, z)
    M13 = sym(o, z, b13 / 2, z, z, o)
    M23 = sym(z, z, z, o, b23 / 2, o)
    D1 = a23[..., None, None] * M12 - a12[..., None, None] * M23
    D2 = a23[..., None, None] * M13 - a13[..., None, None] * M23
    # det(D1 + g D2) = c0 + c1 g + c2 g^2 + c3 g^3
    c3 = det3(D2)
    c0 = det3(D1)
    c2 = (adj3(D2) * D1.transpose(-1, -2)).sum((-1, -2))
    c1 = (adj3(D1) * D2.transpose(-1, -2)).sum((-1, -2))
    fwd = c3.abs() >= c0.abs()
    lead = torch.where(fwd, c3, c0)
    lead = torch.where(lead == 0, torch.ones_like(lead), lead)
    k2_ = torch.where(fwd, c2, c1) / lead
    k1_ = torch.where(fwd, c1, c2) / lead
    k0_ = torch.where(fwd, c0, c3) / lead
    root = _cubic_root(k2_, k1_, k0_)
    k1 = torch.where(fwd, o, root)  # D0 = k1 D1 + k2 D2
    k2 = torch.where(fwd, root, o)
    D0 = k1[..., None, None] * D1 + k2[..., None, None] * D2
    Q = k2[..., None, None] * D1 - k1[..., None, None] * D2
    # eigen-structure of the rank-2 symmetric D0
    n = _null_vector(D0)
    tr = D0[..., 0, 0] + D0[..., 1, 1] + D0[..., 2, 2]
    m = (adj3(D0)).diagonal(dim1=-2, dim2=-1).sum(-1)  # sigma1 * sigma2
    disc = torch.sqrt((tr * tr - 4.0 * m).clamp_min(0.0))
    sg = torch.where(tr < 0, -1.0, 1.0).to(tr.dtype)
    s1 = 0.5 * (tr + sg * disc)  # larger magnitude eigenvalue
    s1_safe = torch.where(s1 == 0, torch.ones_like(s1), s1)
    s2 = m / s1_safe
    eye = torch.eye(3, dtype=A.dtype, device=A.device)
    e1 = _null_vector(D0 - s1[..., None, None] * eye)
    e2 = torch.linalg.cross(n, e1, dim=-1)
    ra, rb = torch.sqrt(s2.abs()), torch.sqrt(s1.abs())
    cands = []
    Qn = _matvec(Q, n)
    Aq = (n * Qn).sum(-1)
    for sign in (1.0, -1.0):
        v = ra[..., None] * e1 + sign * rb[..., None] * e2  # second direction of the plane span{n, v}
        Bq, Cq = (v * Qn).sum(-1), (v * _matvec(Q, v)).sum(-1)
        sq = torch.sqrt((Bq * Bq - Aq * Cq).clamp_min(0.0))
        qq = -(Bq + torch.where(Bq < 0, -1.0, 1.0).to(Bq.dtype) * sq)
        for al, be in ((qq, Aq), (Cq, qq)):
            cands.append(al[..., None] * n + be[..., None] * v)
    L = torch.stack(cands, dim=-2)  # (*B, 4, 3)
    # scale from the summed constraints, sign so that depths are positive
    l1, l2, l3 = L.unbind(-1)
    f = (2.0 * (l1 * l1 + l2 * l2 + l3 * l3) + b12[..., None] * l1 * l2 + b13[..., None] * l1 * l3
         + b23[..., None] * l2 * l3)  # L^T (M12 + M13 + M23) L
    target = (a12 + a13 + a23)[..., None]
    k = torch.sqrt(target / torch.where(f > 0, f, torch.ones_like(f)))
    L = L * k[..., None]
    L = torch.where(L.sum(-1, keepdim=True) < 0, -L, L)
    return torch.where((f > 0)[..., None], L, torch.full_like(L, -1.0))
