"""Degeneracy handling for the fundamental matrix: a dominant plane (DEGENSAC-style, batched).

When most inliers lie on one plane, a 7-point sample with five or more points on that plane yields an F that
fits the plane and a few off-plane points: it can collect many inliers and still be wrong (Chum, Werner and
Matas, "Two-view geometry estimation unaffected by a dominant plane", CVPR 2005). Their remedy, used here, is
plane-and-parallax: the homography H of the plane and two off-plane correspondences determine F completely,
``F = [e']x H`` with the epipole ``e'`` at the intersection of the lines ``(H x1_a) x x2_a`` and
``(H x1_b) x x2_b``.

Batched procedure, run after the main RANSAC for all problems at once (no per-sample test inside the loop):

1. a homography RANSAC on the inliers of each problem's F finds its dominant plane;
2. where the plane holds at least ``plane_ratio`` of those inliers, pairs of off-plane points (outliers of H)
   give plane-and-parallax hypotheses
   (a RANSAC over those pairs with adaptive termination; plane points fit every such F, so they are not
   scored), then the best hypothesis gets the usual weighted 8-point refits on all points (LO);
3. the result replaces F only if it scores higher on all points, and is then polished (the polish is kept
   unless it loses support). Where there is no dominant plane, or no hypothesis does better, F is unchanged.

Limits: with very few off-plane inliers (say 10 among 100 off-plane outliers) a wrong F can score as high as
the true one on the data; no score-based method can then tell them apart, and this step does not try.
Gradients flow from the returned F through the polish, as in the main estimator.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.linalg.skew import skew
from torch3dv.ransac.estimator import RansacOptions, ransac, required_iterations
from torch3dv.ransac.models import FundamentalModel, HomographyModel
from torch3dv.ransac.residuals import sampson_sq
from torch3dv.ransac.scoring import inlier_mask, inlier_weights, score_residuals

_PARALLAX_STREAM = 1 << 24  # seed offset of the plane-and-parallax RANSAC


class PlaneCheck(NamedTuple):
    """Result of :func:`plane_and_parallax`.

    Attributes:
        F: (M, 3, 3) fundamental matrices (replaced where ``replaced``).
        inliers: (M, N) bool inliers of the returned F.
        dominant_plane: (M,) bool, a plane holds at least ``plane_ratio`` of the inliers of the input F.
        replaced: (M,) bool, a plane-and-parallax F scored higher and replaced the input.
    """

    F: Tensor
    inliers: Tensor
    dominant_plane: Tensor
    replaced: Tensor


def parallax_fundamental(H: Tensor, x1a: Tensor, x2a: Tensor, x1b: Tensor, x2b: Tensor) -> Tensor:
    """F = [e']x H from a homography (..., 3, 3) and two off-plane correspondences (..., 2) each."""
    one = torch.ones_like(x1a[..., :1])

    def line(x1, x2):
        p = (H @ torch.cat([x1, one], -1)[..., None])[..., 0]
        return torch.linalg.cross(p, torch.cat([x2, one], -1), dim=-1)

    e = torch.linalg.cross(line(x1a, x2a), line(x1b, x2b), dim=-1)
    e = e / e.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
    F = skew(e) @ H
    return F / F.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(F.dtype).tiny)[..., None, None]


class PlaneParallaxModel:
    """F = [e']x H for a fixed homography H (ctx) from two off-plane correspondences; Sampson residual.

    data = (x1, x2) pixels; ctx = (H,). Plane points satisfy every such F (``x2 ~ H x1`` makes
    ``x2^T [e']x H x1 = 0``), so hypotheses are scored on the off-plane points only. The refit is the epipole
    that best fits the lines ``(H x1_i) x x2_i`` of the weighted points (smallest eigenvector of a 3x3 matrix).
    """

    sample_size = 2
    max_solutions = 1
    param_shape = (3, 3)
    dof = 4

    def minimal(self, sample, ctx):
        x1, x2 = sample
        F = parallax_fundamental(ctx[0], x1[:, 0], x2[:, 0], x1[:, 1], x2[:, 1])
        return F[:, None], torch.isfinite(F.flatten(1)).all(-1)[:, None]

    def residuals(self, params, data, ctx):
        return sampson_sq(params, data[0], data[1])

    def refit(self, data, weights, ctx):
        H = ctx[0]
        one = torch.ones_like(data[0][..., :1])
        p = torch.cat([data[0], one], -1) @ H.transpose(-1, -2)
        ln = torch.linalg.cross(p, torch.cat([data[1], one], -1), dim=-1)  # (M, N, 3)
        ln = ln / ln.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(ln.dtype).tiny)
        A = (ln * weights[..., None]).transpose(-1, -2) @ ln
        _, vec = torch.linalg.eigh(A)
        e = vec[..., 0]
        F = skew(e) @ H
        F = F / F.flatten(1).norm(dim=-1).clamp_min(torch.finfo(F.dtype).tiny)[:, None, None]
        ok = (weights > 0).sum(-1) >= 2
        return F, ok & torch.isfinite(F.flatten(1)).all(-1)


