"""Global (correspondence-free) registration: FPFH features + mutual matching + batched RANSAC + ICP.

Pipeline of :func:`register` for a batch of pairs, no Python loop over pairs:

1. voxel-grid downsampling of both clouds (``voxel_size``);
2. normals from neighbours within ``normal_radius`` (oriented towards each cloud's own origin, the sensor
   position for scans in their camera frame) and FPFH descriptors within ``feature_radius``;
3. feature matches (mutual nearest neighbours, or all nearest neighbours when too few are mutual);
4. :func:`torch3dv.estimate_rigid`, the batched 3-point RANSAC with local optimisation, on the matched
   keypoints with an inlier threshold of ``ransac_threshold``;
5. ICP refinement (point-to-plane by default) of the RANSAC pose on the full-resolution clouds.

With ``init`` given, steps 1-4 are skipped (plain ICP from ``init``). Gradients: only the final ICP step carries
them (see :mod:`torch3dv.registration.icp_solver`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.ransac.api import estimate_rigid
from torch3dv.ransac.estimator import RansacOptions
from torch3dv.registration.features import fpfh, match_features
from torch3dv.registration.icp_solver import ICPOptions, icp, to_homogeneous
from torch3dv.registration.neighbors import NeighborIndex
from torch3dv.registration.normals import estimate_normals
from torch3dv.registration.pointcloud import clean_points, voxel_downsample


@dataclass(frozen=True)
class RegistrationOptions:
    """Options of :func:`register` / :func:`global_registration`.

    Attributes:
        voxel_size: downsampling voxel (metres) for features and RANSAC.
        normal_radius: normal neighbourhood radius (default 2 voxels), at most ``normal_neighbors`` points.
        feature_radius: FPFH radius (default 5 voxels), at most ``feature_neighbors`` points.
        ransac_threshold: RANSAC inlier distance (default 1.5 voxels), metres.
        mutual: keep only mutual nearest feature matches (falls back to one-way matches for a pair with fewer
            than ``min_matches`` mutual ones).
        min_matches: fewer usable matches marks the pair failed.
        ransac: :class:`torch3dv.RansacOptions` (its threshold is replaced by ``ransac_threshold``).
        icp: :class:`ICPOptions` for the refinement (default: point-to-plane, distance = 1 voxel);
            ``refine=False`` skips it.
    """

    voxel_size: float = 0.05
    normal_radius: float | None = None
    normal_neighbors: int = 30
    feature_radius: float | None = None
    feature_neighbors: int = 100
    ransac_threshold: float | None = None
    mutual: bool = True
    min_matches: int = 10
    ransac: RansacOptions = field(default_factory=lambda: RansacOptions(
        confidence=0.999, max_iterations=100000, min_iterations=1000, hypotheses_per_round=512,
        local_optimization=5))
    icp: ICPOptions | None = None
    refine: bool = True

    def __post_init__(self):
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {self.voxel_size}")


class RegistrationResult(NamedTuple):
    """``target_from_source`` (``Y ~ R X + t``) from :func:`register`.

    Attributes:
        R: (*B, 3, 3). t: (*B, 3) metres. transform: (*B, 4, 4).
        fitness: (*B,) ICP fitness (fraction of source points matched within the ICP distance), or the RANSAC
            inlier fraction of the matches when ``refine=False``.
        inlier_rmse: (*B,) metres (0 without refinement).
        num_matches: (*B,) feature matches given to RANSAC.
        num_inliers: (*B,) RANSAC inliers among them.
        success: (*B,) bool.
    """

    R: Tensor
    t: Tensor
    transform: Tensor
    fitness: Tensor
    inlier_rmse: Tensor
    num_matches: Tensor
    num_inliers: Tensor
    success: Tensor


class _Prepared(NamedTuple):
    points: Tensor
    mask: Tensor
    features: Tensor


def _prepare(points: Tensor, mask: Tensor, o: RegistrationOptions) -> _Prepared:
    d = voxel_downsample(points, o.voxel_size, mask)
    idx = NeighborIndex(d.points, d.mask)
    nrm = estimate_normals(d.points, d.mask, k=o.normal_neighbors, radius=o.normal_radius or 2 * o.voxel_size,
                           index=idx)
    F = fpfh(d.points, nrm, o.feature_radius or 5 * o.voxel_size, d.mask, o.feature_neighbors, index=idx)
    return _Prepared(d.points, d.mask, F)


def global_registration(
    source: Tensor,
    target: Tensor,
    source_mask: Tensor | None = None,
    target_mask: Tensor | None = None,
    options: RegistrationOptions | None = None,
) -> RegistrationResult:
    """Coarse ``target_from_source`` without an initial guess: FPFH + matching + RANSAC (no ICP).

    Args:
        source: (*B, N, 3) source points, metres.
        target: (*B, M, 3) target points, metres.
        source_mask, target_mask: optional bool masks.
        options: :class:`RegistrationOptions`.

    Returns:
        :class:`RegistrationResult` (``fitness`` = RANSAC inliers / matches, ``inlier_rmse`` = 0).
    """
    o = options or RegistrationOptions()
    cs = clean_points(source, source_mask, "source")
    ct = clean_points(target, target_mask, "target")
    if source.shape[:-2] != target.shape[:-2]:
        raise ValueError(f"source and target must share the batch shape *B, got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")
    if source.dtype != target.dtype or source.device != target.device:
        raise ValueError("source and target must share dtype and device")
    lead = source.shape[:-2]
    with torch.no_grad():
        s = _prepare(cs.points.detach(), cs.mask, o)
        t = _prepare(ct.points.detach(), ct.mask, o)
        m = match_features(s.features, t.features, s.mask, t.mask, mutual=o.mutual)
        valid = m.valid
        if o.mutual:
            few = valid.sum(-1) < o.min_matches
            if bool(few.any()):
                m1 = match_features(s.features, t.features, s.mask, t.mask, mutual=False)
                valid = torch.where(few[..., None], m1.valid, valid)
                m = m._replace(indices=torch.where(few[..., None], m1.indices, m.indices))
        Y = torch.gather(t.points, -2, m.indices[..., None].expand(*m.indices.shape, 3))
        thr = o.ransac_threshold or 1.5 * o.voxel_size
        # flat batch: estimate_rigid cannot unflatten an empty batch shape (lead == ())
        n = s.points.shape[-2]
        est = estimate_rigid(s.points.reshape(-1, n, 3), Y.reshape(-1, n, 3), threshold=thr,
                             mask=valid.reshape(-1, n), options=replace(o.ransac, threshold=thr))
        est = est._replace(R=est.R.reshape(*lead, 3, 3), t=est.t.reshape(*lead, 3),
                           num_inliers=est.num_inliers.reshape(lead), success=est.success.reshape(lead))
        nm = valid.sum(-1)
        ok = est.success & (nm >= o.min_matches) & cs.finite & ct.finite & (est.num_inliers >= 3)
        eye = torch.eye(3, dtype=source.dtype, device=source.device).expand(*lead, 3, 3)
        R = torch.where(ok[..., None, None], est.R, eye)
        tt = torch.where(ok[..., None], est.t, torch.zeros_like(est.t))
        fit = est.num_inliers.to(source.dtype) / nm.clamp_min(1).to(source.dtype)
    return RegistrationResult(R, tt, to_homogeneous(R, tt), fit, torch.zeros_like(fit), nm, est.num_inliers, ok)


def register(
    source: Tensor,
    target: Tensor,
    source_mask: Tensor | None = None,
    target_mask: Tensor | None = None,
    init: Tensor | None = None,
    options: RegistrationOptions | None = None,
) -> RegistrationResult:
    """Full registration pipeline: global registration (unless ``init`` is given), then ICP refinement.

    Args:
        source: (*B, N, 3) source points, metres.
        target: (*B, M, 3) target points, metres.
        source_mask, target_mask: optional bool masks.
        init: optional (*B, 4, 4) initial ``target_from_source``; skips the global step.
        options: :class:`RegistrationOptions`.

    Returns:
        :class:`RegistrationResult`; ``success`` requires the global step (if run) and the ICP to succeed.

    Example:
        >>> from torch3dv.registration import register, RegistrationOptions
        >>> res = register(src, tgt, options=RegistrationOptions(voxel_size=0.05))  # doctest: +SKIP
        >>> res.transform  # (4, 4) target_from_source  # doctest: +SKIP
    """
    o = options or RegistrationOptions()
    if init is None:
        g = global_registration(source, target, source_mask, target_mask, o)
        T0, ok, nm, ni = g.transform, g.success, g.num_matches, g.num_inliers
        fit, rmse = g.fitness, g.inlier_rmse
    else:
        T0 = init
        ok = torch.ones(source.shape[:-2], dtype=torch.bool, device=source.device)
        nm = ni = torch.zeros(source.shape[:-2], dtype=torch.long, device=source.device)
        fit = rmse = None
    if not o.refine:
        if init is not None:
            raise ValueError("refine=False with an init leaves nothing to do")
        return g
    io = o.icp or ICPOptions(method="point_to_plane", max_correspondence_distance=o.voxel_size, max_iterations=30)
    r = icp(source, target, init=T0, source_mask=source_mask, target_mask=target_mask, options=io)
    return RegistrationResult(r.R, r.t, r.transform, r.fitness, r.inlier_rmse, nm, ni, ok & r.success)
