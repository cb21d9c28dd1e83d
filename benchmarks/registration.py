"""Point cloud registration: torch3dv vs Open3D (legacy pipelines) on the same inputs, in one run.

Workloads:
    icp_bunny        ICP point-to-point and point-to-plane, bun045 -> bun000 (~40k points each), both libraries
                     from the same perturbed ground-truth start, the same correspondence distance, the same target
                     normals and the same iteration limit, under two convergence criteria: "fixed" (disabled:
                     exactly --iterations iterations) and "default" (Open3D's ICPConvergenceCriteria defaults,
                     relative fitness and RMSE changes 1e-6, which torch3dv applies the same way).
    global_3dmatch   FPFH + RANSAC global registration on the GeoTransformer 3DMatch demo pair (voxel 5 cm),
                     repeated with several seeds: success rate (< 5 deg and < 10 cm vs gt.npy) and time.
    batch_synthetic  B synthetic blob pairs with known transforms: one batched torch3dv call vs a loop of Open3D
                     point-to-plane ICP calls.
Errors are rotation (deg) / translation (mm) vs ground truth. Open3D is a benchmark-only dependency
(pip install open3d==0.20.0); torch3dv never imports it. torch3dv runs with its default neighbour search
(SciPy's k-d tree on the CPU when ``torch3dv[fast]`` is installed).

Both libraries run on ``--threads`` CPU cores: the script re-executes itself with OMP_NUM_THREADS set and its
CPU affinity restricted to that many cores (Open3D 0.20 otherwise runs parts of its ICP on a thread pool that
ignores OMP_NUM_THREADS, i.e. on every core once torch is loaded); each time is the best of ``--reps`` runs, the
two libraries interleaved. Iterations are reported for both: torch3dv returns them; Open3D logs them at debug
verbosity (counted in one more, untimed run).
One run writes every row to benchmarks/results/registration.json.

Usage:
    python benchmarks/registration.py                               # all workloads, 2 threads
    python benchmarks/registration.py --threads 1 --workloads icp_bunny --iterations 30
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from torch3dv.geometry import axis_angle_to_matrix, quat_xyzw_to_matrix  # noqa: E402
from torch3dv.io import read_ply  # noqa: E402
from torch3dv.registration import (  # noqa: E402
    ICPOptions, RegistrationOptions, blob_pair, estimate_normals, global_registration, icp, to_homogeneous)

DATA = Path(os.environ.get("TORCH3DV_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def rot_err_deg(R, R_gt) -> float:
    c = (np.trace(np.asarray(R).T @ np.asarray(R_gt)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


REPS = 3


def interleaved(fns, reps=None):
    """Runs the callables in turn ``reps`` times (peers interleaved, so load changes hit them alike).

    Returns [(last output, best time in seconds)] in the order of ``fns``.
    """
    outs, best = [None] * len(fns), [math.inf] * len(fns)
    for _ in range(reps or REPS):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(outs, best))


def o3d_iterations(o3d, run) -> int:
    """Iterations Open3D's ICP ran in ``run()``: it logs one "ICP Iteration #i" line per update at debug
    verbosity (on the C++ stdout, captured at the file descriptor). Called outside the timed runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as f:
        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Debug)
        os.dup2(f.fileno(), 1)
        try:
            run()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Warning)
        f.seek(0)
        return f.read().decode(errors="replace").count("ICP Iteration #")


def _pose(name):
    for line in (DATA / "stanford_bunny_range_scans/data/bun.conf").read_text().splitlines():
        tok = line.split()
        if tok and tok[0] == "bmesh" and tok[1] == name:
            tx, ty, tz, qx, qy, qz, qw = map(float, tok[2:9])
            return quat_xyzw_to_matrix(torch.tensor([qx, qy, qz, -qw], dtype=torch.float64)).numpy(), np.array([tx, ty, tz])


