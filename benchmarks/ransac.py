"""Robust estimation: torch3dv's batched RANSAC vs OpenCV, PoseLib, pycolmap and kornia, in one run.

Workloads:

* synthetic, ground truth known, B problems x N correspondences at each ``--outliers`` ratio, 0.5 px noise
  (1 cm for 3D points): ``relpose`` (calibrated relative pose), ``fundamental``, ``homography`` (planar
  scenes), ``pnp`` (absolute pose) and ``rigid`` (3D-3D, no scale);
* real, relative pose with ground truth on every pair of views at most ``--max-gap`` (3) apart in capture
  order of ``fountain`` (Strecha fountain-P11) and ``dtu`` (DTU scan24 subset), images at 1024 px wide,
  OpenCV SIFT + 0.8 ratio test (cached in ``benchmarks/results/cache``); skipped with a note when
  ``../shared/data`` is absent.

torch3dv solves all problems of a workload in one batched call (real pairs padded, with a mask); the peers run
a Python loop over the first ``--peer-problems`` problems (kornia over ``--kornia-problems``), OpenCV on one
thread, pycolmap with its default single thread, kornia with ``--threads`` torch threads. Everyone gets the
same inputs (float64 copies of the ``--dtype`` tensors), the same inlier threshold (``THRESHOLDS``; each
library applies it to its own residual: Sampson vs point-to-line distance for F, etc.), confidence 0.9999
and at most 10,000 hypotheses (``MAX_ITERS``, torch3dv's default) where the API has these settings.
Accuracy is reported on the problems the peers solved, for everyone, and for torch3dv on all B problems as
well ("torch3dv (all)").

Columns: ``per_s`` problems per second (torch3dv: B over the second of two identical batched calls, the steady
state; the peers' loops reuse their memory after the first problem too); ``cold_per_s`` torch3dv's first
full-size call, which also pays for faulting in fresh memory pages (a large share on a CPU); ``fail`` problems without a
result; ``R_err_deg`` / ``t_err_deg`` median rotation / translation-direction error and ``AUC@k`` the area
under the recall curve of max(R, t) error up to k degrees (failures count as 180 degrees); ``t_err_m`` median
translation error (PnP, rigid); ``px_err`` median over problems of the per-problem median error on 100
held-out noise-free correspondences drawn from the ground-truth geometry (F: Sampson distance, H: transfer
error in image 2; a failure counts as infinite); ``F1`` median inlier F1 against the ground-truth inlier mask
(real pairs: the matches within the threshold of the ground-truth F); ``peak_MB`` torch3dv's peak
resident-memory increase during its call (see ``PeakMemory``).

Usage:
    python benchmarks/ransac.py                         # every workload, 30% and 60% outliers
    python benchmarks/ransac.py --quick                 # small smoke run (< 2 minutes)
    python benchmarks/ransac.py --workloads fundamental homography --outliers 0.5 --problems 2000
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _realdata
from common import print_table, write_json

import torch3dv
from torch3dv.camera.pinhole import project_pinhole, unproject_pinhole
from torch3dv.geometry import pose_auc, rotation_error, translation_direction_error
from torch3dv.linalg.skew import skew
from torch3dv.testing import absolute_pose_scene, rigid_scene, two_view_scene

SYNTHETIC = ["relpose", "fundamental", "homography", "pnp", "rigid"]
REAL = ["fountain", "dtu"]
# inlier thresholds: pixels, rigid metres
THRESHOLDS = {"relpose": 1.0, "fundamental": 1.0, "homography": 2.0, "pnp": 2.0, "rigid": 0.05}
CONFIDENCE = 0.9999
MAX_ITERS = 10000
NOISE_PX = 0.5
RIGID_NOISE_M = 0.01
HOLDOUT = 100
IMAGE_SIZE = (640, 480)  # two_view_scene / absolute_pose_scene default
POINT_KEYS = ("x1", "x2", "x", "X", "Y")
COLUMNS = ["workload", "impl", "problems", "per_s", "cold_per_s", "fail", "R_err_deg", "t_err_deg", "AUC@5", "AUC@10",
           "AUC@20", "t_err_m", "px_err", "F1", "peak_MB"]


# ------------------------------------------------------------------------------------------ tasks and results


@dataclass
class Task:
    """One workload: batched (padded) inputs for torch3dv, per-problem numpy views for the peers, and truth.

    Attributes:
        workload: table label. kind: "relpose", "fundamental", "homography", "pnp" or "rigid".
        inputs: torch3dv's arguments, batched (B, N, d) / (B, 3, 3), plus an optional "mask" (B, N).
        gt: ground truth: "R", "t" (poses), "F" / "H" with "hold1", "hold2" (held-out clean pairs), "inliers".
        counts: (B,) valid rows per problem. image_size: (width, height) for the peers' camera models.
    """

    workload: str
    kind: str
    threshold: float
    inputs: dict[str, torch.Tensor]
    gt: dict[str, torch.Tensor]
    counts: np.ndarray
    image_size: tuple[int, int] = IMAGE_SIZE
    _np: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self):
        # converted once up front, so that no peer's timing pays for it
        self._np = {k: v.detach().cpu().double().numpy() for k, v in self.inputs.items() if k != "mask"}

    @property
    def B(self) -> int:
        return len(self.counts)

    @property
    def N(self) -> int:
        return int(self.gt["inliers"].shape[-1])

    def get(self, key: str, i: int) -> np.ndarray:
        """Problem i's input ``key`` as float64 numpy, without padding rows."""
        a = self._np[key][i]
        return np.ascontiguousarray(a[: self.counts[i]]) if key in POINT_KEYS else a


