"""Find the relative pose of two views from matches, and draw the cameras and the 3D points.

Runs with no arguments on a rendered textured scene with known geometry and prints the errors:

    python examples/find_pose.py [--solver essential|fundamental|homography|pnp|procrustes]
                                 [--matcher sift|disk-lightglue|aliked-lightglue|loftr|efficientloftr|roma]
                                 [--weights DIR] [--out pose.png]

and on your own images (pinhole intrinsics in pixels of the files as they are; depth maps as .npy arrays (H, W) in
metres, 0 or non-finite where unknown, needed by ``pnp`` (image 0) and ``procrustes`` (both)):

    python examples/find_pose.py --image0 a.png --image1 b.png --K0 fx fy cx cy [--K1 fx fy cx cy]
                                 [--depth0 a.npy] [--depth1 b.npy] [--solver ...]

``essential`` / ``fundamental`` / ``homography`` recover ``cam1_from_cam0`` up to scale and triangulate the
inliers; ``pnp`` localises camera 1 against image 0's depth map (metric); ``procrustes`` aligns the
back-projected depths of both images (metric). ``homography`` renders a planar scene.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from torch3dv.features import MATCHERS, build_matcher, weights_available
from torch3dv.geometry import camera_center, rotation_error, translation_direction_error
from torch3dv.pipelines import localize_with_depth, register_with_depths, relative_pose_from_matches
from torch3dv.testing.render import render_pair

SOLVERS = ("essential", "fundamental", "homography", "pnp", "procrustes")


def figure(path: str, R: torch.Tensor, t: torch.Tensor, X: np.ndarray, Rgt: torch.Tensor | None = None,
           tgt: torch.Tensor | None = None) -> bool:
    """Top view (x-z plane of camera 0) of the points and both cameras: estimated (blue) and true (green, when
    known)."""
    C1 = camera_center(R, t).numpy()
    z1 = R[2].numpy()  # optical axis of camera 1 in camera-0 coordinates
    cams = [(np.zeros(3), np.array([0, 0, 1.0]), "k", (0, 0, 0), "camera 0"), (C1, z1, "b", (255, 0, 0), "camera 1")]
    if Rgt is not None:
        cams.append((camera_center(Rgt, tgt).numpy(), Rgt[2].numpy(), "g", (0, 160, 0), "camera 1 (true)"))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 6))
        ax.scatter(X[:, 0], X[:, 2], s=2, c="grey", label="points")
        for C, d, col, _, lab in cams:
            ax.plot([C[0], C[0] + 0.5 * d[0]], [C[2], C[2] + 0.5 * d[2]], col + "-", label=lab)
            ax.plot(C[0], C[2], col + "o")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("z (m)")
        ax.axis("equal")
        ax.legend()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True
    except ImportError:
        pass
    try:
        import cv2
    except ImportError:
        return False
    S = 600
    pts = np.concatenate([X[:, [0, 2]].reshape(-1, 2)] + [c[0][None, [0, 2]] for c in cams], 0)
    lo, hi = pts.min(0) - 0.5, pts.max(0) + 0.5
    scale = (S - 20) / float((hi - lo).max())

    def px(p):
        return int(10 + (p[0] - lo[0]) * scale), int(S - 10 - (p[1] - lo[1]) * scale)

    img = np.full((S, S, 3), 255, np.uint8)
    for p in X[:, [0, 2]]:
        cv2.circle(img, px(p), 1, (128, 128, 128), -1)
    for C, d, _, col, _ in cams:
        cv2.circle(img, px(C[[0, 2]]), 4, col, -1)
        cv2.line(img, px(C[[0, 2]]), px((C + 0.5 * d)[[0, 2]]), col, 2)
    cv2.putText(img, "top view x-z: black cam0, blue cam1 est., green cam1 true", (5, 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return bool(cv2.imwrite(path, img))


def _intrinsics(v: list[float] | None, flag: str) -> torch.Tensor:
    if v is None:
        raise SystemExit(f"{flag} fx fy cx cy is needed with --image0/--image1")
    fx, fy, cx, cy = v
    return torch.tensor([[[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]])


def _depth(path: str | None, image: torch.Tensor, flag: str) -> torch.Tensor:
    if path is None:
        raise SystemExit(f"this solver needs {flag} (a .npy depth map in metres)")
    d = torch.from_numpy(np.load(path)).double()
    if d.shape != image.shape[-2:]:
        raise SystemExit(f"{flag} has shape {tuple(d.shape)}, the image {tuple(image.shape[-2:])}")
    return torch.where(torch.isfinite(d), d, torch.zeros_like(d))[None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", choices=SOLVERS, default="essential")
    p.add_argument("--matcher", choices=MATCHERS, default=None, help="default: disk-lightglue if weights found")
    p.add_argument("--weights", default=None)
    p.add_argument("--max-keypoints", type=int, default=1024)
    p.add_argument("--size", type=int, nargs=2, default=(320, 240), help="rendered scene size (default data)")
    p.add_argument("--seed", type=int, default=0, help="rendered scene seed (default data)")
    p.add_argument("--image0", help="first image file (with --image1, --K0)")
    p.add_argument("--image1", help="second image file")
    p.add_argument("--K0", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), help="intrinsics of image 0")
    p.add_argument("--K1", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), help="of image 1 (default K0)")
    p.add_argument("--depth0", help=".npy depth of image 0, metres (pnp, procrustes)")
    p.add_argument("--depth1", help=".npy depth of image 1, metres (procrustes)")
    p.add_argument("--out", default="pose.png")
    a = p.parse_args()
    if (a.image0 is None) != (a.image1 is None):
        raise SystemExit("pass both --image0 and --image1, or neither")
    name = a.matcher or ("disk-lightglue" if weights_available("disk-lightglue", "packaged") else "sift")
    weights = a.weights if (a.weights or name == "sift") else ("packaged" if weights_available(name, "packaged")
                                                                else None)
    t0 = time.perf_counter()
    if a.image0:
        from match_views import load_image  # the sibling example's reader (OpenCV or Pillow)

        im0, im1 = load_image(a.image0), load_image(a.image1)
        K0 = _intrinsics(a.K0, "--K0")
        K1 = _intrinsics(a.K1, "--K1") if a.K1 is not None else K0
        depth0 = _depth(a.depth0, im0, "--depth0") if a.solver in ("pnp", "procrustes") else None
        depth1 = _depth(a.depth1, im1, "--depth1") if a.solver == "procrustes" else None
        gt = None
        print(f"images: {a.image0} {tuple(im0.shape[-2:])}, {a.image1} {tuple(im1.shape[-2:])}")
    else:
        s = render_pair(batch=1, image_size=tuple(a.size), planar=a.solver == "homography", seed=a.seed)
        im0, im1, K0, K1, depth0, depth1, gt = s.image0, s.image1, s.K0, s.K1, s.depth0, s.depth1, (s.R, s.t)
        print(f"rendered {'planar' if a.solver == 'homography' else 'textured'} scene {tuple(a.size)}, "
              f"baseline {float(s.t.norm()):.2f} m ({time.perf_counter() - t0:.1f} s)")
    m = build_matcher(name, weights, max_keypoints=a.max_keypoints)(im0, im1)
    print(f"{name}: {int(m.num_matches[0])} matches ({time.perf_counter() - t0:.1f} s)")
    m = m._replace(kpts0=m.kpts0.to(K0.dtype), kpts1=m.kpts1.to(K0.dtype))
    if a.solver in ("essential", "fundamental", "homography"):
        g = relative_pose_from_matches(m, K0, K1, method=a.solver)
        R, t, ok = g.R, g.t, g.success
        X = g.X[g.points_mask].numpy()  # in units of the baseline
        metric = False
    elif a.solver == "pnp":
        loc = localize_with_depth(m, depth0.to(K0.dtype), K0, K1)
        R, t, ok, X, metric = loc.R, loc.t, loc.success, loc.X[loc.inliers].numpy(), True
    else:
        reg = register_with_depths(m, depth0.to(K0.dtype), depth1.to(K0.dtype), K0, K1)
        R, t, ok, X, metric = reg.R, reg.t, reg.success, reg.X0[reg.inliers].numpy(), True
    np.set_printoptions(precision=4, suppress=True)
    print(f"\n{a.solver}: success={bool(ok[0])}  ({time.perf_counter() - t0:.1f} s total)")
    print("cam1_from_cam0 R =\n", R[0].numpy())
    print("t =", t[0].numpy(), "(metres)" if metric else "(unit direction)")
    if gt is not None:
        Rgt, tgt = gt
        print(f"rotation error   {math.degrees(float(rotation_error(R, Rgt)[0])):.3f} deg")
        print(f"t direction err  {math.degrees(float(translation_direction_error(t, tgt)[0])):.3f} deg")
        if metric:
            print(f"t error          {100 * float((t - tgt).norm()):.2f} cm")
    if a.solver == "homography":
        print("(a plane has two pose solutions that explain it equally well; the pose may be the twin)")
    if gt is None:
        drawn = figure(a.out, R[0], t[0], X)
    else:
        scale = 1.0 if metric else float(gt[1].norm())  # unit baseline -> metres, for the figure only
        drawn = figure(a.out, R[0], t[0] * scale, X * scale, gt[0][0], gt[1][0])
    if drawn:
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
