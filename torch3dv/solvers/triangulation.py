"""Triangulation of 3D points from calibrated views, plus the checks that go with it.

Cameras enter either as projection matrices ``P = K [R | t]`` (*B, V, 3, 4) mapping homogeneous world
points to homogeneous pixels (build them with :func:`torch3dv.geometry.projection_matrix`), or as
``cam_from_world`` poses (R, t) with rays in the camera frame (:func:`triangulate_midpoint`). Pixels follow
the README conventions (centre of the top-left pixel is (0, 0)); points are in the world frame, metres.

Linear (DLT) triangulation, :func:`triangulate_multiview`: for every point, each view v with observed pixel
(x, y) contributes the two rows ``x P_v^3 - P_v^1`` and ``y P_v^3 - P_v^2`` (P^k: k-th row). Conditioning and
weighting: (1) the world is normalised per problem (translate to the mean camera centre and scale by the mean
centre distance, Hartley & Zisserman sec. 4.4), so the four unknowns have comparable magnitudes; (2) each
view's two rows are divided by the norm of the 3x3 part of its third row ``|P_v^3[:3]|``, which removes the
arbitrary scale of each projection matrix: every algebraic residual then equals (depth in metres) x (pixel
error), the same objective as OpenCV's ``triangulatePoints`` for ``P = K [R | t]``. (Normalising each view's
row pair to unit norm instead was tried and gave ~30 % larger reprojection errors on noisy data, because the
row norm depends on where the world origin projects.) The homogeneous point is the smallest eigenvector of
the 4x4 weighted normal matrix ``sum_v w_v (r1 r1^T + r2 r2^T)``, computed for all points at once by
:func:`torch3dv.linalg.sym_eig4.extreme_eigenpair4` (closed form; gradients by first-order eigenvector
perturbation, which only needs the gaps to the smallest eigenvalue and is finite for every well-posed point;
see that module).

``success`` means "the linear solve is well posed": at least 2 views with non-zero weight, finite
observations and cameras in the used views, a simple smallest eigenvalue (relative eigen-gap product above
100 eps; identical cameras or parallel rays fail here), and a finite (not at infinity) solution. It does NOT
check that the point lies in front of the cameras or that the rays intersect at a useful angle: use
:func:`cheirality`, :func:`triangulation_angle` and :func:`reprojection_errors` for that, as SfM pipelines do
(e.g. COLMAP's minimum triangulation angle of 1.5 degrees and positive depth).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_same_device_dtype, check_shape, check_tensor
from torch3dv.linalg.sym_eig4 import extreme_eigenpair4


class Triangulation(NamedTuple):
    """Triangulated points.

    Attributes:
        X: world points (*B, N, 3), metres; zeros where ``success`` is False.
        success: (*B, N) bool, True where the solve was well posed (see the module docstring).
    """

    X: Tensor
    success: Tensor


def _check_cameras(P: Tensor, x: Tensor) -> None:
    check_shape(P, "P", (None, 3, 4), "(*B, V, 3, 4)")
    check_shape(x, "x", (None, None, 2), "(*B, V, N, 2)")
    check_float(P, "P")
    check_float(x, "x")
    check_same_device_dtype({"P": P, "x": x})
    if P.shape[:-2] != x.shape[:-2]:
        raise ValueError(
            f"P (*B, V, 3, 4) and x (*B, V, N, 2) must share (*B, V), got {tuple(P.shape)} and "
            f"{tuple(x.shape)}"
        )


def camera_centers_from_projections(P: Tensor) -> tuple[Tensor, Tensor]:
    """Homogeneous camera centres (right null vectors) of projection matrices by 3x3 minors.

    Args:
        P: (*B, 3, 4).

    Returns:
        ``(C_h, C)``: homogeneous centre (*B, 4) with P C_h = 0, and the Euclidean centre (*B, 3) (world
        frame, metres; not finite for a camera at infinity, check ``C_h[..., 3]``).
    """
    cols = P.unbind(-1)

    def det3(a, b, c):  # written out: cross + sum over a size-3 axis is slow on CPU
        a0, a1, a2 = a.unbind(-1)
        b0, b1, b2 = b.unbind(-1)
        c0, c1, c2 = c.unbind(-1)
        return a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0)

    c0 = det3(cols[1], cols[2], cols[3])
    c1 = -det3(cols[0], cols[2], cols[3])
    c2 = det3(cols[0], cols[1], cols[3])
    c3 = -det3(cols[0], cols[1], cols[2])
    Ch = torch.stack([c0, c1, c2, c3], dim=-1)
    return Ch, Ch[..., :3] / c3[..., None]


def triangulate_multiview(
    P: Tensor,
    x: Tensor,
    visible: Tensor | None = None,
    weights: Tensor | None = None,
    method: str = "closed_form",
) -> Triangulation:
    """Linear (DLT) triangulation of N points from V views, batched.

    Args:
        P: projection matrices (*B, V, 3, 4) (world -> pixels, ``K [R | t]`` with ``cam_from_world``).
        x: observed pixels (*B, V, N, 2).
        visible: optional bool (*B, V, N); False entries are ignored and may contain NaN.
        weights: optional non-negative per-observation weights (*B, V, N).
        method: 4x4 eigen-solver, ``"closed_form"`` (fast) or ``"eigh"`` (LAPACK reference).

    Returns:
        :class:`Triangulation` with X (*B, N, 3) in the world frame. Differentiable w.r.t. P, x and weights.

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    _check_cameras(P, x)
    lead = x.shape[:-1]  # (*B, V, N)
    dtype, device = x.dtype, x.device
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny ** 0.5
    w = torch.ones(lead, dtype=dtype, device=device)
    if visible is not None:
        check_tensor(visible, "visible")
        if visible.shape != lead or visible.dtype != torch.bool:
            raise ValueError(f"visible must be a bool tensor of shape (*B, V, N) = {tuple(lead)}, got "
                             f"{visible.dtype} {tuple(visible.shape)}")
        if visible.device != device:
            raise ValueError(f"visible is on {visible.device} but x is on {device}")
        w = w * visible.to(dtype)
    if weights is not None:
        check_tensor(weights, "weights")
        if weights.shape != lead:
            raise ValueError(
                f"weights must have shape (*B, V, N) = {tuple(lead)}, got {tuple(weights.shape)}"
            )
        check_float(weights, "weights")
        check_same_device_dtype({"weights": weights, "x": x})
        w = w * weights
    used = w != 0
    # finiteness of small rows via one product with ones (an all() over a short last axis is slow on CPU)
    P_ok = torch.isfinite(P.flatten(-2) @ torch.ones(12, dtype=dtype, device=device))  # (*B, V)
    obs_ok = torch.isfinite(x @ torch.ones(2, dtype=dtype, device=device)) & torch.isfinite(w) & P_ok[..., None]
    bad_point = (used & ~obs_ok).any(-2)  # (*B, N)
    keep = used & obs_ok
    zero = torch.zeros((), dtype=dtype, device=device)
    w = torch.where(keep, w, zero)
    x = torch.where(keep[..., None], x, zero)
    P0 = torch.eye(3, 4, dtype=dtype, device=device)
    P = torch.where(P_ok[..., None, None], P, P0)

    # world normalisation from the centres of the cameras this problem uses
    Ch, _ = camera_centers_from_projections(P)
    # Hadamard: |det M| <= product of its row norms; a tiny ratio means a camera (nearly) at infinity
    one3 = torch.ones(3, dtype=dtype, device=device)
    hadamard = ((P[..., :3] ** 2) @ one3).sqrt().prod(-1)
    finite_cam = Ch[..., 3].abs() > 1e3 * eps * hadamard
    view_used = keep.any(-1) & finite_cam  # (*B, V)
    C = Ch[..., :3] / torch.where(finite_cam, Ch[..., 3], torch.ones_like(hadamard))[..., None]
    vw = view_used.to(dtype)
    nv = vw.sum(-1).clamp_min(1)
    c = (vw[..., None] * C).sum(-2) / nv[..., None]  # (*B, 3)
    dist = torch.sqrt(((C - c[..., None, :]) ** 2) @ one3 + tiny * tiny)
    sigma = (vw * dist).sum(-1) / nv
    sigma = torch.where(sigma > 1e3 * tiny, sigma, torch.ones_like(sigma))
    # P' = P @ [[sigma I, c], [0, 1]]  (X = sigma X' + c)
    Pn = torch.cat(
        [sigma[..., None, None, None] * P[..., :3], (P[..., :3] @ c[..., None, :, None]) + P[..., 3:]], dim=-1
    )

    # two DLT rows per observation; each view's rows are divided by the norm of the rotation part of its
    # third row, so that every algebraic residual equals (depth in metres) x (pixel error)
    r1 = x[..., 0, None] * Pn[..., None, 2, :] - Pn[..., None, 0, :]  # (*B, V, N, 4)
    r2 = x[..., 1, None] * Pn[..., None, 2, :] - Pn[..., None, 1, :]
    rows = torch.stack([r1, r2], dim=-2)  # (*B, V, N, 2, 4)
    n3 = (P[..., 2, :3] ** 2) @ one3  # (*B, V)
    coef = w / torch.where(n3 > 0, n3, torch.ones_like(n3))[..., None]
    A = torch.einsum("...vnki,...vnkj->...nij", rows * coef[..., None, None], rows)  # (*B, N, 4, 4)
    start = -(eps ** 0.5) * A.detach().flatten(-2).norm(dim=-1)  # just below the spectrum of a PSD matrix
    eig = extreme_eigenpair4(A, largest=False, start=start, method=method)
    v = eig.vector
    v3 = v[..., 3]
    at_inf = v3.abs() <= 1e3 * eps
    Xn = v[..., :3] / torch.where(at_inf, torch.ones_like(v3), v3)[..., None]
    X = sigma[..., None, None] * Xn + c[..., None, :]
    nviews = keep.sum(-2)
    ok = ~bad_point & (nviews >= 2) & (eig.gap > 100 * eps) & ~at_inf & torch.isfinite(X @ one3)
    X = torch.where(ok[..., None], X, zero)
    return Triangulation(X, ok)