def icp_bunny(o3d, iterations: int, rows: list):
    d = DATA / "stanford_bunny_range_scans/data"
    X = read_ply(d / "bun045.ply").points.double()
    Y = read_ply(d / "bun000.ply").points.double()
    R1, t1 = _pose("bun045.ply")  # bun000 has the identity pose
    T_gt = np.eye(4)
    T_gt[:3, :3], T_gt[:3, 3] = R1, t1
    P = np.eye(4)
    P[:3, :3] = axis_angle_to_matrix(torch.tensor([0.05, -0.04, 0.03], dtype=torch.float64)).numpy()
    P[:3, 3] = [0.004, -0.003, 0.002]
    init = P @ T_gt
    dist = 0.005
    normals = estimate_normals(Y[None], k=30, radius=0.005)[0]  # shared: both libraries use the same normals
    s = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(X.numpy()))
    tg = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(Y.numpy()))
    tg.normals = o3d.utility.Vector3dVector(normals.numpy())
    reg = o3d.pipelines.registration
    # "fixed": convergence disabled (Open3D stops when a change is below 0, never; torch3dv below -1, never)
    criteria = {"fixed": (-1.0, 0.0), "default": (1e-6, 1e-6)}
    for crit, (ours_rel, o3d_rel) in criteria.items():
        for method, est in (("point_to_point", reg.TransformationEstimationPointToPoint()),
                            ("point_to_plane", reg.TransformationEstimationPointToPlane())):
            opts = ICPOptions(method=method, max_correspondence_distance=dist, max_iterations=iterations,
                              relative_fitness=ours_rel, relative_rmse=ours_rel)

            def ours(dtype, opts=opts):
                Xd, Yd, Nd, init_t = X.to(dtype), Y.to(dtype), normals.to(dtype), torch.from_numpy(init).to(dtype)
                return lambda: icp(Xd, Yd, init=init_t, target_normals=Nd, options=opts)

            def theirs(n=iterations, est=est, rel=o3d_rel):
                return reg.registration_icp(s, tg, dist, init, est, reg.ICPConvergenceCriteria(rel, rel, n))

            (r64, t64), (r32, t32), (ro, to) = interleaved([ours(torch.float64), ours(torch.float32), theirs])
            for dtype, rt, tt in ((torch.float64, r64, t64), (torch.float32, r32, t32)):
                rows.append(dict(workload="icp_bunny", criteria=crit, method=method, lib=f"torch3dv {str(dtype)[6:]}",
                                 time_s=tt, rot_deg=rot_err_deg(rt.R.double().numpy(), R1),
                                 trans_mm=1000 * float(np.linalg.norm(rt.t.double().numpy() - t1)),
                                 fitness=float(rt.fitness), iterations=int(rt.num_iterations)))
            E = ro.transformation
            n_o3d = o3d_iterations(o3d, theirs)
            rows.append(dict(workload="icp_bunny", criteria=crit, method=method, lib="open3d", time_s=to,
                             rot_deg=rot_err_deg(E[:3, :3], R1), trans_mm=1000 * float(np.linalg.norm(E[:3, 3] - t1)),
                             fitness=float(ro.fitness), iterations=n_o3d))


def global_3dmatch(o3d, seeds: int, rows: list):
    d = DATA / "geotransformer_3dmatch_demo_pair/demo"
    S, T, G = (np.load(d / f) for f in ("src.npy", "ref.npy", "gt.npy"))
    v = 0.05
    reg = o3d.pipelines.registration

    def o3d_run(seed):
        o3d.utility.random.seed(seed)
        s = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(S)).voxel_down_sample(v)
        t = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(T)).voxel_down_sample(v)
        for p in (s, t):
            p.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * v, max_nn=30))
        fs = reg.compute_fpfh_feature(s, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * v, max_nn=100))
        ft = reg.compute_fpfh_feature(t, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * v, max_nn=100))
        return reg.registration_ransac_based_on_feature_matching(
            s, t, fs, ft, True, 1.5 * v, reg.TransformationEstimationPointToPoint(False), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(1.5 * v)],
            reg.RANSACConvergenceCriteria(100000, 0.999)).transformation

    St, Tt = torch.from_numpy(S).float(), torch.from_numpy(T).float()

    def ours(seed):
        o = RegistrationOptions(voxel_size=v)
        o = replace(o, ransac=replace(o.ransac, seed=seed))
        return global_registration(St, Tt, options=o).transform.double().numpy()

    stats = {lib: dict(ok=0, rerr=[], terr=[], times=[]) for lib in ("torch3dv", "open3d")}
    for seed in range(seeds):  # the two libraries interleaved, seed by seed
        for lib, fn in (("torch3dv", ours), ("open3d", o3d_run)):
            t0 = time.perf_counter()
            E = fn(seed)
            st = stats[lib]
            st["times"].append(time.perf_counter() - t0)
            re, te = rot_err_deg(E[:3, :3], G[:3, :3]), float(np.linalg.norm(E[:3, 3] - G[:3, 3]))
            st["rerr"].append(re)
            st["terr"].append(te * 1000)
            st["ok"] += (re < 5) and (te < 0.10)
    for lib, st in stats.items():
        ok, rerr, terr, times = st["ok"], st["rerr"], st["terr"], st["times"]
        rows.append(dict(workload="global_3dmatch", method="fpfh+ransac", lib=lib, time_s=float(np.median(times)),
                         rot_deg=float(np.median(rerr)), trans_mm=float(np.median(terr)), success=ok / seeds))


