"""Public robust estimators: pixels (or metres) in, typed and batched results out.

Each function accepts any leading batch shape ``*B``, padded correspondences with a ``mask``, optional match
``scores`` (PROSAC-style ordering) and ``weights`` (confidences that scale each correspondence in the final
refit), and returns a NamedTuple with per-problem ``success``.

Gradients: hypothesis generation, scoring and local optimisation run without gradient; the returned model
is the final weighted refit / polish on the inliers, computed with gradient. So gradients flow from the result
to the correspondences (and to ``weights``) through the final least-squares problem on the selected inliers,
which for a converged polish is the implicit derivative of that weighted fit (the inlier set itself is a
discrete choice and has no gradient).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_intrinsics, check_same_device_dtype, prepare_correspondences
from torch3dv.camera.models import Camera, undistort_pixels
from torch3dv.camera.pinhole import bearing_vectors, intrinsics_inverse, pixels_to_normalized
from torch3dv.ransac.degeneracy import plane_and_parallax
from torch3dv.ransac.estimator import RansacOptions, ransac
from torch3dv.linalg.skew import skew
from torch3dv.ransac.models import (
    AbsolutePoseModel,
    EssentialModel,
    FundamentalModel,
    HomographyModel,
    RigidModel,
    _E_to_F,
    compact_rows,
    sampson_sq,
)
from torch3dv.solvers.essential import recover_pose
from torch3dv.solvers.relative_pose_refine import refine_relative_pose

_NEAR = 3.0  # the final pose refinement sees the points within this many thresholds of RANSAC's model


class RelativePoseEstimate(NamedTuple):
    """``cam2_from_cam1`` from :func:`estimate_relative_pose`.

    Attributes:
        R: (*B, 3, 3) rotation. t: (*B, 3) unit translation direction. E: (*B, 3, 3) essential matrix.
        inliers: (*B, N) bool. num_inliers: (*B,). success: (*B,).
    """

    R: Tensor
    t: Tensor
    E: Tensor
    inliers: Tensor
    num_inliers: Tensor
    success: Tensor


class FundamentalEstimate(NamedTuple):
    """F with x2^T F x1 = 0 (*B, 3, 3); inliers (*B, N); num_inliers (*B,); success (*B,)."""

    F: Tensor
    inliers: Tensor
    num_inliers: Tensor
    success: Tensor


class HomographyEstimate(NamedTuple):
    """H with x2 ~ H x1 (*B, 3, 3), H[2, 2] = 1; inliers (*B, N); num_inliers (*B,); success (*B,)."""

    H: Tensor
    inliers: Tensor
    num_inliers: Tensor
    success: Tensor


class AbsolutePoseEstimate(NamedTuple):
    """``cam_from_world`` (R (*B, 3, 3), t (*B, 3)); inliers (*B, N); num_inliers (*B,); success (*B,)."""

    R: Tensor
    t: Tensor
    inliers: Tensor
    num_inliers: Tensor
    success: Tensor


class RigidEstimate(NamedTuple):
    """Y ≈ s R X + t: R (*B, 3, 3), t (*B, 3), s (*B,); inliers (*B, N); num_inliers (*B,); success (*B,)."""

    R: Tensor
    t: Tensor
    s: Tensor
    inliers: Tensor
    num_inliers: Tensor
    success: Tensor


def _options(options: RansacOptions | None, threshold: float | None, default_threshold: float,
             **overrides) -> RansacOptions:
    opts = options or RansacOptions(threshold=default_threshold, **overrides)
    if threshold is not None:
        from dataclasses import replace

        opts = replace(opts, threshold=threshold)
    return opts


def _flatten(x: Tensor, lead: torch.Size, event: int) -> Tensor:
    """Broadcasts x (..., *event_shape) to (*lead, *event_shape) and flattens the batch: (M, *event_shape)."""
    ev = x.shape[x.ndim - event:]
    return x.expand(*lead, *ev).reshape(lead.numel(), *ev)


def _intrinsics(K: Tensor, name: str, lead: torch.Size, ref: Tensor) -> Tensor:
    check_intrinsics(K, name)
    check_same_device_dtype({name: K, "points": ref})
    try:
        torch.broadcast_shapes(K.shape[:-2], lead)
    except RuntimeError as exc:
        raise ValueError(f"{name} with batch shape {tuple(K.shape[:-2])} does not broadcast to {tuple(lead)}") from exc
    return _flatten(K, lead, 2)


def _finite_K(K: Tensor) -> Tensor:
    return torch.isfinite(K).flatten(-2).all(-1) & (K[..., 0, 0].abs() > 0) & (K[..., 1, 1].abs() > 0)


def _safe_K(K: Tensor, ok: Tensor) -> Tensor:
    eye = torch.eye(3, dtype=K.dtype, device=K.device).expand_as(K)
    return torch.where(ok[:, None, None], K, eye)


def _prepare(points: dict, dims: dict, weights, mask, scores):
    prep = prepare_correspondences(points, dims, weights=weights, mask=mask)
    first = next(iter(points.values()))
    lead = first.shape[:-2]
    N = first.shape[-2]
    M = lead.numel()
    flat = tuple(p.reshape(M, N, p.shape[-1]) for p in prep.points)
    w = prep.weights.reshape(M, N)
    valid = (w > 0) & prep.finite.reshape(M, 1)
    pr = None
    if scores is not None:
        if scores.shape != first.shape[:-1]:
            raise ValueError(f"scores must have shape (*B, N) = {tuple(first.shape[:-1])}, got {tuple(scores.shape)}")
        pr = torch.nan_to_num(scores.reshape(M, N).detach(), nan=-torch.inf)
    return flat, w, valid, pr, lead, N


def _undistorted(x: Tensor, camera, mask: Tensor | None, name: str):
    """Maps observed pixels of a distorted :class:`~torch3dv.camera.Camera` to ideal pinhole pixels with the same K.

    Returns ``(pixels, K, mask)``; points whose undistortion does not converge (e.g. fisheye rays beyond 90
    degrees) are masked out. A plain intrinsics tensor passes through unchanged (``K = camera``).
    """
    if camera is None or isinstance(camera, Tensor):
        return x, camera, mask
    if not isinstance(camera, Camera):
        raise ValueError(f"{name} must be an intrinsics tensor (*B, 3, 3) or a torch3dv.camera.Camera, "
                         f"got {type(camera).__name__}")
    if camera.model == "pinhole":
        return x, camera.K, mask
    r = undistort_pixels(camera, x, return_converged=True)
    ok = r.converged & torch.isfinite(r.points).all(-1)
    return r.points, camera.K, ok if mask is None else mask & ok


def _unflatten(x: Tensor, lead: torch.Size) -> Tensor:
    return x.reshape(tuple(lead) + tuple(x.shape[1:]))


def estimate_relative_pose(
    x1: Tensor,
    x2: Tensor,
    K1: Tensor | Camera,
    K2: Tensor | Camera,
    threshold: float | None = None,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    scores: Tensor | None = None,
    options: RansacOptions | None = None,
) -> RelativePoseEstimate:
    """Robust relative pose from pixel correspondences of two calibrated cameras (5-point RANSAC).

    Args:
        x1, x2: corresponding pixels in image 1 and 2, (*B, N, 2) (README, "Conventions").
        K1, K2: pinhole intrinsics (*B, 3, 3) or broadcastable (e.g. (3, 3)), or a
            :class:`torch3dv.camera.Camera` with lens distortion: the pixels are then undistorted first
            (ideal pinhole pixels with the same K; the threshold applies there) and points whose undistortion
            fails are left out.
        threshold: inlier threshold on the Sampson error, pixels (default 1.0 or ``options.threshold``).
        mask: (*B, N) bool, False for padding rows.
        weights: (*B, N) non-negative confidences used in the final refit (gradients flow to them).
        scores: (*B, N) match scores, higher first, for PROSAC-style sampling (needs ``options.prosac_growth``).
        options: :class:`RansacOptions`.

    Returns:
        :class:`RelativePoseEstimate` with ``cam2_from_cam1`` (R, unit t).
    """
    x1, K1, mask = _undistorted(x1, K1, mask, "K1")
    x2, K2, mask = _undistorted(x2, K2, mask, "K2")
    (x1f, x2f), w, valid, pr, lead, N = _prepare({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, weights, mask, scores)
    K1f, K2f = _intrinsics(K1, "K1", lead, x1), _intrinsics(K2, "K2", lead, x1)
    okK = _finite_K(K1f) & _finite_K(K2f)
    K1f, K2f = _safe_K(K1f, okK), _safe_K(K2f, okK)
    valid = valid & okK[:, None]
    opts = _options(options, threshold, 1.0)
    x1n, x2n = pixels_to_normalized(x1f, K1f), pixels_to_normalized(x2f, K2f)
    ctx = (intrinsics_inverse(K1f), intrinsics_inverse(K2f))
    # the IRLS polish of E is replaced by LM on the pose below, so the model's own polish is off
    out = ransac(EssentialModel(polish_iterations=0), (x1n, x2n, x1f, x2f), ctx, valid, opts, priority=pr,
                 refit_weights=w)
    i1, i2, im = compact_rows(out.inliers, x1n, x2n)  # cheirality on the inliers only
    pose = recover_pose(out.params, i1, i2, mask=im > 0)
    R, t = pose.R, pose.t
    if opts.final_refine:
        # minimise the Sampson error over the 5-DoF pose (implicit gradients), with the
        # truncated (MSAC) loss over all valid points: the inlier set is re-decided as the pose moves
        # Points beyond a few thresholds of RANSAC's model sit on the flat part of the loss: leave them out.
        with torch.no_grad():
            r2 = sampson_sq(_E_to_F(out.params[:, None], ctx[0], ctx[1]), x1f, x2f)[:, 0]
            near = valid & (r2 < (_NEAR * opts.threshold) ** 2)
        n1, n2, nw, nm = compact_rows(near, x1f, x2f, w)
        ref = refine_relative_pose(R, t, n1, n2, K1f, K2f, weights=nm * nw, loss="truncated",
                                   loss_scale=opts.threshold)
        keep = ref.success[:, None]
        R = torch.where(keep[..., None], ref.R, R)
        t = torch.where(keep, ref.t, t)
    E = skew(t) @ R
    with torch.no_grad():
        F = ctx[1].transpose(-1, -2) @ E @ ctx[0]
        r2 = sampson_sq(F[:, None], x1f, x2f)[:, 0]
        inl = valid & (r2 < opts.threshold ** 2) & out.success[:, None]
    success = out.success & pose.success
    return RelativePoseEstimate(
        _unflatten(R, lead), _unflatten(t, lead), _unflatten(E, lead), _unflatten(inl, lead),
        _unflatten(inl.sum(-1), lead), _unflatten(success, lead))


def estimate_fundamental(
    x1: Tensor,
    x2: Tensor,
    threshold: float | None = None,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    scores: Tensor | None = None,
    options: RansacOptions | None = None,
    degeneracy_check: bool = True,
    camera1: Camera | None = None,
    camera2: Camera | None = None,
) -> FundamentalEstimate:
    """Robust fundamental matrix from pixel correspondences (7-point RANSAC, 8-point LO, IRLS polish).

    Args:
        x1, x2: pixels (*B, N, 2). threshold: Sampson error threshold in pixels (default 1.0).
        mask, weights, scores, options: as in :func:`estimate_relative_pose`.
        degeneracy_check: test each result against a dominant plane and re-estimate it by plane-and-parallax
            where that scores better (DEGENSAC-style; :mod:`torch3dv.ransac.degeneracy`).
        camera1, camera2: optional distorted cameras of the two images: pixels are undistorted first and F
            relates the ideal pinhole pixels (same K); points whose undistortion fails are left out.
    """
    x1, _, mask = _undistorted(x1, camera1, mask, "camera1")
    x2, _, mask = _undistorted(x2, camera2, mask, "camera2")
    (x1f, x2f), w, valid, pr, lead, N = _prepare({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, weights, mask, scores)
    opts = _options(options, threshold, 1.0)
    out = ransac(FundamentalModel(), (x1f, x2f), (), valid, opts, priority=pr, refit_weights=w)
    F = out.params / out.params.flatten(1).norm(dim=-1).clamp_min(torch.finfo(out.params.dtype).tiny)[:, None, None]
    inl = out.inliers
    if degeneracy_check and F.shape[0] > 0:
        seeds = opts.seed + torch.arange(F.shape[0], dtype=torch.int64, device=F.device)
        chk = plane_and_parallax(F, inl & out.success[:, None], x1f, x2f, valid, opts, seeds, refit_weights=w)
        F, inl = chk.F, chk.inliers
    return FundamentalEstimate(_unflatten(F, lead), _unflatten(inl, lead),
                               _unflatten(inl.sum(-1), lead), _unflatten(out.success, lead))


def estimate_homography(
    x1: Tensor,
    x2: Tensor,
    threshold: float | None = None,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    scores: Tensor | None = None,
    options: RansacOptions | None = None,
    camera1: Camera | None = None,
    camera2: Camera | None = None,
) -> HomographyEstimate:
    """Robust homography x2 ~ H x1 from pixel correspondences (4-point RANSAC, DLT LO, IRLS polish).

    Args:
        x1, x2: pixels (*B, N, 2). threshold: one-way transfer error threshold in pixels (default 2.0).
        mask, weights, scores, options: as in :func:`estimate_relative_pose`.
        camera1, camera2: optional distorted cameras, as in :func:`estimate_fundamental`.
    """
    x1, _, mask = _undistorted(x1, camera1, mask, "camera1")
    x2, _, mask = _undistorted(x2, camera2, mask, "camera2")
    (x1f, x2f), w, valid, pr, lead, N = _prepare({"x1": x1, "x2": x2}, {"x1": 2, "x2": 2}, weights, mask, scores)
    opts = _options(options, threshold, 2.0)
    out = ransac(HomographyModel(), (x1f, x2f), (), valid, opts, priority=pr, refit_weights=w)
    H = out.params
    h22 = H[:, 2, 2]
    scale = torch.where(h22.abs() > 1e-12, h22, torch.ones_like(h22))
    H = H / scale[:, None, None]
    return HomographyEstimate(_unflatten(H, lead), _unflatten(out.inliers, lead),
                              _unflatten(out.inliers.sum(-1), lead), _unflatten(out.success, lead))


def estimate_absolute_pose(
    x: Tensor,
    X: Tensor,
    K: Tensor | Camera,
    threshold: float | None = None,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    scores: Tensor | None = None,
    options: RansacOptions | None = None,
) -> AbsolutePoseEstimate:
    """Robust PnP: ``cam_from_world`` from pixels and world points (P3P RANSAC, EPnP LO, LM polish).

    Args:
        x: pixels (*B, N, 2). X: world points (*B, N, 3), metres. K: intrinsics (*B, 3, 3) or broadcastable,
            or a distorted :class:`torch3dv.camera.Camera` (pixels undistorted first, as in
            :func:`estimate_relative_pose`).
        threshold: reprojection error threshold in pixels (default 2.0).
        mask, weights, scores, options: as in :func:`estimate_relative_pose`.
    """
    x, K, mask = _undistorted(x, K, mask, "K")
    (xf, Xf), w, valid, pr, lead, N = _prepare({"x": x, "X": X}, {"x": 2, "X": 3}, weights, mask, scores)
    Kf = _intrinsics(K, "K", lead, x)
    okK = _finite_K(Kf)
    Kf = _safe_K(Kf, okK)
    valid = valid & okK[:, None]
    opts = _options(options, threshold, 2.0)
    f = bearing_vectors(xf, Kf)
    out = ransac(AbsolutePoseModel(), (xf, Xf, f), (Kf,), valid, opts, priority=pr, refit_weights=w)
    R, t = out.params[..., :3], out.params[..., 3]
    return AbsolutePoseEstimate(_unflatten(R, lead), _unflatten(t, lead), _unflatten(out.inliers, lead),
                                _unflatten(out.inliers.sum(-1), lead), _unflatten(out.success, lead))


def estimate_rigid(
    X: Tensor,
    Y: Tensor,
    with_scale: bool = False,
    threshold: float | None = None,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    scores: Tensor | None = None,
    options: RansacOptions | None = None,
) -> RigidEstimate:
    """Robust 3D-3D alignment Y ≈ s R X + t (3-point RANSAC, weighted Kabsch / Umeyama refits).

    Args:
        X, Y: corresponding 3D points (*B, N, 3), metres. with_scale: estimate s (Umeyama), else s = 1.
        threshold: Euclidean residual threshold in metres (default 0.05).
        mask, weights, scores, options: as in :func:`estimate_relative_pose`.
    """
    (Xf, Yf), w, valid, pr, lead, N = _prepare({"X": X, "Y": Y}, {"X": 3, "Y": 3}, weights, mask, scores)
    opts = _options(options, threshold, 0.05)
    out = ransac(RigidModel(with_scale), (Xf, Yf), (), valid, opts, priority=pr, refit_weights=w)
    A, t = out.params[..., :3], out.params[..., 3]
    s = torch.linalg.det(A).abs().clamp_min(0).pow(1.0 / 3.0) if with_scale else torch.ones_like(A[:, 0, 0])
    R = A / torch.where(s > 0, s, torch.ones_like(s))[:, None, None]
    return RigidEstimate(_unflatten(R, lead), _unflatten(t, lead), _unflatten(s, lead),
                         _unflatten(out.inliers, lead), _unflatten(out.inliers.sum(-1), lead),
                         _unflatten(out.success, lead))
