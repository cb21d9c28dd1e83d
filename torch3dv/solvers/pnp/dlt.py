"""PnP by the normalised Direct Linear Transform (N >= 6 non-coplanar points).

Each correspondence (normalised image point ``(u, v) = K^{-1} x``, world point ``X``) gives two linear
equations in the rows ``(p1, p2, p3)`` of ``P ~ [R | t]``: ``p1.X - u p3.X = 0`` and ``p2.X - v p3.X = 0``.
Both point sets are Hartley-normalised (weighted). ``p1`` and ``p2`` are eliminated in closed form (weighted
least squares given ``p3``), and ``p3`` is the eigenvector of the smallest eigenvalue of the 4x4 Schur
complement: the algebraic DLT error normalised by ``|p3| = 1`` instead of ``|P| = 1``, which needs a 4x4
instead of a 12x12 eigen-decomposition (identical for noise-free data, as accurate as kornia's SVD-based
DLT under noise). The normalisation is undone, the sign is fixed so that ``det(P[:, :3]) > 0``, the left
3x3 block is projected to SO(3) (special Procrustes) and the translation is rescaled by the mean singular
value ``tr(R^T P[:, :3]) / 3``.

Gradients: through ``eigh`` of the 4x4 Schur complement (finite when the smallest eigenvalue is simple, i.e. for every
non-degenerate problem) and through roma's special Procrustes, whose backward involves pairwise *sums* of
singular values and is therefore stable even at an exact rotation (equal singular values).

Degenerate problems (fewer than 6 used points, coplanar or collinear world points, non-finite inputs, points
behind the camera) return ``success=False`` with ``(I, 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch3dv.geometry.rotations import project_to_rotation
from torch3dv.linalg.normalization import normalize_points
from torch3dv.solvers.pnp._common import (
    AbsolutePose,
    check_points_shape,
    depths_positive,
    det3,
    finalize,
    planarity_tolerance,
    prepare_pnp,
    weighted_moments,
)


def pnp_dlt(
    x: Tensor,
    X: Tensor,
    K: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> AbsolutePose:
    """Camera pose from >= 6 non-coplanar 2D-3D correspondences by the normalised DLT.

    Args:
        x: pixels (*B, N, 2) (pixel (0, 0) is the centre of the top-left pixel).
        X: world points (*B, N, 3), metres.
        K: intrinsics (*B, 3, 3) (or broadcastable).
        weights: optional non-negative weights (*B, N) (act like row multiplicities).
        mask: optional bool (*B, N); False rows are padding and may hold NaN.

    Returns:
        :class:`AbsolutePose` with ``cam_from_world`` (R (*B, 3, 3), t (*B, 3)) and ``success`` (*B,).

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    check_points_shape(x, X)
    prep = prepare_pnp(x, X, K, weights, mask)
    xn, Xw, w = prep.xn, prep.X, prep.w
    dtype = x.dtype
    enough = (w != 0).sum(-1) >= 6
    _, evals, _ = weighted_moments(Xw, w)
    nonplanar = evals[..., 0] > planarity_tolerance(dtype) * evals[..., 2].clamp_min(torch.finfo(dtype).tiny)
    ok = prep.ok & enough & nonplanar
    if x.shape[-2] < 6:
        eye = torch.eye(3, dtype=dtype, device=x.device).expand(*prep.batch, 3, 3)
        return AbsolutePose(eye.clone(), torch.zeros(*prep.batch, 3, dtype=dtype, device=x.device),
                            torch.zeros(prep.batch, dtype=torch.bool, device=x.device))
    # stand-in for failed problems: their rows get a synthetic well-posed problem so nothing degenerates
    xn, Xw, w = _stand_in(xn, Xw, w, ok)

    n2 = normalize_points(xn, w)
    n3 = normalize_points(Xw, w)
    u, v = n2.points[..., 0], n2.points[..., 1]
    Xh = torch.cat([n3.points, torch.ones_like(u[..., None])], dim=-1)  # (*B, N, 4)
    # rows of P = (p1, p2, p3): p1.X - u p3.X = 0 and p2.X - v p3.X = 0. p1 and p2 are eliminated in closed
    # form (weighted least squares given p3), leaving a 4x4 Schur complement in p3 whose smallest
    # eigenvector is the solution (the DLT normalised by |p3| = 1 instead of |P| = 1: 4x4 instead of 12x12)
    W3 = torch.stack([w, w * u, w * v, w * (u * u + v * v)], dim=-2)  # (*B, 4, N)
    XX = (Xh[..., :, None] * Xh[..., None, :]).flatten(-2)  # (*B, N, 16)
    mom = (W3 @ XX).reshape(*prep.batch, 4, 4, 4)
    G, Hu, Hv, Huv = mom.unbind(-3)
    Lg, _ = torch.linalg.cholesky_ex(G)
    H2 = torch.cat([Hu, Hv], dim=-1)  # (*B, 4, 8)
    Sol = torch.cholesky_solve(H2, Lg)  # G^-1 [Hu, Hv]
    S = Huv - Hu @ Sol[..., :4] - Hv @ Sol[..., 4:]
    S = 0.5 * (S + S.transpose(-1, -2))
    S = S / torch.diagonal(S, dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(dtype).tiny)[..., None, None]
    _, E = torch.linalg.eigh(S)
    p3 = E[..., 0]
    p1 = (Sol[..., :4] @ p3[..., None])[..., 0]
    p2 = (Sol[..., 4:] @ p3[..., None])[..., 0]
    Pn = torch.stack([p1, p2, p3], dim=-2)
    # undo the normalisations: P = T2^{-1} Pn T3
    T2, T3 = n2.T, n3.T
    s2 = T2[..., 0, 0]
    m2 = -T2[..., :2, 2] / s2[..., None]
    T2inv = torch.cat([
        torch.cat([torch.diag_embed(1.0 / s2[..., None].expand(*prep.batch, 2)), m2[..., :, None]], dim=-1),
        T2[..., 2:, :],
    ], dim=-2)
    P = T2inv @ Pn @ T3
    M = P[..., :3]
    sign = torch.where(det3(M) < 0, -1.0, 1.0).to(dtype)
    M = M * sign[..., None, None]
    b = P[..., 3] * sign[..., None]
    R = project_to_rotation(M)
    scale = (R * M).sum((-1, -2)) / 3.0
    good_scale = scale > 0
    t = b / torch.where(good_scale, scale, torch.ones_like(scale))[..., None]
    success = ok & good_scale & depths_positive(R, t, Xw, w)
    return finalize(R, t, success)


def _stand_in(xn: Tensor, X: Tensor, w: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Replaces the data of failed problems by a fixed well-conditioned problem (identity pose, z = 4 m)."""
    N = X.shape[-1 - 1]
    i = torch.arange(N, dtype=X.dtype, device=X.device)
    Xs = torch.stack([torch.cos(2.1 * i + 0.3), torch.sin(1.7 * i + 1.1), 4.0 + torch.cos(3.3 * i)], dim=-1)
    xs = Xs[:, :2] / Xs[:, 2:]
    okp = ok[..., None, None]
    return (torch.where(okp, xn, xs), torch.where(okp, X, Xs),
            torch.where(ok[..., None], w, torch.ones_like(w)))
