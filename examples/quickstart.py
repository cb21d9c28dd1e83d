"""Quickstart: batch-solve synthetic problems that torch3dv generates, and compare with ground truth.

Runs with no arguments on any machine (CPU by default):

    python examples/quickstart.py [--batch 1000] [--noise 0.5] [--device cuda]

It solves, in one batched call each: relative pose (8-point essential + cheirality), fundamental matrices,
homographies, absolute pose (EPnP + Levenberg-Marquardt refinement), 3D-3D similarity alignment and multi-view
triangulation, then prints median errors against the ground truth of the synthetic scenes; finally it runs the
batched robust relative-pose estimator on problems with 30% outliers.
"""

from __future__ import annotations

import argparse
import time

import torch

import torch3dv
from torch3dv.camera import pixels_to_normalized
from torch3dv.geometry import projection_matrix, rotation_error, translation_direction_error
from torch3dv.solvers.essential import essential_8point, recover_pose
from torch3dv.solvers.fundamental import fundamental_8point, sampson_distance
from torch3dv.solvers.homography import homography_dlt, transfer_error
from torch3dv.solvers.pnp import epnp, refine_pnp
from torch3dv.solvers.rigid import umeyama
from torch3dv.solvers.triangulation import triangulate_multiview
from torch3dv.testing import absolute_pose_scene, multi_view_scene, rigid_scene, two_view_scene


def deg(x: torch.Tensor) -> float:
    return float(torch.rad2deg(x).median())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1000, help="problems per batch")
    p.add_argument("--points", type=int, default=100, help="correspondences per problem")
    p.add_argument("--noise", type=float, default=0.5, help="pixel noise std-dev")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    a = p.parse_args()
    dt = getattr(torch, a.dtype)
    B, N = a.batch, a.points
    print(f"torch3dv quickstart: {B} problems x {N} points, {a.noise} px noise, {a.device}/{a.dtype}\n")

    t0 = time.perf_counter()
    s = two_view_scene(B, N, noise_px=a.noise, seed=0, dtype=dt, device=a.device)
    x1n, x2n = pixels_to_normalized(s.x1, s.K1), pixels_to_normalized(s.x2, s.K2)
    pose = recover_pose(essential_8point(x1n, x2n).E, x1n, x2n)
    print(f"relative pose  (8-pt E + cheirality): rotation err {deg(rotation_error(pose.R, s.R)):.3f} deg, "
          f"translation dir err {deg(translation_direction_error(pose.t, s.t)):.3f} deg, "
          f"success {pose.success.float().mean():.1%}")

    F = fundamental_8point(s.x1, s.x2).F
    err = sampson_distance(F, s.x1_clean, s.x2_clean).sqrt().median()
    print(f"fundamental    (normalised 8-pt):      median Sampson distance to clean points {err:.3f} px")

    sp = two_view_scene(B, N, noise_px=a.noise, planar=True, seed=1, dtype=dt, device=a.device)
    H = homography_dlt(sp.x1, sp.x2).H
    err = transfer_error(H, sp.x1_clean, sp.x2_clean).sqrt().median()
    print(f"homography     (normalised DLT):       median transfer error to clean points {err:.3f} px")

    sa = absolute_pose_scene(B, N, noise_px=a.noise, seed=2, dtype=dt, device=a.device)
    init = epnp(sa.x, sa.X, sa.K)
    ref = refine_pnp(init.R, init.t, sa.x, sa.X, sa.K)
    print(f"absolute pose  (EPnP + LM):            rotation err {deg(rotation_error(ref.R, sa.R)):.4f} deg, "
          f"position err {float((ref.t - sa.t).norm(dim=-1).median()) * 1000:.2f} mm")

    sr = rigid_scene(B, N, noise=0.005, with_scale=True, seed=3, dtype=dt, device=a.device)
    sim = umeyama(sr.X, sr.Y)
    print(f"similarity     (Umeyama):              rotation err {deg(rotation_error(sim.R, sr.R)):.4f} deg, "
          f"scale err {float(((sim.s - sr.s).abs() / sr.s).median()):.2e}")

    sm = multi_view_scene(B // 10 or 1, 5, N, noise_px=a.noise, seed=4, dtype=dt, device=a.device)
    tri = triangulate_multiview(projection_matrix(sm.K, sm.R, sm.t), sm.x, sm.visible)
    err = (tri.X - sm.X).norm(dim=-1)[tri.success].median()
    print(f"triangulation  (5-view DLT):           median 3D error {float(err) * 1000:.2f} mm on a 1 m object")
    print(f"\nall of the above in {time.perf_counter() - t0:.2f} s\n")

    t0 = time.perf_counter()
    Br = min(B, 256)
    so = two_view_scene(Br, 4 * N, noise_px=a.noise, outlier_ratio=0.3, seed=5, dtype=dt, device=a.device)
    est = torch3dv.estimate_relative_pose(so.x1, so.x2, so.K1, so.K2, threshold=1.0)
    sec = time.perf_counter() - t0
    tp = (est.inliers & so.inliers).sum(-1).double()
    f1 = (2 * tp / (est.inliers.sum(-1) + so.inliers.sum(-1)).double()).median()
    print(f"robust relative pose (batched 5-point RANSAC, 30% outliers, {4 * N} matches each): rotation err "
          f"{deg(rotation_error(est.R, so.R)):.3f} deg, translation dir err "
          f"{deg(translation_direction_error(est.t, so.t)):.3f} deg, inlier F1 {float(f1):.3f}, "
          f"success {est.success.float().mean():.1%}, {Br} pairs in {sec:.1f} s")


if __name__ == "__main__":
    main()
