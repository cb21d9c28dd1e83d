"""Align two point clouds: global registration (FPFH + RANSAC) followed by ICP.

With no arguments a synthetic pair is built in code (a bumpy blob, noisy, independently sampled, moved by a
known rigid transform) and the error against ground truth is printed. With --source/--target PLY files the
target_from_source transform is printed. Aligned clouds are written as PLY to --out, plus a before/after
figure when matplotlib is installed.

Usage:
    python examples/align_pcd.py
    python examples/align_pcd.py --source a.ply --target b.ply --voxel 0.05 --out outputs/align_pcd
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from torch3dv.geometry import rotation_error
from torch3dv.io import read_ply, write_ply
from torch3dv.registration import ICPOptions, RegistrationOptions, blob_pair, register


def _figure(before, after, target, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the figure (pip install matplotlib)")
        return
    fig = plt.figure(figsize=(10, 5))
    for i, (src, title) in enumerate(((before, "before"), (after, "after"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        for pts, c in ((target, "tab:blue"), (src, "tab:orange")):
            p = pts[torch.randperm(pts.shape[0])[:3000]].numpy()
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=0.5, c=c)
        ax.set_title(title)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, help="source PLY (default: synthetic pair)")
    ap.add_argument("--target", type=Path, help="target PLY")
    ap.add_argument("--voxel", type=float, default=None, help="voxel size in metres (default: 3%% of extent)")
    ap.add_argument("--out", type=Path, default=Path("outputs/align_pcd"))
    args = ap.parse_args()
    if (args.source is None) != (args.target is None):
        ap.error("give both --source and --target, or neither")
    gt = None
    if args.source is None:
        sc = blob_pair(batch=1, num_points=8000, max_angle=math.pi, max_translation=0.5, noise=0.002,
                       same_samples=False, seed=0, dtype=torch.float32)
        X, Y, gt = sc.source[0], sc.target[0], (sc.R[0], sc.t[0])
        print(f"synthetic pair: {X.shape[0]} + {Y.shape[0]} points, rotation "
              f"{math.degrees(float(rotation_error(sc.R[0], torch.eye(3, dtype=sc.R.dtype)))):.1f} deg")
    else:
        X, Y = read_ply(args.source).points, read_ply(args.target).points
    ext = float((Y.amax(0) - Y.amin(0)).norm())
    voxel = args.voxel or 0.03 * ext
    opts = RegistrationOptions(voxel_size=voxel, icp=ICPOptions(method="point_to_plane",
                                                               max_correspondence_distance=voxel))
    t0 = time.perf_counter()
    r = register(X, Y, options=opts)
    dt = time.perf_counter() - t0
    torch.set_printoptions(precision=5, sci_mode=False)
    print(f"target_from_source ({dt:.2f} s, success={bool(r.success)}, fitness={float(r.fitness):.3f}, "
          f"inlier rmse={float(r.inlier_rmse) * 1000:.2f} mm, {int(r.num_inliers)}/{int(r.num_matches)} "
          f"RANSAC inliers):\n{r.transform}")
    if gt is not None:
        R, t = gt
        print(f"error vs ground truth: rotation {math.degrees(float(rotation_error(r.R.double(), R.double()))):.4f} "
              f"deg, translation {float((r.t - t).norm()) * 1000:.3f} mm")
    args.out.mkdir(parents=True, exist_ok=True)
    aligned = X @ r.R.T + r.t
    write_ply(args.out / "source_aligned.ply", aligned, colors=torch.tensor([255, 128, 0], dtype=torch.uint8).expand_as(X))
    write_ply(args.out / "target.ply", Y, colors=torch.tensor([0, 90, 255], dtype=torch.uint8).expand_as(Y))
    print(f"wrote {args.out / 'source_aligned.ply'} and {args.out / 'target.ply'}")
    _figure(X, aligned, Y, args.out / "before_after.png")


if __name__ == "__main__":
    main()