@dataclass
class Solution:
    """Estimates of the first P problems of a task: model tensors (float64, CPU), inliers (P, N), ok (P,)."""

    model: dict[str, torch.Tensor]
    inliers: torch.Tensor
    ok: torch.Tensor
    seconds: float
    peak_mb: float | None = None
    cold_seconds: float | None = None

    def head(self, P: int) -> Solution:
        model = {k: v[:P] for k, v in self.model.items()}
        return Solution(model, self.inliers[:P], self.ok[:P], self.seconds, self.peak_mb, self.cold_seconds)


@dataclass
class Peer:
    """A per-problem estimator: ``fn(i)`` returns the model's arrays and "inliers" (bool mask), or None."""

    name: str
    fn: Callable[[int], dict | None]
    limit: int | None = None


MODEL_SHAPES = {"relpose": {"R": (3, 3), "t": (3,)}, "pnp": {"R": (3, 3), "t": (3,)},
                "rigid": {"R": (3, 3), "t": (3,)}, "fundamental": {"F": (3, 3)}, "homography": {"H": (3, 3)}}


# ------------------------------------------------------------------------------------------ metrics


def f1(pred: torch.Tensor, gt: torch.Tensor) -> float:
    pred, gt = pred.bool().cpu(), gt.bool().cpu()
    tp = (pred & gt).sum(-1).double()
    prec = tp / pred.sum(-1).clamp_min(1)
    rec = tp / gt.sum(-1).clamp_min(1)
    return float((2 * prec * rec / (prec + rec).clamp_min(1e-12)).median())


def pose_metrics(R, t, R_gt, t_gt, ok) -> dict:
    er = torch.rad2deg(rotation_error(R.double().cpu(), R_gt.double().cpu()))
    et = torch.rad2deg(translation_direction_error(t.double().cpu(), t_gt.double().cpu()))
    er = torch.where(ok.cpu(), er, torch.full_like(er, 180.0))
    et = torch.where(ok.cpu(), et, torch.full_like(et, 180.0))
    auc = pose_auc(torch.maximum(er, et), [5, 10, 20])
    return {"R_err_deg": float(er.median()), "t_err_deg": float(et.median()),
            "AUC@5": 100 * auc[0], "AUC@10": 100 * auc[1], "AUC@20": 100 * auc[2]}