def triangulate_two_view(P1: Tensor, P2: Tensor, x1: Tensor, x2: Tensor) -> Triangulation:
    """Linear (DLT) triangulation from two views; a thin wrapper over :func:`triangulate_multiview`.

    Args:
        P1, P2: projection matrices (*B, 3, 4) (world -> pixels).
        x1, x2: corresponding pixels (*B, N, 2) in view 1 and view 2; NaN rows fail individually.

    Returns:
        :class:`Triangulation` with X (*B, N, 3) in the world frame.
    """
    for name, v in (("P1", P1), ("P2", P2)):
        check_shape(v, name, (3, 4), "(*B, 3, 4)")
    for name, v in (("x1", x1), ("x2", x2)):
        check_shape(v, name, (None, 2), "(*B, N, 2)")
    if P1.shape != P2.shape or x1.shape != x2.shape:
        raise ValueError(f"P1/P2 and x1/x2 must have equal shapes, got {tuple(P1.shape)}, {tuple(P2.shape)}, "
                         f"{tuple(x1.shape)}, {tuple(x2.shape)}")
    check_same_device_dtype({"P1": P1, "P2": P2, "x1": x1, "x2": x2})
    return triangulate_multiview(torch.stack([P1, P2], dim=-3), torch.stack([x1, x2], dim=-3))


