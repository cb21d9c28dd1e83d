"""Minimal and linear solver throughput and accuracy: torch3dv vs kornia, OpenCV and PoseLib in one run.

For every solver: solves per second at batch sizes 1, 1k and 100k (batched peers at the same sizes; per-call
peers such as OpenCV and PoseLib are timed over a loop of calls and reported as calls per second), and the
accuracy on noisy inputs (0.5 px): the median over problems of a geometric error measured on held-out
noise-free points of the same scene (Sampson distance for F/E, one-way transfer error for H, reprojection
error for PnP, Euclidean error for rigid alignment, reprojection error for triangulation). Multi-solution
solvers are scored by their best solution (choosing among them is the robust estimator's job).

Usage:
    python benchmarks/solvers.py                       # all solvers, CPU, float32
    python benchmarks/solvers.py --solvers essential_5pt pnp_p3p --batches 1 1000
    python benchmarks/solvers.py --device cuda --dtype float32
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, time_call, write_json  # noqa: E402

from torch3dv.camera.pinhole import bearing_vectors, pixels_to_normalized, project_pinhole  # noqa: E402
from torch3dv.geometry.transforms import projection_matrix, transform_points  # noqa: E402
from torch3dv.testing import absolute_pose_scene, multi_view_scene, rigid_scene, two_view_scene  # noqa: E402

HELD_OUT = 64
NOISE = 0.5


# ----------------------------------------------------------------------------------------------------------
# independent error metrics (written here so the benchmark does not grade torch3dv with torch3dv)


def _h(x):
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def sampson_px(F: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Sampson distance (px) for F (B,S,3,3), points (B,M,2) -> (B,S,M)."""
    F = F.double()
    a, b = _h(x1.double())[:, None], _h(x2.double())[:, None]
    Fx1 = a @ F.transpose(-1, -2)
    Ftx2 = b @ F
    num = (b * Fx1).sum(-1) ** 2
    den = Fx1[..., 0] ** 2 + Fx1[..., 1] ** 2 + Ftx2[..., 0] ** 2 + Ftx2[..., 1] ** 2
    return torch.sqrt(num / den.clamp_min(1e-300))


