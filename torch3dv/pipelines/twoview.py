"""Two-view pipelines on matched pixels, all on the matches' device: relative pose + triangulation, localisation
against a depth map (PnP), and 3D-3D registration of two depth maps (Procrustes).

They take :class:`torch3dv.features.Matches` (``kpts0`` in image 0, ``kpts1`` in image 1, padded with ``mask``)
and return typed, batched results with a per-pair ``success`` flag. Poses are ``cam1_from_cam0`` unless a world
pose of camera 0 is given (README, "Conventions").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from torch3dv._checks import check_intrinsics
from torch3dv.camera.pinhole import pixels_to_normalized, unproject_pinhole
from torch3dv.features.types import Matches
from torch3dv.geometry.transforms import invert_rigid, projection_matrix, transform_points
from torch3dv.ransac import (
    RansacOptions,
    estimate_absolute_pose,
    estimate_fundamental,
    estimate_homography,
    estimate_relative_pose,
    estimate_rigid,
)
from torch3dv.solvers.essential import project_to_essential, recover_pose
from torch3dv.solvers.homography_decompose import pose_from_homography
from torch3dv.solvers.triangulation import triangulate_two_view

METHODS = ("essential", "fundamental", "homography")


class TwoViewGeometry(NamedTuple):
    """Relative pose and triangulated points of image pairs.

    Attributes:
        R, t: ``cam1_from_cam0`` (B, 3, 3), (B, 3), unit-norm t (the scale is not observable).
        model: (B, 3, 3) the estimated E, F or H (``x1 ~ H x0``), per ``method``.
        X: (B, M, 3) triangulated points in the camera-0 frame, in units of the baseline; zeros where
            ``points_mask`` is False.
        points_mask: (B, M) bool: model inlier, triangulated, in front of both cameras.
        inliers: (B, M) bool model inliers.
        success: (B,) bool.
    """

    R: Tensor
    t: Tensor
    model: Tensor
    X: Tensor
    points_mask: Tensor
    inliers: Tensor
    success: Tensor


class Localization(NamedTuple):
    """Absolute pose of camera 1 from 2D-3D matches.

    Attributes:
        R, t: ``cam1_from_world`` (B, 3, 3), (B, 3), metres; the world is camera 0 unless ``R0, t0`` were given.
        X: (B, M, 3) 3D points (world frame) back-projected from image 0's depth; zeros where unusable.
        points_mask: (B, M) bool, rows with a valid depth.
        inliers: (B, M) bool PnP inliers.
        success: (B,) bool.
    """

    R: Tensor
    t: Tensor
    X: Tensor
    points_mask: Tensor
    inliers: Tensor
    success: Tensor


class Registration(NamedTuple):
    """Rigid (or similarity) transform between the camera frames from 3D-3D matches.

    Attributes:
        R, t, s: ``cam1_from_cam0``, X1 = s R X0 + t, (B, 3, 3), (B, 3) metres, (B,) (1 unless ``with_scale``).
        X0, X1: (B, M, 3) back-projected points in each camera's frame; zeros where unusable.
        points_mask: (B, M) rows with valid depth in both images.
        inliers: (B, M) bool.
        success: (B,) bool.
    """

    R: Tensor
    t: Tensor
    s: Tensor
    X0: Tensor
    X1: Tensor
    points_mask: Tensor
    inliers: Tensor
    success: Tensor


# fewest correspondences each estimator needs; with fewer in every pair of a batch the estimator is skipped
# (torch3dv.ransac raises when no problem of a batch can draw a sample) and the pairs fail
_MIN_POINTS = {"essential": 5, "fundamental": 8, "homography": 4, "pnp": 4, "rigid": 3}


def _identity_pose(ref: Tensor) -> tuple[Tensor, Tensor]:
    B = ref.shape[0]
    return (torch.eye(3, dtype=ref.dtype, device=ref.device).expand(B, 3, 3).clone(),
            torch.zeros(B, 3, dtype=ref.dtype, device=ref.device))


def _check_matches(matches: Matches) -> None:
    if not isinstance(matches, Matches):
        raise ValueError(f"matches must be torch3dv.features.Matches, got {type(matches).__name__}")


def _K(K: Tensor, name: str, ref: Tensor) -> Tensor:
    check_intrinsics(K, name)
    if K.device != ref.device:
        raise ValueError(f"{name} is on {K.device} but the matches are on {ref.device}")
    return K.to(ref.dtype).expand(ref.shape[0], 3, 3)


def relative_pose_from_matches(
    matches: Matches,
    K0: Tensor,
    K1: Tensor,
    method: str = "essential",
    threshold: float | None = None,
    options: RansacOptions | None = None,
) -> TwoViewGeometry:
    """Relative pose by robust estimation, then triangulation of the inliers.

    ``"essential"``: 5-point RANSAC (:func:`torch3dv.estimate_relative_pose`). ``"fundamental"``: 7-point RANSAC
    for F, then E = K1^T F K0 projected to an essential matrix and the pose by cheirality on F's inliers.
    ``"homography"``: 4-point RANSAC for H, then :func:`torch3dv.solvers.pose_from_homography` (decomposition of
    H, cheirality of H's inliers, ties between the plane's two solutions broken by the epipolar error of all
    matches). A plane seen by two calibrated views can have two poses that explain it equally well (when the
    motion is mostly towards the plane); with no match off the plane the returned pose may then be the twin of
    the true one (call ``pose_from_homography`` directly for its ``ambiguous`` flag and the other solution); H
    itself is unambiguous.

    Args:
        matches: (B, M) padded matches.
        K0, K1: intrinsics (B, 3, 3) or (3, 3), pixels.
        method: ``"essential"``, ``"fundamental"`` or ``"homography"``.
        threshold: inlier threshold in pixels (estimator defaults when None).
        options: :class:`torch3dv.RansacOptions`.

    Returns:
        :class:`TwoViewGeometry`.
    """
    _check_matches(matches)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x0, x1, mask = matches.kpts0, matches.kpts1, matches.mask
    K0, K1 = _K(K0, "K0", x0), _K(K1, "K1", x0)
    if not bool((mask.sum(-1) >= _MIN_POINTS[method]).any()):
        R, t = _identity_pose(x0)
        no = torch.zeros_like(mask)
        return TwoViewGeometry(R, t, torch.zeros_like(R), torch.zeros_like(x0[..., :1]).expand(*x0.shape[:-1], 3),
                               no, no, no.any(-1))
    if method == "essential":
        est = estimate_relative_pose(x0, x1, K0, K1, threshold=threshold, mask=mask, options=options)
        R, t, inl, ok, model = est.R, est.t, est.inliers, est.success, est.E
    elif method == "fundamental":
        fe = estimate_fundamental(x0, x1, threshold=threshold, mask=mask, options=options)
        E = project_to_essential(K1.transpose(-1, -2) @ fe.F @ K0)
        pose = recover_pose(E, pixels_to_normalized(x0, K0), pixels_to_normalized(x1, K1), mask=fe.inliers)
        R, t, inl, ok, model = pose.R, pose.t, fe.inliers, fe.success & pose.success, fe.F
    else:
        he = estimate_homography(x0, x1, threshold=threshold, mask=mask, options=options)
        thr = threshold if threshold is not None else (options.threshold if options is not None else 2.0)
        # all matches: H's inliers (transfer error < thr) decide cheirality, the others can break the twin tie
        pose = pose_from_homography(he.H, x0, x1, K0, K1, mask=mask, threshold=thr)
        R, t, inl, ok, model = pose.R, pose.t, he.inliers, he.success & pose.success, he.H
    eye = torch.eye(3, dtype=x0.dtype, device=x0.device).expand_as(R)
    P0 = projection_matrix(K0, eye, torch.zeros_like(t))
    P1 = projection_matrix(K1, R, t)
    tri = triangulate_two_view(P0, P1, x0, x1)
    z0 = tri.X[..., 2]
    z1 = transform_points(R, t, tri.X)[..., 2]
    pts = inl & mask & tri.success & (z0 > 0) & (z1 > 0) & ok[:, None]
    X = torch.where(pts[..., None], tri.X, torch.zeros_like(tri.X))
    return TwoViewGeometry(R, t, model, X, pts, inl & mask, ok)


def sample_depth(depth: Tensor, x: Tensor, max_relative_jump: float = 0.05) -> tuple[Tensor, Tensor]:
    """Bilinear depth at sub-pixel points, refused across depth discontinuities.

    Args:
        depth: (B, H, W) z-depth in metres; 0, negative or non-finite marks no depth.
        x: (B, M, 2) pixels (README convention: pixel centres at integers).
        max_relative_jump: the 2x2 neighbourhood's depths must agree to this fraction, else the point is refused.

    Returns:
        (depth (B, M), valid (B, M) bool); depth is 0 where invalid.
    """
    if depth.ndim != 3 or x.ndim != 3 or depth.shape[0] != x.shape[0]:
        raise ValueError(f"depth must be (B, H, W) and x (B, M, 2) with the same B, got {tuple(depth.shape)}, "
                         f"{tuple(x.shape)}")
    B, H, W = depth.shape
    d = depth.to(x.dtype)
    good = torch.isfinite(d) & (d > 0)
    d = torch.where(good, d, torch.zeros_like(d))
    # align_corners=True maps -1..1 to the centres of the first and last pixel: our convention
    g = torch.stack([x[..., 0] / max(W - 1, 1) * 2 - 1, x[..., 1] / max(H - 1, 1) * 2 - 1], dim=-1)[:, :, None]
    val = F.grid_sample(d[:, None], g, mode="bilinear", align_corners=True, padding_mode="zeros")[:, 0, :, 0]
    # the 4 neighbours: every one must have depth and agree with the others
    u0 = x[..., 0].floor().clamp(0, W - 1).long()
    v0 = x[..., 1].floor().clamp(0, H - 1).long()
    u1, v1 = (u0 + 1).clamp(max=W - 1), (v0 + 1).clamp(max=H - 1)
    flat = d.reshape(B, -1)
    nb = torch.stack([flat.gather(1, v * W + u) for v, u in ((v0, u0), (v0, u1), (v1, u0), (v1, u1))], dim=-1)
    lo, hi = nb.min(-1).values, nb.max(-1).values
    inside = (x[..., 0] >= 0) & (x[..., 0] <= W - 1) & (x[..., 1] >= 0) & (x[..., 1] <= H - 1)
    ok = inside & (lo > 0) & (hi - lo <= max_relative_jump * lo) & torch.isfinite(x).all(-1)
    return torch.where(ok, val, torch.zeros_like(val)), ok


def localize_with_depth(
    matches: Matches,
    depth0: Tensor,
    K0: Tensor,
    K1: Tensor,
    R0: Tensor | None = None,
    t0: Tensor | None = None,
    threshold: float | None = None,
    options: RansacOptions | None = None,
) -> Localization:
    """Localises camera 1 against image 0's depth map: back-project ``kpts0``, then PnP RANSAC on ``kpts1``.

    Args:
        matches: (B, M) padded matches.
        depth0: (B, H0, W0) z-depth of image 0, metres (0 / non-finite: unknown).
        K0, K1: intrinsics (B, 3, 3) or (3, 3).
        R0, t0: optional ``cam0_from_world``; the result is then ``cam1_from_world`` in that world, else
            ``cam1_from_cam0``.
        threshold: reprojection threshold in pixels (default 2).
        options: :class:`torch3dv.RansacOptions`.

    Returns:
        :class:`Localization` (metric pose, since the depth is metric).
    """
    _check_matches(matches)
    x0, x1 = matches.kpts0, matches.kpts1
    K0, K1 = _K(K0, "K0", x0), _K(K1, "K1", x0)
    z, ok = sample_depth(depth0, x0)
    ok = ok & matches.mask
    X = unproject_pinhole(x0, K0, z)
    if (R0 is None) != (t0 is None):
        raise ValueError("pass both R0 and t0 (cam0_from_world) or neither")
    if R0 is not None:
        Rw, tw = invert_rigid(R0.to(x0.dtype), t0.to(x0.dtype))
        X = transform_points(Rw, tw, X)
    X = torch.where(ok[..., None], X, torch.zeros_like(X))
    if not bool((ok.sum(-1) >= _MIN_POINTS["pnp"]).any()):
        R, t = _identity_pose(x0)
        return Localization(R, t, X, ok, torch.zeros_like(ok), ok.any(-1) & False)
    est = estimate_absolute_pose(x1, X, K1, threshold=threshold, mask=ok, options=options)
    return Localization(est.R, est.t, X, ok, est.inliers & ok, est.success)


def register_with_depths(
    matches: Matches,
    depth0: Tensor,
    depth1: Tensor,
    K0: Tensor,
    K1: Tensor,
    with_scale: bool = False,
    threshold: float | None = None,
    options: RansacOptions | None = None,
) -> Registration:
    """``cam1_from_cam0`` from both depth maps: back-project both sides of each match, then robust Procrustes
    (:func:`torch3dv.estimate_rigid`: Kabsch, or Umeyama ``with_scale``).

    Args:
        matches: (B, M) padded matches.
        depth0, depth1: (B, H, W) z-depths of each image, metres.
        K0, K1: intrinsics (B, 3, 3) or (3, 3).
        with_scale: also estimate a scale (depth maps with different units or scale, e.g. monocular depth).
        threshold: 3D residual threshold, metres (default 0.05).
        options: :class:`torch3dv.RansacOptions`.
    """
    _check_matches(matches)
    x0, x1 = matches.kpts0, matches.kpts1
    K0, K1 = _K(K0, "K0", x0), _K(K1, "K1", x0)
    z0, ok0 = sample_depth(depth0, x0)
    z1, ok1 = sample_depth(depth1, x1)
    ok = ok0 & ok1 & matches.mask
    X0 = unproject_pinhole(x0, K0, z0)
    X1 = unproject_pinhole(x1, K1, z1)
    X0 = torch.where(ok[..., None], X0, torch.zeros_like(X0))
    X1 = torch.where(ok[..., None], X1, torch.zeros_like(X1))
    if not bool((ok.sum(-1) >= _MIN_POINTS["rigid"]).any()):
        R, t = _identity_pose(x0)
        return Registration(R, t, torch.ones_like(t[:, 0]), X0, X1, ok, torch.zeros_like(ok), ok.any(-1) & False)
    est = estimate_rigid(X0, X1, with_scale=with_scale, threshold=threshold, mask=ok, options=options)
    return Registration(est.R, est.t, est.s, X0, X1, ok, est.inliers & ok, est.success)