def triangulate_midpoint(
    R1: Tensor, t1: Tensor, R2: Tensor, t2: Tensor, f1: Tensor, f2: Tensor
) -> Triangulation:
    """Midpoint triangulation: the middle of the shortest segment between the two viewing rays.

    Args:
        R1, t1: ``cam_from_world`` pose of camera 1, (*B, 3, 3) and (*B, 3).
        R2, t2: ``cam_from_world`` pose of camera 2.
        f1, f2: rays in each camera's frame (OpenCV axes), either bearing vectors (*B, N, 3) of any non-zero
            length, or normalised image coordinates (*B, N, 2) (the z = 1 plane,
            :func:`torch3dv.camera.pinhole.pixels_to_normalized`).

    Returns:
        :class:`Triangulation` (world frame). ``success`` is False for non-finite inputs and (near-)parallel
        rays (sin^2 of the ray angle below 100 eps). Rays are lines: the depth sign is not constrained, so
        check :func:`cheirality` afterwards. Differentiable w.r.t. all inputs.
    """
    for name, v in (("R1", R1), ("R2", R2)):
        check_shape(v, name, (3, 3), "(*B, 3, 3)")
    for name, v in (("t1", t1), ("t2", t2)):
        check_shape(v, name, (3,), "(*B, 3)")
    for name, v in (("f1", f1), ("f2", f2)):
        check_tensor(v, name)
        if v.ndim < 2 or v.shape[-1] not in (2, 3):
            raise ValueError(f"{name} must have shape (*B, N, 3) or (*B, N, 2), got {tuple(v.shape)}")
    named = {"R1": R1, "t1": t1, "R2": R2, "t2": t2, "f1": f1, "f2": f2}
    for k, v in named.items():
        check_float(v, k)
    check_same_device_dtype(named)
    if f1.shape != f2.shape:
        raise ValueError(f"f1 and f2 must have the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    B = f1.shape[:-2]
    if R1.shape[:-2] != B or R2.shape[:-2] != B or t1.shape[:-1] != B or t2.shape[:-1] != B:
        raise ValueError(f"poses must have batch shape {tuple(B)} like f1 (*B, N, d)")
    if f1.shape[-1] == 2:
        f1 = torch.cat([f1, torch.ones_like(f1[..., :1])], dim=-1)
        f2 = torch.cat([f2, torch.ones_like(f2[..., :1])], dim=-1)
    eps = torch.finfo(f1.dtype).eps
    C1 = -(R1.transpose(-1, -2) @ t1[..., None])[..., 0]
    C2 = -(R2.transpose(-1, -2) @ t2[..., None])[..., 0]
    d1 = f1 @ R1  # world directions: R^T f, as rows
    d2 = f2 @ R2
    b = (C2 - C1)[..., None, :]
    a11 = (d1 * d1).sum(-1)
    a22 = (d2 * d2).sum(-1)
    a12 = (d1 * d2).sum(-1)
    b1 = (d1 * b).sum(-1)
    b2 = (d2 * b).sum(-1)
    den = a11 * a22 - a12 * a12  # |d1 x d2|^2
    ok = (den > 100 * eps * a11 * a22) & torch.isfinite(den) & torch.isfinite(b1) & torch.isfinite(b2)
    den = torch.where(ok, den, torch.ones_like(den))
    # minimise |C1 + l1 d1 - C2 - l2 d2|^2
    l1 = (b1 * a22 - b2 * a12) / den
    l2 = (b1 * a12 - b2 * a11) / den
    X = 0.5 * (C1[..., None, :] + l1[..., None] * d1 + C2[..., None, :] + l2[..., None] * d2)
    ok = ok & torch.isfinite(X).all(-1)
    X = torch.where(ok[..., None], X, torch.zeros((), dtype=X.dtype, device=X.device))
    return Triangulation(X, ok)


def _check_points_poses(X: Tensor, R: Tensor, t: Tensor) -> None:
    check_shape(X, "X", (None, 3), "(*B, N, 3)")
    check_shape(R, "R", (None, 3, 3), "(*B, V, 3, 3)")
    check_shape(t, "t", (None, 3), "(*B, V, 3)")
    for k, v in (("X", X), ("R", R), ("t", t)):
        check_float(v, k)
    check_same_device_dtype({"X": X, "R": R, "t": t})
    if R.shape[:-2] != t.shape[:-1] or R.shape[:-3] != X.shape[:-2]:
        raise ValueError(f"expected X (*B, N, 3), R (*B, V, 3, 3), t (*B, V, 3); got {tuple(X.shape)}, "
                         f"{tuple(R.shape)}, {tuple(t.shape)}")


def point_depths(X: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """z-depth (metres) of world points in each camera: (R X + t)_z, shape (*B, V, N).

    Args:
        X: world points (*B, N, 3).
        R, t: ``cam_from_world`` poses (*B, V, 3, 3), (*B, V, 3).
    """
    _check_points_poses(X, R, t)
    return (X[..., None, :, :] * R[..., 2, None, :]).sum(-1) + t[..., 2, None]


def cheirality(X: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """True where a world point is in front of a camera (strictly positive z-depth), shape (*B, V, N).

    Args:
        X: world points (*B, N, 3), metres.
        R, t: ``cam_from_world`` poses (*B, V, 3, 3), (*B, V, 3) (OpenCV axes, z forward).
    """
    return point_depths(X, R, t) > 0


def triangulation_angle(X: Tensor, centers: Tensor, visible: Tensor | None = None) -> Tensor:
    """Largest angle (radians, in [0, pi]) between the rays from two camera centres to each point.

    For V = 2 it is the angle between the two rays; for V > 2 the maximum over all pairs of (visible) views.
    A point seen by fewer than two views, or coinciding with a centre, gets 0. Small angles (COLMAP uses
    1.5 degrees) mean an unreliable depth.

    Args:
        X: world points (*B, N, 3), metres.
        centers: camera centres (*B, V, 3) in the world frame (e.g. :func:`torch3dv.geometry.camera_center`).
        visible: optional bool (*B, V, N); only visible views take part.

    Returns:
        (*B, N) angles in radians.
    """
    check_shape(X, "X", (None, 3), "(*B, N, 3)")
    check_shape(centers, "centers", (None, 3), "(*B, V, 3)")
    check_float(X, "X")
    check_float(centers, "centers")
    check_same_device_dtype({"X": X, "centers": centers})
    if X.shape[:-2] != centers.shape[:-2]:
        raise ValueError(f"X (*B, N, 3) and centers (*B, V, 3) must share *B, got {tuple(X.shape)}, "
                         f"{tuple(centers.shape)}")
    V, N = centers.shape[-2], X.shape[-2]
    if visible is None:
        visible = torch.ones(*X.shape[:-2], V, N, dtype=torch.bool, device=X.device)
    elif visible.shape != (*X.shape[:-2], V, N) or visible.dtype != torch.bool:
        raise ValueError(f"visible must be bool of shape (*B, V, N) = {(*X.shape[:-2], V, N)}, "
                         f"got {visible.dtype} {tuple(visible.shape)}")
    rays = centers[..., :, None, :] - X[..., None, :, :]  # (*B, V, N, 3)
    iu, ju = torch.triu_indices(V, V, offset=1, device=X.device)
    a, b = rays[..., iu, :, :], rays[..., ju, :, :]  # (*B, pairs, N, 3)
    cross = torch.linalg.cross(a, b, dim=-1)
    cn = torch.sqrt((cross * cross).sum(-1) + torch.finfo(X.dtype).tiny)  # smooth at zero
    ang = torch.atan2(cn, (a * b).sum(-1))
    deg = (a * a).sum(-1).eq(0) | (b * b).sum(-1).eq(0)
    pv = visible[..., iu, :] & visible[..., ju, :] & ~deg
    ang = torch.where(pv, ang, torch.zeros_like(ang))
    if ang.shape[-2] == 0:
        return torch.zeros(X.shape[:-1], dtype=X.dtype, device=X.device)
    return ang.amax(-2)


def reprojection_errors(X: Tensor, P: Tensor, x: Tensor) -> Tensor:
    """Pixel distance between observations and the projections of world points, shape (*B, V, N).

    Points on or behind a camera's principal plane are still projected (their depth is clamped to +-1e-12
    m away from zero, so the result is finite but meaningless): combine with :func:`cheirality`.

    Args:
        X: world points (*B, N, 3), metres.
        P: projection matrices (*B, V, 3, 4).
        x: observed pixels (*B, V, N, 2).
    """
    _check_cameras(P, x)
    check_shape(X, "X", (None, 3), "(*B, N, 3)")
    check_float(X, "X")
    check_same_device_dtype({"X": X, "P": P})
    if X.shape[:-2] != P.shape[:-3] or X.shape[-2] != x.shape[-2]:
        raise ValueError(f"X (*B, N, 3) does not match P (*B, V, 3, 4) / x (*B, V, N, 2): {tuple(X.shape)}, "
                         f"{tuple(P.shape)}, {tuple(x.shape)}")
    proj = X[..., None, :, :] @ P[..., :3].transpose(-1, -2) + P[..., None, :, 3]  # (*B, V, N, 3)
    z = proj[..., 2:]
    z = torch.where(z.abs() < 1e-12, torch.where(z < 0, -1e-12, 1e-12).to(z.dtype), z)
    return (proj[..., :2] / z - x).norm(dim=-1)