def batch_synthetic(o3d, batch: int, rows: list):
    sc = blob_pair(batch=batch, num_points=5000, max_angle=math.radians(15), max_translation=0.05,
                   same_samples=False, noise=0.001, seed=0)
    # the same options in both: 30 iterations at most, Open3D's default convergence criteria, normals from 20
    # neighbours estimated by each library (included in the time)
    opts = ICPOptions(method="point_to_plane", max_correspondence_distance=0.05, max_iterations=30,
                      relative_fitness=1e-6, relative_rmse=1e-6, num_neighbors=20)
    reg = o3d.pipelines.registration

    def pair(i, n=30):
        s = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sc.source[i].numpy()))
        t = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sc.target[i].numpy()))
        t.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(20))
        return reg.registration_icp(s, t, 0.05, np.eye(4), reg.TransformationEstimationPointToPlane(),
                                    reg.ICPConvergenceCriteria(1e-6, 1e-6, n)).transformation

    def loop():
        return np.stack([pair(i) for i in range(batch)])

    (rt, tt), (Eo, to) = interleaved([lambda: icp(sc.source, sc.target, options=opts), loop])
    its_o3d = o3d_iterations(o3d, loop)
    for lib, R, t, tm, its in (("torch3dv", rt.R.numpy(), rt.t.numpy(), tt, int(rt.num_iterations.sum())),
                               ("open3d", Eo[:, :3, :3], Eo[:, :3, 3], to, its_o3d)):
        re = [rot_err_deg(R[i], sc.R[i].numpy()) for i in range(batch)]
        te = [1000 * float(np.linalg.norm(t[i] - sc.t[i].numpy())) for i in range(batch)]
        rows.append(dict(workload=f"batch_synthetic B={batch}", criteria="default", method="point_to_plane", lib=lib,
                         time_s=tm, rot_deg=float(np.max(re)), trans_mm=float(np.max(te)), iterations=its))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=["icp_bunny", "global_3dmatch", "batch_synthetic"])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per measurement (best is kept)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cores = set(sorted(os.sched_getaffinity(0))[:args.threads]) if hasattr(os, "sched_getaffinity") else None
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads) or (cores and os.sched_getaffinity(0) != cores):
        # OpenMP reads the variable once at start-up, and a thread inherits the CPU affinity it is created with:
        # re-execute, so that every thread of both libraries (Open3D's TBB pool included) runs on those cores
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        if cores:
            os.sched_setaffinity(0, cores)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(args.threads)
    global REPS
    REPS = args.reps
    try:
        import open3d as o3d
    except ImportError as e:
        raise SystemExit(f"this benchmark needs Open3D (pip install open3d==0.20.0): {e}")
    rows: list[dict] = []
    if "icp_bunny" in args.workloads:
        icp_bunny(o3d, args.iterations, rows)
    if "global_3dmatch" in args.workloads:
        global_3dmatch(o3d, args.seeds, rows)
    if "batch_synthetic" in args.workloads:
        batch_synthetic(o3d, args.batch, rows)
    print_table(rows, ["workload", "criteria", "method", "lib", "time_s", "rot_deg", "trans_mm", "fitness",
                       "iterations", "success"])
    try:
        import scipy

        scipy_version = scipy.__version__
    except ImportError:
        scipy_version = None
    path = write_json("registration", {"rows": rows, "open3d": o3d.__version__, "scipy": scipy_version,
                                       "threads": args.threads, "reps": args.reps,
                                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                       "cpu_affinity": sorted(os.sched_getaffinity(0))
                                       if hasattr(os, "sched_getaffinity") else None,
                                       "args": vars(args)}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
