"""Real two-view pairs with ground-truth relative pose for the benchmarks (test-only SIFT matcher, cached).

Data sets live in ``../shared/data`` (see its README.md); they are read in place and never copied:

* ``strecha_fountain-P11``: 11 views 3072x2048; ``gt_dense_cameras/NNNN.jpg.camera`` holds K (lines 1-3),
  R (lines 5-7) and the centre C (line 8) with x ~ K R^T (X - C), i.e. ``cam_from_world = (R^T, -R^T C)``.
* ``dtu_scan24_subset``: 15 views 1600x1200; ``cameras_sphere.npz`` ``world_mat_i`` = K [R | t] (4x4), split
  with ``cv2.decomposeProjectionMatrix`` (K, ``cam_from_world`` rotation, homogeneous centre).

Images are downscaled to ``width`` pixels with pixel centres at integer coordinates (README, "Conventions"):
``x_small = (x + 0.5) * s - 0.5``, which is ``K_small = S @ K``. Correspondences are OpenCV SIFT with a 0.8
ratio test between every pair of views at most ``max_gap`` apart in the capture order; they are cached in
``benchmarks/results/cache/`` so that reruns skip detection and matching. Cameras are always re-read, so a
fix to the ground truth never needs the cache to be cleared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CACHE_DIR = Path(__file__).resolve().parent / "results" / "cache"

DATASETS = {"fountain": "strecha_fountain-P11", "dtu": "dtu_scan24_subset"}


@dataclass(frozen=True)
class View:
    """One downscaled image's camera: K (3, 3) pixels, ``cam_from_world`` (R (3, 3), t (3,))."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray


@dataclass(frozen=True)
class RealPairs:
    """Matched view pairs with ground truth.

    Attributes:
        name: data set key ("fountain", "dtu").
        pairs: (P, 2) view indices (i, j).
        x1, x2: per pair, matched pixels (n_p, 2) in view i and view j (downscaled images).
        K1, K2: (P, 3, 3) intrinsics of view i and j.
        R, t: (P, 3, 3), (P, 3) ground-truth ``cam2_from_cam1`` (t in the data set's world units).
        image_size: (width, height) of the downscaled images.
    """

    name: str
    pairs: np.ndarray
    x1: list[np.ndarray]
    x2: list[np.ndarray]
    K1: np.ndarray
    K2: np.ndarray
    R: np.ndarray
    t: np.ndarray
    image_size: tuple[int, int]


def dataset_dir(name: str) -> Path:
    return DATA_ROOT / DATASETS[name]


def available(name: str) -> bool:
    return dataset_dir(name).is_dir()


def _downscale(K: np.ndarray, s: float) -> np.ndarray:
    S = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1.0]])
    return S @ K


def _fountain_views(root: Path) -> tuple[list[Path], list[View], tuple[int, int]]:
    images = sorted((root / "images").glob("*.jpg"))
    views = []
    for img in images:
        lines = (root / "gt_dense_cameras" / f"{img.name}.camera").read_text().split("\n")
        nums = [[float(v) for v in line.split()] for line in lines if line.strip()]
        K, Rw, C = np.array(nums[0:3]), np.array(nums[4:7]), np.array(nums[7])
        R = Rw.T  # x ~ K R^T (X - C)
        views.append(View(K, R, -R @ C))
    width, height = (int(v) for v in nums[8])
    return images, views, (width, height)


def _dtu_views(root: Path) -> tuple[list[Path], list[View], tuple[int, int]]:
    import cv2

    images = sorted((root / "images").glob("*.png"))
    cams = np.load(root / "cameras_sphere.npz")
    views = []
    for i, _ in enumerate(images):
        K, R, C = cv2.decomposeProjectionMatrix(cams[f"world_mat_{i}"][:3].astype(np.float64))[:3]
        K = K / K[2, 2]
        C = C[:3, 0] / C[3, 0]
        views.append(View(K, R, -R @ C))
    height, width = cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE).shape
    return images, views, (width, height)


def _views(name: str):
    return {"fountain": _fountain_views, "dtu": _dtu_views}[name](dataset_dir(name))


def _sift(images: list[Path], scale: float, nfeatures: int):
    import cv2

    sift = cv2.SIFT_create(nfeatures=nfeatures)
    feats = []
    for path in images:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        kp, desc = sift.detectAndCompute(img, None)
        feats.append((np.float64([k.pt for k in kp]), desc))
    return feats


def _match(f1, f2, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    matches = cv2.BFMatcher().knnMatch(f1[1], f2[1], k=2)
    good = [m for m, *rest in matches if rest and m.distance < ratio * rest[0].distance]
    return f1[0][[m.queryIdx for m in good]], f2[0][[m.trainIdx for m in good]]


def _pair_list(num_views: int, max_gap: int) -> np.ndarray:
    return np.array([(i, j) for i in range(num_views) for j in range(i + 1, min(i + max_gap + 1, num_views))])


def _read_cache(path: Path) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    if not path.exists():
        return {}
    z = np.load(path)
    split = np.cumsum(z["counts"])[:-1]
    return {(int(i), int(j)): (a, b) for (i, j), a, b in zip(z["pairs"], np.split(z["x1"], split),
                                                            np.split(z["x2"], split), strict=True)}


def _write_cache(path: Path, cache: dict) -> None:
    keys = sorted(cache)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, pairs=np.array(keys), counts=np.array([len(cache[k][0]) for k in keys]),
                        x1=np.concatenate([cache[k][0] for k in keys]),
                        x2=np.concatenate([cache[k][1] for k in keys]))


def _cached_matches(name: str, images: list[Path], scale: float, pairs: np.ndarray, nfeatures: int,
                    ratio: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Matches of ``pairs``; the cache file keeps every pair matched so far with these settings."""
    path = CACHE_DIR / f"{name}_scale{scale:.4f}_sift{nfeatures}_ratio{ratio}.npz"
    cache = _read_cache(path)
    missing = [(int(i), int(j)) for i, j in pairs if (i, j) not in cache]
    if missing:
        print(f"  matching {len(missing)} pairs of {name} (cached in {path})", flush=True)
        feats = _sift(images, scale, nfeatures)
        cache.update({(i, j): _match(feats[i], feats[j], ratio) for i, j in missing})
        _write_cache(path, cache)
    return [cache[i, j][0] for i, j in pairs], [cache[i, j][1] for i, j in pairs]


def load_pairs(name: str, width: int = 1024, max_gap: int = 3, nfeatures: int = 4000,
               ratio: float = 0.8) -> RealPairs:
    """All pairs of views at most ``max_gap`` apart in data set ``name``, matched at ``width`` pixels wide."""
    images, views, (w, h) = _views(name)
    scale = width / w
    pairs = _pair_list(len(images), max_gap)
    x1, x2 = _cached_matches(name, images, scale, pairs, nfeatures, ratio)
    Ks = np.stack([_downscale(v.K, scale) for v in views])
    R = np.stack([views[j].R @ views[i].R.T for i, j in pairs])
    t = np.stack([views[j].t - views[j].R @ views[i].R.T @ views[i].t for i, j in pairs])
    size = (round(w * scale), round(h * scale))
    return RealPairs(name, pairs, x1, x2, Ks[pairs[:, 0]], Ks[pairs[:, 1]], R, t, size)