def _homogeneous(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def sampson_px(F: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Sampson distance (pixels) of pairs x1, x2 (P, M, 2) under F (P, 3, 3), x2^T F x1 = 0."""
    h1, h2 = _homogeneous(x1), _homogeneous(x2)
    Fx1, Ftx2 = h1 @ F.mT, h2 @ F
    den = Fx1[..., 0] ** 2 + Fx1[..., 1] ** 2 + Ftx2[..., 0] ** 2 + Ftx2[..., 1] ** 2
    return (h2 * Fx1).sum(-1).abs() / den.sqrt().clamp_min(1e-300)


def transfer_px(H: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """One-way transfer error |x2 - H x1| (pixels), x (P, M, 2), H (P, 3, 3)."""
    y = _homogeneous(x1) @ H.mT
    return (y[..., :2] / y[..., 2:] - x2).norm(dim=-1)


def _median_px(err: torch.Tensor, ok: torch.Tensor) -> float:
    per_problem = err.nan_to_num(nan=float("inf")).median(dim=-1).values
    return float(torch.where(ok, per_problem, torch.full_like(per_problem, float("inf"))).median())


def evaluate(task: Task, sol: Solution) -> dict:
    """The table's accuracy columns for the first P = len(sol.ok) problems of ``task``."""
    P = len(sol.ok)
    gt = {k: v[:P].cpu().double() if v.is_floating_point() else v[:P].cpu() for k, v in task.gt.items()}
    out = {"problems": P, "fail": int((~sol.ok).sum()), "F1": f1(sol.inliers, gt["inliers"])}
    if "R" in sol.model:
        out.update(pose_metrics(sol.model["R"], sol.model["t"], gt["R"], gt["t"], sol.ok))
    if task.kind in ("pnp", "rigid"):
        et = (sol.model["t"] - gt["t"]).norm(dim=-1)
        out["t_err_m"] = float(torch.where(sol.ok, et, torch.full_like(et, float("inf"))).median())
    if task.kind == "fundamental":
        out["px_err"] = _median_px(sampson_px(sol.model["F"], gt["hold1"], gt["hold2"]), sol.ok)
    if task.kind == "homography":
        out["px_err"] = _median_px(transfer_px(sol.model["H"], gt["hold1"], gt["hold2"]), sol.ok)
    return out


# ------------------------------------------------------------------------------------------ peak memory


def _status_kb(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+)", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


class PeakMemory:
    """Peak memory increase (MiB) during a ``with`` block; ``mb`` is None where it cannot be measured.

    CPU: frees Python garbage and glibc's cached heap (``malloc_trim``) so that the block's allocations fault
    fresh pages, resets ``VmHWM`` through ``/proc/self/clear_refs`` (Linux >= 4.0), and reports ``VmHWM``
    after the block minus ``VmRSS`` before it. CUDA: ``max_memory_allocated`` minus ``memory_allocated``
    before.
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.mb = None

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.base = _status_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
        except (OSError, AttributeError):
            self.base = None
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.base is not None:
            self.mb = (_status_kb("VmHWM") - self.base) / 1024
        return False


# ------------------------------------------------------------------------------------------ torch3dv


def _t3d_relpose(inp, thr):
    e = torch3dv.estimate_relative_pose(inp["x1"], inp["x2"], inp["K1"], inp["K2"], threshold=thr,
                                        mask=inp.get("mask"))
    return {"R": e.R, "t": e.t}, e.inliers, e.success


def _t3d_fundamental(inp, thr):
    e = torch3dv.estimate_fundamental(inp["x1"], inp["x2"], threshold=thr, mask=inp.get("mask"))
    return {"F": e.F}, e.inliers, e.success


def _t3d_homography(inp, thr):
    e = torch3dv.estimate_homography(inp["x1"], inp["x2"], threshold=thr, mask=inp.get("mask"))
    return {"H": e.H}, e.inliers, e.success


def _t3d_pnp(inp, thr):
    e = torch3dv.estimate_absolute_pose(inp["x"], inp["X"], inp["K"], threshold=thr, mask=inp.get("mask"))
    return {"R": e.R, "t": e.t}, e.inliers, e.success


def _t3d_rigid(inp, thr):
    e = torch3dv.estimate_rigid(inp["X"], inp["Y"], threshold=thr, mask=inp.get("mask"))
    return {"R": e.R, "t": e.t}, e.inliers, e.success


TORCH3DV = {"relpose": _t3d_relpose, "fundamental": _t3d_fundamental, "homography": _t3d_homography,
            "pnp": _t3d_pnp, "rigid": _t3d_rigid}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_torch3dv(task: Task, device: str) -> Solution:
    """All B problems in one batched call, twice: the first (cold: fresh memory pages, after a 2-problem
    warm-up) is memory-profiled and timed as ``cold_seconds``; the second, timed as ``seconds``, is the steady
    state that a training loop or a service sees, and what the peers' loops over many problems measure too."""
    fn = TORCH3DV[task.kind]
    fn({k: v[:2] for k, v in task.inputs.items()}, task.threshold)
    with PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        fn(task.inputs, task.threshold)
        _sync(device)
        cold = time.perf_counter() - t0
    _sync(device)
    t0 = time.perf_counter()
    model, inliers, ok = fn(task.inputs, task.threshold)
    _sync(device)
    sec = time.perf_counter() - t0
    model = {k: v.detach().cpu().double() for k, v in model.items()}
    return Solution(model, inliers.cpu(), ok.cpu(), sec, mem.mb, cold)


# ------------------------------------------------------------------------------------------ peers


def run_peer(peer: Peer, task: Task, count: int) -> Solution:
    """Loops ``peer.fn`` over problems 0..count-1; an exception or None is a failure (first one printed)."""
    shapes = MODEL_SHAPES[task.kind]
    model = {k: torch.zeros(count, *s, dtype=torch.float64) for k, s in shapes.items()}
    inliers = torch.zeros(count, task.N, dtype=torch.bool)
    ok = torch.zeros(count, dtype=torch.bool)
    first_error = None
    t0 = time.perf_counter()
    for i in range(count):
        try:
            res = peer.fn(i)
        except Exception as exc:  # noqa: BLE001 - a peer's failure on one problem is a failed problem
            first_error = first_error or exc
            res = None
        if res is None:
            continue
        for k, s in shapes.items():
            model[k][i] = torch.from_numpy(np.array(res[k], dtype=np.float64).reshape(s))
        inliers[i, : task.counts[i]] = torch.as_tensor(np.asarray(res["inliers"], dtype=bool).reshape(-1))
        ok[i] = True
    sec = time.perf_counter() - t0
    if first_error is not None:
        print(f"  note: {peer.name} on {task.workload}: {int((~ok).sum())} failures, first: {first_error!r}")
    return Solution(model, inliers, ok, sec)


def _pinhole(K: np.ndarray) -> list[float]:
    return [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]


def _mean_focal(*Ks: np.ndarray) -> float:
    return float(np.mean([[K[0, 0], K[1, 1]] for K in Ks]))


def opencv_peers(task: Task) -> list[Peer]:
    import cv2

    cv2.setNumThreads(1)
    thr, g = task.threshold, task.get

    def relpose(i):
        K1, K2 = g("K1", i), g("K2", i)
        n1 = cv2.undistortPoints(g("x1", i)[:, None], K1, None)[:, 0]
        n2 = cv2.undistortPoints(g("x2", i)[:, None], K2, None)[:, 0]
        # normalised coordinates with a pixel threshold over the mean focal length (different K per view)
        E, mask = cv2.findEssentialMat(n1, n2, np.eye(3), method=cv2.USAC_MAGSAC, prob=CONFIDENCE,
                                      threshold=thr / _mean_focal(K1, K2), maxIters=MAX_ITERS)
        if E is None or E.shape[0] < 3:
            return None
        _, R, t, _ = cv2.recoverPose(E[:3], n1, n2, np.eye(3), mask=mask.copy())
        return {"R": R, "t": t, "inliers": mask[:, 0] > 0}

    def fundamental(method):
        def fn(i):
            F, mask = cv2.findFundamentalMat(g("x1", i), g("x2", i), method, thr, CONFIDENCE, MAX_ITERS)
            return None if F is None or F.shape != (3, 3) else {"F": F, "inliers": mask[:, 0] > 0}
        return fn

    def homography(i):
        H, mask = cv2.findHomography(g("x1", i), g("x2", i), cv2.USAC_MAGSAC, thr, maxIters=MAX_ITERS,
                                     confidence=CONFIDENCE)
        return None if H is None or H.shape != (3, 3) else {"H": H, "inliers": mask[:, 0] > 0}

    def pnp(i):
        found, rvec, tvec, idx = cv2.solvePnPRansac(g("X", i), g("x", i), g("K", i), None,
                                                    iterationsCount=MAX_ITERS, reprojectionError=thr,
                                                    confidence=CONFIDENCE, flags=cv2.SOLVEPNP_SQPNP)
        if not found or idx is None:
            return None
        inliers = np.zeros(task.counts[i], dtype=bool)
        inliers[idx[:, 0]] = True
        return {"R": cv2.Rodrigues(rvec)[0], "t": tvec, "inliers": inliers}

    return {"relpose": [Peer("opencv USAC_MAGSAC", relpose)],
            "fundamental": [Peer("opencv USAC_MAGSAC", fundamental(cv2.USAC_MAGSAC)),
                            Peer("opencv FM_RANSAC", fundamental(cv2.FM_RANSAC))],
            "homography": [Peer("opencv USAC_MAGSAC", homography)],
            "pnp": [Peer("opencv SQPNP RANSAC", pnp)]}.get(task.kind, [])


def poselib_peers(task: Task) -> list[Peer]:
    import poselib

    thr, g = task.threshold, task.get
    w, h = task.image_size
    ransac = {"max_epipolar_error": thr, "max_reproj_error": thr, "success_prob": CONFIDENCE,
              "max_iterations": MAX_ITERS}

    def camera(K):
        return {"model": "PINHOLE", "width": w, "height": h, "params": _pinhole(K)}

    def result(info, **model):
        # PoseLib reports a failed RANSAC as a default model without inliers
        return {**model, "inliers": np.asarray(info["inliers"])} if info["num_inliers"] > 0 else None

    def relpose(i):
        pose, info = poselib.estimate_relative_pose(g("x1", i), g("x2", i), camera(g("K1", i)),
                                                    camera(g("K2", i)), ransac, {})
        return result(info, R=pose.R, t=pose.t)

    def fundamental(i):
        F, info = poselib.estimate_fundamental(g("x1", i), g("x2", i), ransac, {})
        return result(info, F=F)

    def homography(i):
        H, info = poselib.estimate_homography(g("x1", i), g("x2", i), ransac, {})
        return result(info, H=H)

    def pnp(i):
        pose, info = poselib.estimate_absolute_pose(g("x", i), g("X", i), camera(g("K", i)), ransac, {})
        return result(info, R=pose.R, t=pose.t)

    fns = {"relpose": relpose, "fundamental": fundamental, "homography": homography, "pnp": pnp}
    return [Peer("poselib", fns[task.kind])] if task.kind in fns else []


def pycolmap_peers(task: Task) -> list[Peer]:
    import pycolmap

    thr, g = task.threshold, task.get
    w, h = task.image_size
    opts = pycolmap.RANSACOptions()
    abs_opts = pycolmap.AbsolutePoseEstimationOptions()
    for o in (opts, abs_opts.ransac):
        o.max_error, o.confidence, o.max_num_trials = thr, CONFIDENCE, MAX_ITERS

    def camera(K):
        return pycolmap.Camera(model="PINHOLE", width=w, height=h, params=_pinhole(K))

    def pose(rigid, r):
        return {"R": rigid.rotation.matrix(), "t": rigid.translation, "inliers": np.asarray(r["inlier_mask"])}

    def relpose(i):
        cams = camera(g("K1", i)), camera(g("K2", i))
        r = pycolmap.estimate_essential_matrix(g("x1", i), g("x2", i), *cams, opts)
        return None if r is None else pose(r["cam2_from_cam1"], r)

    def fundamental(i):
        r = pycolmap.estimate_fundamental_matrix(g("x1", i), g("x2", i), opts)
        return None if r is None else {"F": r["F"], "inliers": np.asarray(r["inlier_mask"])}

    def homography(i):
        r = pycolmap.estimate_homography_matrix(g("x1", i), g("x2", i), opts)
        return None if r is None else {"H": r["H"], "inliers": np.asarray(r["inlier_mask"])}

    def pnp(i):
        r = pycolmap.estimate_and_refine_absolute_pose(g("x", i), g("X", i), camera(g("K", i)), abs_opts)
        return None if r is None else pose(r["cam_from_world"], r)

    def rigid(i):
        r = pycolmap.estimate_rigid3d_robust(g("X", i), g("Y", i), opts)
        return None if r is None else pose(r["tgt_from_src"], r)

    fns = {"relpose": relpose, "fundamental": fundamental, "homography": homography, "pnp": pnp,
           "rigid": rigid}
    return [Peer("pycolmap", fns[task.kind])] if task.kind in fns else []


def kornia_peers(task: Task, limit: int) -> list[Peer]:
    import cv2
    import kornia.geometry.ransac as kr

    thr, g = task.threshold, task.get
    model_type = {"relpose": "essential", "fundamental": "fundamental",
                  "homography": "homography"}.get(task.kind)
    if model_type is None:
        return []

    def estimate(a, b, threshold):
        # batch_size="auto" draws 2048 samples per iteration
        est = kr.RANSAC(model_type, inl_th=threshold, max_iter=-(-MAX_ITERS // 2048), confidence=CONFIDENCE,
                        seed=0)
        M, inl = est(torch.from_numpy(a), torch.from_numpy(b))
        return M.double().numpy(), inl.numpy()

    def relpose(i):
        K1, K2 = g("K1", i), g("K2", i)
        n1 = cv2.undistortPoints(g("x1", i)[:, None], K1, None)[:, 0]
        n2 = cv2.undistortPoints(g("x2", i)[:, None], K2, None)[:, 0]
        E, inl = estimate(n1, n2, thr / _mean_focal(K1, K2))
        if not inl.any():
            return None
        _, R, t, _ = cv2.recoverPose(E, n1, n2, np.eye(3), mask=inl.astype(np.uint8)[:, None])
        return {"R": R, "t": t, "inliers": inl}

    def matrix(i):
        M, inl = estimate(g("x1", i), g("x2", i), thr)
        return None if not inl.any() else {"F": M, "H": M, "inliers": inl}

    return [Peer("kornia RANSAC", relpose if task.kind == "relpose" else matrix, limit)]


def all_peers(task: Task, args) -> list[Peer]:
    families = [opencv_peers, poselib_peers, pycolmap_peers, lambda t: kornia_peers(t, args.kornia_problems)]
    peers = []
    for family in families:
        try:
            peers += family(task)
        except ImportError as exc:
            print(f"  note: peer skipped ({exc})")
    return peers


# ------------------------------------------------------------------------------------------ workloads


def _cast(args, **tensors) -> dict[str, torch.Tensor]:
    dt = getattr(torch, args.dtype)
    return {k: v.to(device=args.device, dtype=dt) for k, v in tensors.items()}


def _synthetic(kind: str, o: float, args, inputs: dict, gt: dict) -> Task:
    return Task(f"{kind} {round(o * 100)}% out", kind, THRESHOLDS[kind], _cast(args, **inputs), gt,
                np.full(args.problems, args.points))


def _image1_pixels(B: int, M: int, g: torch.Generator) -> torch.Tensor:
    w, h = IMAGE_SIZE
    scale = torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64)
    return torch.rand(B, M, 2, generator=g, dtype=torch.float64) * scale


def _holdout_two_view(s, M: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """M clean pairs per problem from the scene's cameras: uniform pixels of view 1 at depths 2-6 m."""
    g = torch.Generator().manual_seed(seed)
    B = s.K1.shape[0]
    pix = _image1_pixels(B, M, g)
    X = unproject_pinhole(pix, s.K1) * (2.0 + 4.0 * torch.rand(B, M, 1, generator=g, dtype=torch.float64))
    return pix, project_pinhole(X @ s.R.mT + s.t[:, None], s.K2)


def _holdout_planar(s, M: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """M clean pairs per problem on the scene's plane: uniform pixels of view 1 mapped by the true H."""
    g = torch.Generator().manual_seed(seed)
    pix = _image1_pixels(s.H.shape[0], M, g)
    y = _homogeneous(pix) @ s.H.mT
    return pix, y[..., :2] / y[..., 2:]


def relpose_task(args, o: float) -> Task:
    s = two_view_scene(args.problems, args.points, noise_px=NOISE_PX, outlier_ratio=o, seed=0)
    return _synthetic("relpose", o, args, {"x1": s.x1, "x2": s.x2, "K1": s.K1, "K2": s.K2},
                      {"R": s.R, "t": s.t, "inliers": s.inliers})


def fundamental_task(args, o: float) -> Task:
    s = two_view_scene(args.problems, args.points, noise_px=NOISE_PX, outlier_ratio=o, seed=0)
    hold1, hold2 = _holdout_two_view(s, HOLDOUT)
    return _synthetic("fundamental", o, args, {"x1": s.x1, "x2": s.x2},
                      {"F": s.F, "hold1": hold1, "hold2": hold2, "inliers": s.inliers})


def homography_task(args, o: float) -> Task:
    s = two_view_scene(args.problems, args.points, noise_px=NOISE_PX, outlier_ratio=o, planar=True, seed=0)
    hold1, hold2 = _holdout_planar(s, HOLDOUT)
    return _synthetic("homography", o, args, {"x1": s.x1, "x2": s.x2},
                      {"H": s.H, "hold1": hold1, "hold2": hold2, "inliers": s.inliers})


def pnp_task(args, o: float) -> Task:
    s = absolute_pose_scene(args.problems, args.points, noise_px=NOISE_PX, outlier_ratio=o, seed=0)
    return _synthetic("pnp", o, args, {"x": s.x, "X": s.X, "K": s.K},
                      {"R": s.R, "t": s.t, "inliers": s.inliers})


def rigid_task(args, o: float) -> Task:
    s = rigid_scene(args.problems, args.points, noise=RIGID_NOISE_M, outlier_ratio=o, seed=0)
    return _synthetic("rigid", o, args, {"X": s.X, "Y": s.Y}, {"R": s.R, "t": s.t, "inliers": s.inliers})


def _pad(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), n, arrays[0].shape[1]))
    mask = np.zeros((len(arrays), n), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)], mask[i, : len(a)] = a, True
    return torch.from_numpy(out), torch.from_numpy(mask)


def real_task(args, name: str) -> Task | None:
    """Relative pose on the real pairs of data set ``name`` (None, with a note, when the data is absent)."""
    if not _realdata.available(name):
        print(f"  note: {name} skipped: {_realdata.dataset_dir(name)} not found")
        return None
    rp = _realdata.load_pairs(name, max_gap=args.max_gap)
    x1, mask = _pad(rp.x1)
    x2, _ = _pad(rp.x2)
    K1, K2, R, t = (torch.from_numpy(a) for a in (rp.K1, rp.K2, rp.R, rp.t))
    F = torch.linalg.inv(K2).mT @ skew(t) @ R @ torch.linalg.inv(K1)
    gt = {"R": R, "t": t, "inliers": mask & (sampson_px(F, x1, x2) < THRESHOLDS["relpose"])}
    inputs = {**_cast(args, x1=x1, x2=x2, K1=K1, K2=K2), "mask": mask.to(args.device)}
    counts = mask.sum(-1).numpy()
    label = f"{name} ({len(counts)} pairs, {int(np.median(counts))} matches)"
    return Task(label, "relpose", THRESHOLDS["relpose"], inputs, gt, counts, rp.image_size)


SYNTHETIC_TASKS = {"relpose": relpose_task, "fundamental": fundamental_task, "homography": homography_task,
                   "pnp": pnp_task, "rigid": rigid_task}


def tasks(args):
    for w in args.workloads:
        if w in SYNTHETIC_TASKS:
            for o in args.outliers:
                yield SYNTHETIC_TASKS[w](args, o)
        else:
            task = real_task(args, w)
            if task is not None:
                yield task


# ------------------------------------------------------------------------------------------ driver


def run_task(task: Task, args) -> list[dict]:
    """torch3dv on the whole batch, each peer on the first problems; one row per implementation."""
    print(f"{task.workload}: {task.B} problems", flush=True)
    start = time.perf_counter()
    P = min(args.peer_problems, task.B)
    ours = run_torch3dv(task, args.device)
    speed = {"per_s": task.B / ours.seconds, "cold_per_s": task.B / ours.cold_seconds, "peak_MB": ours.peak_mb}
    rows = [{"impl": "torch3dv", **evaluate(task, ours.head(P)), **speed}]
    if P < task.B:
        rows.append({"impl": "torch3dv (all)", **evaluate(task, ours), **speed})
    for peer in all_peers(task, args):
        count = min(P, peer.limit or P)
        sol = run_peer(peer, task, count)
        rows.append({"impl": peer.name, **evaluate(task, sol), "per_s": count / sol.seconds})
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return [{"workload": task.workload, **r} for r in rows]


QUICK = {"problems": 50, "points": 256, "peer_problems": 20, "kornia_problems": 3, "outliers": [0.3],
         "max_gap": 1}
DEFAULTS = {"problems": 1000, "points": 512, "peer_problems": 200, "kornia_problems": 50,
            "outliers": [0.3, 0.6], "max_gap": 3}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="*", default=SYNTHETIC + REAL, choices=SYNTHETIC + REAL)
    p.add_argument("--outliers", nargs="*", type=float, help="synthetic outlier ratios (default 0.3 0.6)")
    p.add_argument("--problems", type=int, help="synthetic problems B per workload (default 1000)")
    p.add_argument("--points", type=int, help="synthetic correspondences N per problem (default 512)")
    p.add_argument("--peer-problems", type=int, help="problems the per-problem peers solve (default 200)")
    p.add_argument("--kornia-problems", type=int, help="problems kornia's RANSAC solves (default 50)")
    p.add_argument("--max-gap", type=int, help="real pairs: views at most this far apart (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (torch3dv and kornia)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--quick", action="store_true", help=f"small smoke run: {QUICK}")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/ransac[_device][_quick].json)")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def _peer_versions() -> dict:
    versions = {}
    for module in ("cv2", "poselib", "pycolmap", "kornia"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    return versions


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for task in tasks(args):
        rows += run_task(task, args)
    if not rows:
        print("nothing was run")
        return
    print(f"\nrobust estimation ({args.device}, {args.dtype}, {args.threads} torch threads; synthetic: "
          f"{args.points} correspondences, {NOISE_PX} px noise; thresholds {THRESHOLDS})\n")
    print_table(rows, COLUMNS)
    name = "ransac" + ("" if args.device == "cpu" else f"_{args.device}") + ("_quick" if args.quick else "")
    payload = {"args": vars(args), "versions": _peer_versions(), "thresholds": THRESHOLDS,
               "confidence": CONFIDENCE, "max_iterations": MAX_ITERS, "results": rows}
    path = write_json(name, payload, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
