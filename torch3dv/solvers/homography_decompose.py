"""Homography decomposition for calibrated cameras, and the relative pose of a plane's two views.

Convention (README, "Conventions"): ``x2 ~ H x1`` for pixels; ``cam2_from_cam1 = (R, t)``. A plane with unit
normal ``n`` and distance ``d > 0`` in the camera-1 frame (``n^T X = d`` for its points, so ``n`` points from
camera 1 towards the plane) induces ``Hn = K2^-1 H K1 ~ R + (t / d) n^T``.

Method (:func:`decompose_homography`). ``Hn`` is scaled to middle singular value 1 and ``det Hn > 0`` (the
Euclidean homography when both cameras lie on the same side of the plane, the only case a camera pair looking
at an opaque plane can be in; OpenCV's ``decomposeHomographyMat`` makes the same choice). With
``u = R^T t / d``, ``S = Hn^T Hn - I = u n^T + n u^T + |u|^2 n n^T = w n^T + n w^T``, ``w = u + |u|^2 n / 2``:
a symmetric rank-2 matrix whose two isotropic lines are those of ``n`` and ``w``. The second solution's normal
lies on the line of the first one's ``w`` (the roles swap), hence the four solutions ``(Ra, ta, na)``,
``(Ra, -ta, -na)``, ``(Rb, tb, nb)``, ``(Rb, -tb, -nb)`` (Faugeras & Lustman 1988; Malis & Vargas 2007). They
are computed without eigenvectors:

* ``adj(S) = -|n x w|^2 z z^T`` (``z`` the unit null vector of ``S``), so its largest diagonal column gives
  ``zeta = +-(n x w)``, and ``S + [zeta]x`` is the rank-1 matrix ``2 w n^T`` (or ``2 n w^T``): its largest
  row and largest column are the two normals. No square root of a small minor is taken, so nothing loses half
  the digits when a component of ``n x w`` is near zero (as the minors of Malis & Vargas do).
* For a normal ``n``, ``R`` equals ``Hn`` on the plane ``n^T x = 0`` and ``R n = cof(Hn) n`` (the cross
  product of the images of two orthonormal vectors of that plane), i.e. ``R = Hn + (cof(Hn) - Hn) n n^T`` and
  ``t / d = (Hn - cof(Hn)) n``: an exact decomposition of ``Hn`` for either normal.

Accuracy: noise-free float64 inputs give the true (R, t/d, n) to ~1e-13; the normals' error grows as
``eps / |S|``, i.e. inversely with ``|t| / d`` (intrinsic: n is undefined for a pure rotation).

Special cases. ``max |S| <= rotation_tol`` (default 1e-3, OpenCV's value) is a pure rotation (or a plane at
infinity): one solution ``(R, 0, 0)``, ``R`` the orthogonal polar factor of ``Hn``, ``valid = [T, F, F, F]``.
Translation along the normal (``R^T t || n``) gives ``a == b`` (both reported valid; a branch point where
the solutions are only accurate to ~``sqrt(eps)``, as for any method). Non-finite input, a zero
matrix or a near-singular ``Hn`` (``|det Hn| <= det_tol (|Hn|_F / sqrt 3)^3``, default ``sqrt(eps)``: camera 2
on the plane) give ``valid`` False and finite stand-ins (identity, zeros).

Gradients flow straight through the closed form: the scale comes from ``eigvalsh`` (eigenvalue gradients need
no eigenvalue gaps), the rest are products, cross products, one square root and normalisations of non-zero
vectors. The row / column / sign choices are discrete (locally constant). Problems on the pure-rotation or
invalid branches run the general branch on a fixed stand-in, so no NaN leaks into gradients.

Pose (:func:`pose_from_homography`): cheirality selects among the four solutions; see its docstring for the
rule and for the ambiguity that remains when all points are on the plane.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from torch3dv._checks import (
    check_float,
    check_intrinsics,
    check_same_device_dtype,
    check_shape,
    prepare_correspondences,
)
from torch3dv.camera.pinhole import intrinsics_inverse, pixels_to_normalized
from torch3dv.linalg.skew import skew
from torch3dv.solvers.essential import _cofactor, _polar_newton
from torch3dv.solvers.fundamental import sampson_distance
from torch3dv.solvers.homography import transfer_error

__all__ = ["HomographyDecomposition", "HomographyPose", "decompose_homography", "pose_from_homography"]


class HomographyDecomposition(NamedTuple):
    """The up-to-four ``cam2_from_cam1`` solutions of a calibrated homography.

    Attributes:
        R: (*B, 4, 3, 3) rotations, order ``a, a, b, b`` (module doc).
        t: (*B, 4, 3) translations divided by the plane distance d (``t / d``; ``|t / d|`` is the baseline
            over the distance of camera 1 to the plane), order ``ta, -ta, tb, -tb``.
        n: (*B, 4, 3) unit plane normals in the camera-1 frame (``n^T X = d``), order ``na, -na, nb, -nb``
            with ``na_z >= nb_z >= 0`` (a plane in front of camera 1 along its axis has ``n_z > 0``). Zero for
            a pure rotation.
        valid: (*B, 4) bool; all True for a regular homography, ``[T, F, F, F]`` for a pure rotation (t = 0,
            n = 0), all False for unusable input (identity, zeros).
    """

    R: Tensor
    t: Tensor
    n: Tensor
    valid: Tensor


class HomographyPose(NamedTuple):
    """Result of :func:`pose_from_homography` (the fields of ``RelativePose`` plus the plane).

    Attributes:
        R: (*B, 3, 3) rotation of ``cam2_from_cam1``.
        t: (*B, 3) unit translation of ``cam2_from_cam1`` (zero for a pure rotation).
        n: (*B, 3) unit plane normal in the camera-1 frame, ``n^T X = d > 0`` (zero for a pure rotation).
        t_over_d: (*B, 3) translation divided by the plane distance d (``|t| / d``: baseline over distance).
        in_front: (*B, N) bool: plane points (see ``threshold``) whose rays meet the plane in front of both
            cameras for the chosen solution.
        num_in_front: (*B,) int64, ``in_front.sum(-1)``.
        ambiguous: (*B,) bool: a different solution (``R_alt, t_alt, n_alt``) passes the cheirality test for
            as many points; the epipolar tie-break then chose (see :func:`pose_from_homography`).
        R_alt, t_alt, n_alt: (*B, 3, 3), (*B, 3), (*B, 3) the best solution of the other pair (unit t),
            whether or not it is ambiguous.
        success: (*B,) bool.
    """

    R: Tensor
    t: Tensor
    n: Tensor
    t_over_d: Tensor
    in_front: Tensor
    num_in_front: Tensor
    ambiguous: Tensor
    R_alt: Tensor
    t_alt: Tensor
    n_alt: Tensor
    success: Tensor

    @property
    def inliers(self) -> Tensor:
        """Alias of ``in_front``."""
        return self.in_front


def _batch_shape(H: Tensor, K1: Tensor, K2: Tensor) -> torch.Size:
    try:
        return torch.broadcast_shapes(H.shape[:-2], K1.shape[:-2], K2.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(f"H {tuple(H.shape)}, K1 {tuple(K1.shape)} and K2 {tuple(K2.shape)} have batch "
                         "shapes that do not broadcast") from exc


def _largest(M: Tensor, dim: int) -> Tensor:
    """The row (dim=-1) or column (dim=-2) of M (..., 3, 3) with the largest norm."""
    k = M.detach().square().sum(dim).argmax(-1)  # (...,)
    if dim == -1:  # rows
        return M.gather(-2, k[..., None, None].expand(*k.shape, 1, 3))[..., 0, :]
    return M.gather(-1, k[..., None, None].expand(*k.shape, 3, 1))[..., 0]


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


# a fixed, well-conditioned homography (R = I, t/d = (0.2, -0.1, 0.3), n = (0.36, 0.48, 0.8)): the general
# branch runs on it for problems that take another branch, so their gradients stay finite
_STAND_IN = torch.eye(3, dtype=torch.float64) + torch.tensor([[0.2], [-0.1], [0.3]], dtype=torch.float64) @ \
    torch.tensor([[0.36, 0.48, 0.8]], dtype=torch.float64)


def _general(Hs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Four solutions of a normalised Hs (..., 3, 3) (middle singular value 1, det > 0), not a pure rotation.

    Returns R (..., 4, 3, 3), t/d (..., 4, 3), n (..., 4, 3)."""
    eye = torch.eye(3, dtype=Hs.dtype, device=Hs.device)
    S = Hs.transpose(-1, -2) @ Hs - eye
    S = 0.5 * (S + S.transpose(-1, -2))
    A = _cofactor(S)  # = adj(S) = -|n x w|^2 z z^T (symmetric)
    dg = -torch.diagonal(A, dim1=-2, dim2=-1)  # |n x w|^2 z_k^2 >= 0
    k = dg.detach().argmax(-1)
    col = A.gather(-1, k[..., None, None].expand(*k.shape, 3, 1))[..., 0]
    dk = dg.gather(-1, k[..., None])
    zeta = -col / dk.clamp_min(torch.finfo(S.dtype).tiny).sqrt()  # +-(n x w)
    M = S + skew(zeta)  # rank one: 2 w n^T or 2 n w^T
    na = _unit(_largest(M, -1))
    nb = _unit(_largest(M, -2))
    na = torch.where(na[..., 2:].detach() < 0, -na, na)
    nb = torch.where(nb[..., 2:].detach() < 0, -nb, nb)
    swap = (nb[..., 2] > na[..., 2]).detach()[..., None]
    na, nb = torch.where(swap, nb, na), torch.where(swap, na, nb)
    C = _cofactor(Hs)  # cof(Hs) n = (Hs e1) x (Hs e2) for an orthonormal basis (e1, e2, n)
    n2 = torch.stack([na, nb], -2)  # (..., 2, 3)
    Hs2, C2 = Hs[..., None, :, :], C[..., None, :, :]
    Hn_ = (Hs2 @ n2[..., None])[..., 0]
    Cn = (C2 @ n2[..., None])[..., 0]
    R2 = Hs2 + (Cn - Hn_)[..., :, None] * n2[..., None, :]
    t2 = Hn_ - Cn
    R = R2.repeat_interleave(2, dim=-3)
    sgn = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=Hs.dtype, device=Hs.device)[:, None]
    t = t2.repeat_interleave(2, dim=-2) * sgn
    n = n2.repeat_interleave(2, dim=-2) * sgn
    return R, t, n