def transfer_px(H: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    p = _h(x1.double())[:, None] @ H.double().transpose(-1, -2)
    p = p[..., :2] / p[..., 2:]
    return (p - x2.double()[:, None]).norm(dim=-1)


def reproj_px(R, t, K, X, x) -> torch.Tensor:
    """R (B,S,3,3), t (B,S,3), K (B,3,3), X (B,M,3), x (B,M,2) -> (B,S,M)."""
    Xc = X.double()[:, None] @ R.double().transpose(-1, -2) + t.double()[..., None, :]
    z = Xc[..., 2:]
    p = Xc[..., :2] / torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    p = p @ K.double()[:, None, :2, :2].transpose(-1, -2) + K.double()[:, None, :2, 2][..., None, :]
    err = (p - x.double()[:, None]).norm(dim=-1)
    return torch.where(z[..., 0] > 0, err, torch.full_like(err, float("inf")))


def best_median(err: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """err (B,S,M) -> median over problems of min over valid solutions of the median over points."""
    per = err.nan_to_num(float("inf")).median(dim=-1).values
    if valid is not None:
        per = torch.where(valid, per, torch.full_like(per, float("inf")))
    best = per.min(dim=-1).values
    return float(best.median())


# ----------------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    name: str
    n: int
    make: Callable  # (batch, seed, dtype, device) -> dict
    ours: Callable  # inputs -> output
    ours_error: Callable  # (inputs, output) -> float
    batched_peers: dict = field(default_factory=dict)  # name -> (fn(inputs), error(inputs, out) or None)
    call_peers: dict = field(default_factory=dict)  # name -> (fn(inputs, i) for problem i, error(inputs, outs))


def _two_view(batch, seed, dtype, device, n, planar=False, noise=NOISE):
    s = two_view_scene(batch, n + HELD_OUT, noise_px=noise, planar=planar, seed=seed, dtype=dtype, device=device)
    d = {
        "x1": s.x1[:, :n].contiguous(), "x2": s.x2[:, :n].contiguous(),
        "e1": s.x1_clean[:, n:], "e2": s.x2_clean[:, n:], "K1": s.K1, "K2": s.K2, "R": s.R, "t": s.t,
    }
    d["x1n"] = pixels_to_normalized(d["x1"], s.K1)
    d["x2n"] = pixels_to_normalized(d["x2"], s.K2)
    return d


def _E_to_F(E, K1, K2):
    K1i, K2i = torch.linalg.inv(K1.double()), torch.linalg.inv(K2.double())
    return K2i.transpose(-1, -2)[:, None] @ E.double() @ K1i[:, None]


def _np(x):
    return x.detach().cpu().double().numpy()


def make_cases() -> list[Case]:
    import cv2
    import kornia.geometry.calibration as kcal
    import kornia.geometry.epipolar as kep
    import kornia.geometry.homography as khom

    try:
        import poselib
    except ImportError:  # pragma: no cover
        poselib = None

    from torch3dv.solvers import essential as ess
    from torch3dv.solvers import fundamental as fun
    from torch3dv.solvers import homography as hom
    from torch3dv.solvers import pnp
    from torch3dv.solvers import rigid
    from torch3dv.solvers import triangulation as tri

    cases: list[Case] = []

    # --- fundamental, 8-point
    def f_err(d, F):
        F = F if F.ndim == 4 else F[:, None]
        return best_median(sampson_px(F, d["e1"], d["e2"]))

    cases.append(Case(
        "fundamental_8pt", 8, lambda b, s, dt, dev: _two_view(b, s, dt, dev, 8),
        lambda d: fun.fundamental_8point(d["x1"], d["x2"]).F, f_err,
        batched_peers={"kornia": (lambda d: kep.find_fundamental(d["x1"], d["x2"], method="8POINT"), f_err)},
        call_peers={"opencv": (lambda d, i: cv2.findFundamentalMat(_np(d["x1"][i]), _np(d["x2"][i]), cv2.FM_8POINT)[0],
                               lambda d, outs: f_err(d, torch.tensor(np.stack([o[:3] for o in outs]))))},
    ))

    # --- fundamental, 7-point
    def f7_err(d, out):
        F, valid = out
        return best_median(sampson_px(F, d["e1"], d["e2"]), valid)

    def kornia_f7(d):
        F = kep.find_fundamental(d["x1"], d["x2"], method="7POINT")
        return F, torch.isfinite(F).flatten(-2).all(-1) & (F.flatten(-2).abs().sum(-1) > 0)

    def cv_f7_err(d, outs):
        F = torch.zeros(len(outs), 3, 3, 3, dtype=torch.float64)
        valid = torch.zeros(len(outs), 3, dtype=torch.bool)
        for i, o in enumerate(outs):
            if o is not None:
                k = o.shape[0] // 3
                F[i, :k] = torch.tensor(o.reshape(k, 3, 3))
                valid[i, :k] = True
        return f7_err(d, (F, valid))

    cases.append(Case(
        "fundamental_7pt", 7, lambda b, s, dt, dev: _two_view(b, s, dt, dev, 7),
        lambda d: tuple(fun.fundamental_7point(d["x1"], d["x2"])[:2]), f7_err,
        batched_peers={"kornia": (kornia_f7, f7_err)},
        call_peers={"opencv": (lambda d, i: cv2.findFundamentalMat(_np(d["x1"][i]), _np(d["x2"][i]), cv2.FM_7POINT)[0],
                               cv_f7_err)},
    ))

    # --- essential, 5-point
    def e5_err(d, out):
        E, valid = out
        return best_median(sampson_px(_E_to_F(E, d["K1"], d["K2"]), d["e1"], d["e2"]), valid)

    def kornia_e5(d):
        E = kep.find_essential(d["x1n"], d["x2n"])
        return E, torch.isfinite(E).flatten(-2).all(-1) & (E.flatten(-2).abs().sum(-1) > 1e-9)

    def list_err(d, outs, S=10):
        E = torch.zeros(len(outs), S, 3, 3, dtype=torch.float64)
        valid = torch.zeros(len(outs), S, dtype=torch.bool)
        for i, o in enumerate(outs):
            for j, Ej in enumerate(o[:S]):
                E[i, j] = torch.as_tensor(np.asarray(Ej))
                valid[i, j] = True
        return e5_err(d, (E, valid))

    e5_peers = {}
    if poselib is not None:
        e5_peers["poselib"] = (
            lambda d, i: poselib.essential_matrix_5pt(_np(_h(d["x1n"][i])), _np(_h(d["x2n"][i]))), list_err)
    cases.append(Case(
        "essential_5pt", 5, lambda b, s, dt, dev: _two_view(b, s, dt, dev, 5),
        lambda d: tuple(ess.essential_5point(d["x1n"], d["x2n"])[:2]), e5_err,
        batched_peers={"kornia": (kornia_e5, e5_err)}, call_peers=e5_peers,
    ))

    # --- essential, 8-point
    def e8_err(d, E):
        return best_median(sampson_px(_E_to_F(E[:, None], d["K1"], d["K2"]), d["e1"], d["e2"]))

    e8_peers = {}
    if poselib is not None:
        e8_peers["poselib"] = (
            lambda d, i: poselib.essential_matrix_8pt(_np(_h(d["x1n"][i])), _np(_h(d["x2n"][i]))),
            lambda d, outs: e8_err(d, torch.tensor(np.stack(outs))))
    cases.append(Case(
        "essential_8pt", 8, lambda b, s, dt, dev: _two_view(b, s, dt, dev, 8),
        lambda d: ess.essential_8point(d["x1n"], d["x2n"]).E, e8_err, call_peers=e8_peers,
    ))

    # --- homography, 4-point and DLT
    def h_err(d, H):
        return best_median(transfer_px(H[:, None], d["e1"], d["e2"]))

    def h_case(name, n, ours):
        cases.append(Case(
            name, n, lambda b, s, dt, dev: _two_view(b, s, dt, dev, n, planar=True), ours, h_err,
            batched_peers={"kornia": (lambda d: khom.find_homography_dlt(d["x1"], d["x2"]), h_err)},
            call_peers={"opencv": (
                (lambda d, i: cv2.getPerspectiveTransform(_np(d["x1"][i]).astype(np.float32),
                                                          _np(d["x2"][i]).astype(np.float32))) if n == 4 else
                (lambda d, i: cv2.findHomography(_np(d["x1"][i]), _np(d["x2"][i]), 0)[0]),
                lambda d, outs: h_err(d, torch.tensor(np.stack(outs))))},
        ))

    h_case("homography_4pt", 4, lambda d: hom.homography_4point(d["x1"], d["x2"]).H)
    h_case("homography_dlt", 32, lambda d: hom.homography_dlt(d["x1"], d["x2"]).H)

    # --- PnP
    def _abs(b, s, dt, dev, n):
        sc = absolute_pose_scene(b, n + HELD_OUT, noise_px=NOISE, seed=s, dtype=dt, device=dev)
        d = {"x": sc.x[:, :n].contiguous(), "X": sc.X[:, :n].contiguous(), "K": sc.K,
             "ex": sc.x_clean[:, n:], "eX": sc.X[:, n:]}
        d["f"] = bearing_vectors(d["x"], sc.K)
        return d

    def pnp_err(d, out):
        R, t, valid = out
        return best_median(reproj_px(R, t, d["K"], d["eX"], d["ex"]), valid)

    def single_err(d, out):
        return pnp_err(d, (out.R[:, None], out.t[:, None], out.success[:, None]))

    def cv_pose_err(d, outs):
        R = torch.zeros(len(outs), 4, 3, 3, dtype=torch.float64)
        t = torch.zeros(len(outs), 4, 3, dtype=torch.float64)
        valid = torch.zeros(len(outs), 4, dtype=torch.bool)
        for i, (rv, tv) in enumerate(outs):
            for j, (r, tt) in enumerate(zip(rv[:4], tv[:4])):
                R[i, j] = torch.tensor(cv2.Rodrigues(np.asarray(r, dtype=np.float64))[0])
                t[i, j] = torch.tensor(np.asarray(tt, dtype=np.float64).reshape(3))
                valid[i, j] = True
        return pnp_err(d, (R, t, valid))

    def cv_p3p(d, i):
        n, rv, tv = cv2.solveP3P(_np(d["X"][i]), _np(d["x"][i]), _np(d["K"][i]), None, cv2.SOLVEPNP_P3P)
        return rv, tv

    def cv_epnp(d, i):
        ok, rv, tv = cv2.solvePnP(_np(d["X"][i]), _np(d["x"][i]), _np(d["K"][i]), None, flags=cv2.SOLVEPNP_EPNP)
        return [rv], [tv]

    def kornia_pnp(d):
        P = kcal.solve_pnp_dlt(d["X"], d["x"], d["K"])
        return P[:, None, :, :3], P[:, None, :, 3], torch.ones(P.shape[0], 1, dtype=torch.bool)

    p3p_peers = {"opencv": (cv_p3p, cv_pose_err)}
    if poselib is not None:
        def pl_p3p(d, i):
            poses = poselib.p3p(_np(d["f"][i]), _np(d["X"][i]))
            return [cv2.Rodrigues(p.R)[0] for p in poses], [p.t for p in poses]
        p3p_peers["poselib"] = (pl_p3p, cv_pose_err)
    cases.append(Case(
        "pnp_p3p", 3, lambda b, s, dt, dev: _abs(b, s, dt, dev, 3),
        lambda d: tuple(pnp.p3p(d["f"], d["X"])[:3]), pnp_err, call_peers=p3p_peers,
    ))
    cases.append(Case(
        "pnp_epnp", 6, lambda b, s, dt, dev: _abs(b, s, dt, dev, 6),
        lambda d: pnp.epnp(d["x"], d["X"], d["K"]), single_err,
        batched_peers={"kornia_dlt": (kornia_pnp, pnp_err)}, call_peers={"opencv": (cv_epnp, cv_pose_err)},
    ))
    cases.append(Case(
        "pnp_dlt", 6, lambda b, s, dt, dev: _abs(b, s, dt, dev, 6),
        lambda d: pnp.pnp_dlt(d["x"], d["X"], d["K"]), single_err,
        batched_peers={"kornia_dlt": (kornia_pnp, pnp_err)},
    ))

    # --- rigid
    def _rig(b, s, dt, dev, n, with_scale):
        sc = rigid_scene(b, n + HELD_OUT, noise=0.01, with_scale=with_scale, seed=s, dtype=dt, device=dev)
        X_clean = sc.X[:, n:]
        Y_clean = sc.s[:, None, None] * (X_clean @ sc.R.transpose(-1, -2)) + sc.t[:, None]
        return {"X": sc.X[:, :n].contiguous(), "Y": sc.Y[:, :n].contiguous(), "eX": X_clean, "eY": Y_clean}

    def rig_err(d, out):
        R, t, s = out
        Y = s.double()[:, None, None] * (d["eX"].double() @ R.double().transpose(-1, -2)) + t.double()[:, None]
        return float((Y - d["eY"].double()).norm(dim=-1).median(-1).values.median()) * 1000.0  # mm

    def roma_rigid(d, with_scale):
        import roma

        R, t, *rest = roma.rigid_points_registration(d["X"], d["Y"], compute_scaling=with_scale)
        s = rest[0] if with_scale else torch.ones(R.shape[0], dtype=R.dtype)
        # roma returns (R, t, s) with Y = s R X + t
        return R, t, s

    cases.append(Case(
        "rigid_kabsch", 32, lambda b, s, dt, dev: _rig(b, s, dt, dev, 32, False),
        lambda d: tuple(rigid.kabsch(d["X"], d["Y"])[:3]), rig_err,
        batched_peers={"roma": (lambda d: roma_rigid(d, False), rig_err)},
    ))
    cases.append(Case(
        "rigid_umeyama", 32, lambda b, s, dt, dev: _rig(b, s, dt, dev, 32, True),
        lambda d: tuple(rigid.umeyama(d["X"], d["Y"])[:3]), rig_err,
        batched_peers={"roma": (lambda d: roma_rigid(d, True), rig_err)},
    ))

    # --- triangulation (two views, 1 point per problem so "solves" are points)
    def _tri(b, s, dt, dev):
        sc = multi_view_scene(b, 2, 1, noise_px=NOISE, seed=s, dtype=dt, device=dev)
        P = projection_matrix(sc.K, sc.R, sc.t)
        return {"P1": P[:, 0], "P2": P[:, 1], "x1": sc.x[:, 0], "x2": sc.x[:, 1], "Xgt": sc.X,
                "xc1": sc.x_clean[:, 0], "xc2": sc.x_clean[:, 1], "K": sc.K, "R": sc.R, "t": sc.t}

    def tri_err(d, X):
        # reprojection of the estimate into both views against the clean projections (px)
        X = X.double().reshape(-1, 1, 3)
        e = []
        for v in range(2):
            p = project_pinhole(transform_points(d["R"][:, v].double(), d["t"][:, v].double(), X), d["K"][:, v].double())
            e.append((p - d[f"xc{v + 1}"].double()).norm(dim=-1))
        return float(torch.cat(e, -1).median())

    def kornia_tri(d):
        return kep.triangulate_points(d["P1"], d["P2"], d["x1"], d["x2"])

    cases.append(Case(
        "triangulate_2view", 1, _tri,
        lambda d: tri.triangulate_two_view(d["P1"], d["P2"], d["x1"], d["x2"]).X, tri_err,
        batched_peers={"kornia": (kornia_tri, tri_err)},
        call_peers={"opencv": (
            lambda d, i: cv2.triangulatePoints(_np(d["P1"][i]), _np(d["P2"][i]), _np(d["x1"][i]).T, _np(d["x2"][i]).T),
            lambda d, outs: tri_err(d, torch.tensor(np.stack([(o[:3] / o[3:]).T for o in outs]))))},
    ))
    return cases


def run(args) -> dict:
    dtype = getattr(torch, args.dtype)
    cases = [c for c in make_cases() if not args.solvers or c.name in args.solvers]
    rows, results = [], []
    for c in cases:
        for batch in args.batches:
            d = c.make(batch, 0, dtype, args.device)
            sec = time_call(lambda: c.ours(d), args.device, min_time=args.min_time)
            entry = {"solver": c.name, "impl": "torch3dv", "batch": batch, "n": c.n, "solves_per_s": batch / sec}
            results.append(entry)
            for pname, (fn, _) in c.batched_peers.items():
                try:
                    psec = time_call(lambda: fn(d), args.device, min_time=args.min_time)
                    results.append({"solver": c.name, "impl": pname, "batch": batch, "n": c.n,
                                    "solves_per_s": batch / psec})
                except Exception as exc:  # a peer failing is reported, not fatal
                    results.append({"solver": c.name, "impl": pname, "batch": batch, "error": repr(exc)[:120]})
        # per-call peers: a loop of single-problem calls (CPU)
        dcpu = c.make(args.call_problems, 0, torch.float64, "cpu")
        for pname, (fn, _) in c.call_peers.items():
            sec = time_call(lambda: [fn(dcpu, i) for i in range(args.call_problems)], "cpu", min_time=args.min_time)
            results.append({"solver": c.name, "impl": pname, "batch": "per-call", "n": c.n,
                            "solves_per_s": args.call_problems / sec})
        # accuracy on the same noisy inputs for everyone
        da = c.make(args.accuracy_problems, 1, dtype, args.device)
        acc = {"torch3dv": c.ours_error(da, c.ours(da))}
        for pname, (fn, err) in c.batched_peers.items():
            try:
                acc[pname] = err(da, fn(da))
            except Exception as exc:
                acc[pname] = float("nan")
                print(f"[{c.name}] {pname} accuracy failed: {exc!r}"[:200], file=sys.stderr)
        da64 = c.make(args.accuracy_problems, 1, torch.float64, "cpu")
        for pname, (fn, err) in c.call_peers.items():
            acc[pname] = err(da64, [fn(da64, i) for i in range(args.accuracy_problems)])
        for r in results:
            if r["solver"] == c.name and r["impl"] in acc:
                r["median_error"] = acc[r["impl"]]
        for impl, e in acc.items():
            row = {"solver": c.name, "impl": impl, "median_err": e}
            for r in results:
                if r["solver"] == c.name and r["impl"] == impl and "solves_per_s" in r:
                    row[f"/s @{r['batch']}"] = r["solves_per_s"]
            rows.append(row)
    cols = ["solver", "impl"] + [f"/s @{b}" for b in args.batches] + ["/s @per-call", "median_err"]
    print(f"\nsolves per second ({args.device}, {args.dtype}; per-call = a Python loop of single calls) and "
          f"median held-out error (px; rigid: mm) at {NOISE} px noise\n")
    print_table(rows, cols)
    return {"args": vars(args), "results": results}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solvers", nargs="*", default=None)
    p.add_argument("--batches", nargs="*", type=int, default=[1, 1000, 100000])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--accuracy-problems", type=int, default=500)
    p.add_argument("--call-problems", type=int, default=200)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    payload = run(args)
    path = write_json("solvers" + ("" if args.device == "cpu" else f"_{args.device}"), payload, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