def plane_and_parallax(
    F: Tensor,
    inliers: Tensor,
    x1: Tensor,
    x2: Tensor,
    valid: Tensor,
    options: RansacOptions,
    seeds: Tensor,
    refit_weights: Tensor | None = None,
    plane_ratio: float = 0.5,
) -> PlaneCheck:
    """Checks each F (M, 3, 3) against a dominant plane and re-estimates it by plane-and-parallax.

    Args:
        F: fundamental matrices from the main RANSAC (M, 3, 3), pixels.
        inliers: (M, N) their inliers.
        x1, x2: pixels (M, N, 2). valid: (M, N) real points.
        options: the main loop's options (threshold in pixels, score, LO iterations, confidence, seed); the
            plane-and-parallax RANSAC terminates adaptively with the same confidence.
        seeds: (M,) int64 per-problem seeds.
        refit_weights: optional (M, N) confidences for the refits and the polish.
        plane_ratio: a plane is dominant when its homography explains this fraction of F's inliers.
    """
    M, N = valid.shape
    device, dtype = x1.device, x1.dtype
    th = torch.full((M,), options.threshold, dtype=dtype, device=device)
    model = FundamentalModel()
    with torch.no_grad():
        n_f = inliers.sum(-1)
        # a dominant plane holds >= plane_ratio of the inliers: enough 4-point samples to find one with the
        # requested confidence (a few hundred), not the budget for finding a small plane
        h_iters = int(required_iterations(torch.tensor(plane_ratio), 4, options.confidence).ceil().clamp_min(8))
        h_opts = replace(options, threshold=2.0 * options.threshold, final_refine=False, lo_inner_samples=None,
                         min_iterations=min(options.min_iterations, h_iters), max_iterations=h_iters)
        hres = ransac(HomographyModel(), (x1, x2), (), valid & inliers, h_opts, seeds=seeds)
        off = valid & ~hres.inliers
        dominant = hres.success & (hres.inliers.sum(-1) >= plane_ratio * n_f) & (n_f >= 8) & (off.sum(-1) >= 2)
    idx = dominant.nonzero().squeeze(-1)
    replaced = torch.zeros(M, dtype=torch.bool, device=device)
    if idx.numel() == 0:
        return PlaneCheck(F, inliers, dominant, replaced)

    a1, a2, v = x1[idx], x2[idx], valid[idx]
    with torch.no_grad():
        p_opts = replace(options, final_refine=False, preemptive_points=0, lo_inner_samples=None,
                         seed=options.seed + _PARALLAX_STREAM)
        pp = ransac(PlaneParallaxModel(), (a1, a2), (hres.params[idx],), off[idx], p_opts,
                    seeds=seeds[idx] + _PARALLAX_STREAM)
        cand = pp.params
        r2 = sampson_sq(cand[:, None], a1, a2)[:, 0]
        best_sc = score_residuals(r2, v, th[idx], options.score, model.dof)
        best_sc = torch.where(pp.success, best_sc, torch.full_like(best_sc, -torch.inf))
        cur_sc = score_residuals(sampson_sq(F[idx].detach()[:, None], a1, a2)[:, 0], v, th[idx], options.score,
                                 model.dof)
        rw = None if refit_weights is None else refit_weights[idx].detach()
        for _ in range(options.local_optimization):  # LO with all points: the general 8-point refit
            w = inlier_weights(r2, v, th[idx], options.score, model.dof)
            if rw is not None:
                w = w * rw
            ref, rok = model.refit((a1, a2), w, ())
            rok = rok & torch.isfinite(ref.flatten(1)).all(-1)
            rr2 = sampson_sq(ref[:, None], a1, a2)[:, 0]
            rs = score_residuals(rr2, v, th[idx], options.score, model.dof)
            take = rok & (rs > best_sc)
            cand = torch.where(take[:, None, None], ref, cand)
            best_sc = torch.where(take, rs, best_sc)
            r2 = torch.where(take[:, None], rr2, r2)
        better = best_sc > cur_sc
    if not bool(better.any()):
        return PlaneCheck(F, inliers, dominant, replaced)
    sel = idx[better]
    b1, b2, bv = a1[better], a2[better], v[better]
    w = inlier_mask(r2[better], bv, th[sel]).to(dtype)
    if refit_weights is not None:
        w = w * refit_weights[sel]
    Fn = cand[better]
    with torch.no_grad():
        keep_r2 = r2[better]
    if options.final_refine:
        pol = model.polish(Fn, (b1, b2), w, ())
        pol = pol / pol.flatten(1).norm(dim=-1).clamp_min(torch.finfo(dtype).tiny)[:, None, None]
        with torch.no_grad():
            pr2 = sampson_sq(pol.detach()[:, None], b1, b2)[:, 0]
            ps = score_residuals(pr2, bv, th[sel], options.score, model.dof)
            # as in the main loop: keep the polish unless it loses a noticeable part of the support
            take = torch.isfinite(pol.detach().flatten(1)).all(-1) & (ps >= best_sc[better] * (1 - 1e-3) - 1e-9)
        Fn = torch.where(take[:, None, None], pol, Fn)
        keep_r2 = torch.where(take[:, None], pr2, keep_r2)
    new_inl = inlier_mask(keep_r2, bv, th[sel])
    replaced = replaced.index_fill(0, sel, True)
    F = F.index_copy(0, sel, Fn.to(F.dtype))
    inliers = inliers.index_copy(0, sel, new_inl)
    return PlaneCheck(F, inliers, dominant, replaced)