def decompose_homography(
    H: Float[Tensor, "*B 3 3"],
    K1: Float[Tensor, "*B 3 3"],
    K2: Float[Tensor, "*B 3 3"],
    rotation_tol: float = 1e-3,
    det_tol: float | None = None,
) -> HomographyDecomposition:
    """The four ``(R, t/d, n)`` solutions of a homography between two calibrated views (module doc).

    Args:
        H: (*B, 3, 3) homographies with ``x2 ~ H x1`` in pixels, any scale and sign.
        K1, K2: intrinsics of camera 1 and 2, (*B, 3, 3) or broadcastable to it, pixels.
        rotation_tol: ``max |S|`` at or below which H is a pure rotation (module doc).
        det_tol: near-singular threshold on the normalised ``Hn``; default ``sqrt(eps)``.

    Returns:
        :class:`HomographyDecomposition` with ``Hn ~ R + t n^T`` for every valid solution. Solutions 0 and 1
        (and 2 and 3) differ by the signs of t and n; cheirality (:func:`pose_from_homography`) removes one of
        each pair, and often one of the remaining two.

    Raises:
        ValueError: on wrong shapes, non-float dtypes, or devices/dtypes that differ.
    """
    check_shape(H, "H", (3, 3), "(*B, 3, 3)")
    check_float(H, "H")
    check_intrinsics(K1, "K1")
    check_intrinsics(K2, "K2")
    check_same_device_dtype({"H": H, "K1": K1, "K2": K2})
    lead = _batch_shape(H, K1, K2)
    dtype, dev = H.dtype, H.device
    eps = torch.finfo(dtype).eps
    eye = torch.eye(3, dtype=dtype, device=dev)
    # non-finite inputs are replaced before any arithmetic, so that their (zero) gradients stay finite
    fin = [torch.isfinite(M).flatten(-2).all(-1) for M in (H, K1, K2)]
    H, K1, K2 = (torch.where(f[..., None, None], M, eye) for f, M in zip(fin, (H, K1, K2)))
    Hn = (_cofactor(K2).transpose(-1, -2) @ H @ K1).expand(*lead, 3, 3)  # adj(K2) = det(K2) K2^-1
    fro = Hn.detach().flatten(-2).norm(dim=-1)
    ok = fin[0] & fin[1] & fin[2] & torch.isfinite(fro) & (fro > 0)
    Hn = torch.where(ok[..., None, None], Hn, eye)
    Hn = Hn / Hn.flatten(-2).norm(dim=-1)[..., None, None]
    det = torch.linalg.det(Hn.detach())
    dtol = eps ** 0.5 if det_tol is None else det_tol
    ok = ok & (det.abs() > dtol * 3.0 ** -1.5)
    Hn = torch.where(ok[..., None, None], Hn, eye)
    det = torch.where(ok, det, torch.ones_like(det))
    lam = torch.linalg.eigvalsh(Hn.transpose(-1, -2) @ Hn)  # ascending
    scale = torch.sign(det) / lam[..., 1].clamp_min(torch.finfo(dtype).tiny).sqrt()
    Hs = Hn * scale[..., None, None]
    S = Hs.transpose(-1, -2) @ Hs - eye
    rot = ok & (S.detach().abs().flatten(-2).amax(-1) <= rotation_tol)
    gen = ok & ~rot
    stand_in = _STAND_IN.to(dtype=dtype, device=dev)
    Rg, tg, ng = _general(torch.where(gen[..., None, None], Hs, stand_in))
    Rr = _polar_newton(torch.where(rot[..., None, None], Hs, eye), iters=3)
    Rr = Rr[..., None, :, :].expand(*lead, 4, 3, 3)
    R = torch.where(gen[..., None, None, None], Rg, torch.where(rot[..., None, None, None], Rr, eye))
    t = torch.where(gen[..., None, None], tg, torch.zeros_like(tg))
    n = torch.where(gen[..., None, None], ng, torch.zeros_like(ng))
    first = torch.tensor([True, False, False, False], device=dev)
    valid = gen[..., None] | (rot[..., None] & first)
    return HomographyDecomposition(R, t, n, valid)


def pose_from_homography(
    H: Float[Tensor, "*B 3 3"],
    x1: Float[Tensor, "*B N 2"],
    x2: Float[Tensor, "*B N 2"],
    K1: Float[Tensor, "*B 3 3"],
    K2: Float[Tensor, "*B 3 3"],
    mask: Bool[Tensor, "*B N"] | None = None,
    threshold: float | None = None,
    min_parallax: float = math.radians(0.25),
    min_fraction: float = 0.5,
    rotation_tol: float = 1e-3,
) -> HomographyPose:
    """Relative pose ``cam2_from_cam1`` and plane normal from a homography, by cheirality over the points.

    Rule. The four solutions of :func:`decompose_homography` are scored by the number of *plane points* whose
    two viewing rays meet the plane in front of the cameras: ``n^T m1 > 0`` (ray 1 hits the plane at positive
    depth, ``m1 = K1^-1 x1``) and ``(R n)^T m2 > 0`` (the same for ray 2 and the plane in camera 2's frame;
    both cameras are on the plane's visible side). Plane points are all used rows, or with ``threshold`` the
    rows with one-way transfer error ``|x2 - pi(H x1)| < threshold`` pixels. The largest count wins; it
    removes one solution of each sign pair, and the other pair too when some rays would meet its plane behind
    a camera (its normal is roughly the baseline direction, so a sideways motion eliminates it, a motion
    towards the plane usually does not).

    Ties (``ambiguous``). When both remaining solutions pass for all points the data on the plane cannot tell
    them apart: both reproduce H exactly and both induce essential matrices ``[t]x R = [t]x Hn`` that every
    plane correspondence satisfies. The tie goes to the smaller Sampson error of ``E = [t]x R`` (pixels^2, in
    pixel space through K) summed over *all* used rows, truncated at ``threshold^2`` when given (an MSAC
    score). Correspondences off the plane, which H does not explain, make this decisive; on purely planar data
    it is decided by noise (a coin flip): ``ambiguous`` is then True and the other solution is returned in
    ``R_alt, t_alt, n_alt`` for the caller to decide (a known normal, a third view, motion continuity).
    ``ambiguous`` is reported whenever the cheirality counts of two different solutions tie, whatever the
    tie-break (and whatever ``success``).

    ``success`` is False for unusable input (non-finite used rows, an invalid H), when no point is in front,
    when fewer than ``min_fraction`` of the plane points are in front, or when the translation is
    unobservable: the median angle between ``m2`` and ``R0 m1`` over the points in front, with ``R0`` the
    rotation that best aligns their rays (Kabsch), below ``min_parallax`` (0.25 degrees by default, as in
    :func:`recover_pose`).
    This is the parallax a translation leaves once a rotation has absorbed what it can: a noisy homography of
    a pure rotation decomposes into a fake small translation whose own rotation is off by the same amount, so
    the decomposition's R would not do. A pure rotation fails this way (an exact one returns R, t = 0, n = 0).
    On the synthetic planar scenes (0.5 px noise, 100 points, baselines 0.3-1 m at 3-5 m) 0.15% of the
    problems fall below the default (6 of 4000), and none of 3000 noisy pure rotations (60 points) passes it.

    Gradients: R, t, n and t_over_d are differentiable with respect to H, K1 and K2 through the closed form
    of the selected solution (module doc); the selection is discrete, so the points get no gradient.

    Args:
        H: (*B, 3, 3) homographies ``x2 ~ H x1``, pixels.
        x1: pixels in image 1, (*B, N, 2).
        x2: pixels in image 2, (*B, N, 2).
        K1, K2: intrinsics (*B, 3, 3) or broadcastable, pixels.
        mask: optional bool (*B, N); False rows are padding (may hold NaN) and are ignored.
        threshold: optional transfer / Sampson threshold in pixels (see above).
        min_parallax: smallest accepted median parallax, radians.
        min_fraction: smallest accepted fraction of plane points in front.
        rotation_tol: pure-rotation threshold of :func:`decompose_homography`.

    Returns:
        :class:`HomographyPose`. Where success is False, R, t, n hold the best candidate (identity and zeros
        for an invalid H).

    Raises:
        ValueError: on wrong shapes, dtypes or devices.
    """
    c = prepare_correspondences({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, None, mask)
    p1, p2 = c.points
    w = c.weights
    lead = x1.shape[:-2]
    check_shape(H, "H", (3, 3), "(*B, 3, 3)")
    check_float(H, "H")
    check_intrinsics(K1, "K1")
    check_intrinsics(K2, "K2")
    check_same_device_dtype({"H": H, "K1": K1, "K2": K2, "x1": x1})
    if H.shape[:-2] != lead:
        raise ValueError(f"H must have shape (*B, 3, 3) with *B = {tuple(lead)}, got {tuple(H.shape)}")
    for name, K in (("K1", K1), ("K2", K2)):
        try:
            if torch.broadcast_shapes(K.shape[:-2], lead) != lead:
                raise RuntimeError
        except RuntimeError as exc:
            raise ValueError(f"{name} with batch shape {tuple(K.shape[:-2])} does not broadcast to "
                             f"{tuple(lead)}") from exc
    K1 = K1.expand(*lead, 3, 3)
    K2 = K2.expand(*lead, 3, 3)
    dec = decompose_homography(H, K1, K2, rotation_tol=rotation_tol)
    tiny = torch.finfo(x1.dtype).tiny
    with torch.no_grad():
        used = w > 0
        plane = used
        if threshold is not None:
            plane = plane & (transfer_error(H.detach(), p1, p2) < threshold * threshold)
        o = torch.ones_like(p1[..., :1])
        m1 = torch.cat([pixels_to_normalized(p1, K1.detach()), o], -1)  # (*B, N, 3)
        m2 = torch.cat([pixels_to_normalized(p2, K2.detach()), o], -1)
        Rd, td, nd = dec.R.detach(), dec.t.detach(), dec.n.detach()
        Rn = (Rd @ nd[..., None])[..., 0]  # (*B, 4, 3): normal in camera 2
        vis1 = m1 @ nd.transpose(-1, -2)  # (*B, N, 4)
        vis2 = m2 @ Rn.transpose(-1, -2)
        front = (plane[..., None] & (vis1 > 0) & (vis2 > 0)).transpose(-1, -2)  # (*B, 4, N)
        count = (front.to(w.dtype) * w[..., None, :]).sum(-1)
        count = torch.where(dec.valid, count, torch.full_like(count, -1.0))
        best_count = count.amax(-1)
        cand = dec.valid & (count == best_count[..., None])
        # epipolar tie-break (pixel Sampson error of E = [t]x R through K; one E per sign pair)
        Ki1, Ki2 = intrinsics_inverse(K1.detach()), intrinsics_inverse(K2.detach())
        E = skew(td[..., ::2, :]) @ Rd[..., ::2, :, :]
        F = Ki2.transpose(-1, -2)[..., None, :, :] @ E @ Ki1[..., None, :, :]
        samp = sampson_distance(F, p1, p2)  # (*B, 2, N)
        if threshold is not None:
            samp = samp.clamp_max(threshold * threshold)
        score = (samp * w[..., None, :]).sum(-1).nan_to_num(nan=math.inf).repeat_interleave(2, dim=-1)
        score = torch.where(cand, score, torch.full_like(score, math.inf))
        best = score.argmin(-1)  # all-inf (no candidate) -> 0
        # best of the other sign pair
        other = torch.tensor([2, 0], device=best.device)[best // 2]
        pair = count.gather(-1, torch.stack([other, other + 1], -1))
        alt = other + (pair[..., 1] > pair[..., 0]).long()
        alt_count = count.gather(-1, alt[..., None])[..., 0]
        alt_valid = dec.valid.gather(-1, alt[..., None])[..., 0]
        sel = best[..., None, None].expand(*best.shape, 1, front.shape[-1])
        in_front = front.gather(-2, sel)[..., 0, :]
        num_in_front = in_front.sum(-1)
        n_plane = (plane.to(w.dtype) * w).sum(-1)
        # translation observability: parallax left after the best pure rotation (Kabsch on the unit rays of
        # the points in front); the decomposition's own R would absorb noise into a fake small translation
        f1 = m1 / m1.norm(dim=-1, keepdim=True)
        f2 = m2 / m2.norm(dim=-1, keepdim=True)
        U, _, Vh = torch.linalg.svd((f2 * in_front[..., None].to(f2.dtype)).transpose(-1, -2) @ f1)
        fix = torch.ones_like(U[..., 0, :])
        fix[..., 2] = torch.sign(torch.linalg.det(U @ Vh))
        a = f1 @ ((U * fix[..., None, :]) @ Vh).transpose(-1, -2)
        par = torch.atan2(torch.linalg.cross(a, f2, dim=-1).norm(dim=-1), (a * f2).sum(-1))
        par = torch.where(in_front, par, torch.full_like(par, float("nan")))
        med_par = par.nanmedian(dim=-1).values if par.shape[-1] > 0 else par.sum(-1)
        success = (c.finite & dec.valid.any(-1) & (best_count > 0)
                   & (num_in_front >= min_fraction * n_plane)
                   & (torch.nan_to_num(med_par, nan=0.0) >= min_parallax))

    def pick(idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        R = dec.R.gather(-3, idx[..., None, None, None].expand(*idx.shape, 1, 3, 3))[..., 0, :, :]
        t = dec.t.gather(-2, idx[..., None, None].expand(*idx.shape, 1, 3))[..., 0, :]
        n = dec.n.gather(-2, idx[..., None, None].expand(*idx.shape, 1, 3))[..., 0, :]
        return R, t, n

    R, tod, n = pick(best)
    Ra, toda, na = pick(alt)
    eps_n = torch.finfo(x1.dtype).eps ** 0.5
    ambiguous = (alt_valid & (alt_count == best_count) & (best_count > 0)
                 & ((n.detach() - na.detach()).norm(dim=-1) > eps_n))
    # rsqrt of a clamped sum of squares: finite gradients for t = 0 (pure rotation) too
    t = tod * tod.square().sum(-1, keepdim=True).clamp_min(tiny).rsqrt()
    ta = toda * toda.square().sum(-1, keepdim=True).clamp_min(tiny).rsqrt()
    return HomographyPose(R, t, n, tod, in_front, num_in_front, ambiguous, Ra, ta, na, success)
