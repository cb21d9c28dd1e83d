"""Tests of the PnP solvers: P3P (Lambda Twist), EPnP, DLT and LM refinement."""

import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch3dv.camera.pinhole import bearing_vectors
from torch3dv.geometry.metrics import rotation_error
from torch3dv.geometry.rotations import axis_angle_to_matrix
from torch3dv.geometry.transforms import transform_points
from torch3dv.solvers.pnp.dlt import pnp_dlt
from torch3dv.solvers.pnp.epnp import epnp
from torch3dv.solvers.pnp.p3p import p3p
from torch3dv.solvers.pnp.refine import refine_pnp
from torch3dv.testing import absolute_pose_scene

F64 = torch.float64


def _front(scene):
    """Problems whose ground-truth points are all in front of the camera (planar scenes may violate it)."""
    z = transform_points(scene.R, scene.t, scene.X)[..., 2]
    return (z > 0).all(-1)


def _pose_err(R, t, scene):
    rel_t = (t - scene.t).norm(dim=-1) / scene.t.norm(dim=-1)
    return rotation_error(R, scene.R), rel_t


def _tol(dtype, f64, f32):
    return f64 if dtype == F64 else f32


# ----------------------------------------------------------------------------------------------------------
# noise-free recovery
# ----------------------------------------------------------------------------------------------------------


def test_p3p_exact(dtype):
    s = absolute_pose_scene(batch=500, num_points=3, dtype=dtype, seed=1)
    sol = p3p(bearing_vectors(s.x, s.K), s.X)
    assert sol.R.shape == (500, 4, 3, 3) and sol.t.shape == (500, 4, 3) and sol.valid.shape == (500, 4)
    er = rotation_error(sol.R, s.R[:, None]) + (sol.t - s.t[:, None]).norm(dim=-1) / s.t.norm(dim=-1)[:, None]
    er = torch.where(sol.valid, er, torch.full_like(er, math.inf))
    best = er.min(-1).values
    assert sol.success.all()
    if dtype == F64:
        assert best.max() < 1e-6
    else:
        assert best.median() < 1e-4 and torch.quantile(best, 0.98) < 5e-3
    # valid solutions come first, invalid slots are (I, 0)
    assert (sol.valid[:, :-1].int() >= sol.valid[:, 1:].int()).all()
    eye = torch.eye(3, dtype=dtype)
    assert torch.equal(sol.R[~sol.valid], eye.expand(int((~sol.valid).sum()), 3, 3))
    # every valid solution reprojects the three points exactly
    Xc = torch.einsum("bsij,bnj->bsni", sol.R, s.X) + sol.t[:, :, None]
    yb = bearing_vectors(s.x, s.K)[:, None]
    cosang = (Xc / Xc.norm(dim=-1, keepdim=True) * yb).sum(-1)
    assert ((1 - cosang)[sol.valid] < _tol(dtype, 1e-12, 1e-4)).all()


@pytest.mark.parametrize("planar", [False, True])
def test_epnp_exact(dtype, planar):
    s = absolute_pose_scene(batch=64, num_points=12, dtype=dtype, planar=planar, seed=2)
    front = _front(s)
    r = epnp(s.x, s.X, s.K)
    er, et = _pose_err(r.R, r.t, s)
    assert r.success[front].all()
    tol = _tol(dtype, 1e-6, 2e-3)
    assert er[front].max() < tol and et[front].max() < tol
    # rotations are proper
    torch.testing.assert_close(r.R @ r.R.transpose(-1, -2), torch.eye(3, dtype=dtype).expand_as(r.R),
                               atol=_tol(dtype, 1e-12, 1e-5), rtol=0)


@pytest.mark.parametrize("n", [4, 5])
@pytest.mark.parametrize("planar", [False, True])
def test_epnp_exact_few_points(n, planar):
    s = absolute_pose_scene(batch=64, num_points=n, dtype=F64, planar=planar, seed=3)
    front = _front(s)
    r = epnp(s.x, s.X, s.K)
    er, et = _pose_err(r.R, r.t, s)
    assert r.success[front].all()
    assert er[front].max() < 1e-6 and et[front].max() < 1e-6


def test_dlt_exact(dtype):
    s = absolute_pose_scene(batch=64, num_points=10, dtype=dtype, seed=4)
    r = pnp_dlt(s.x, s.X, s.K)
    er, et = _pose_err(r.R, r.t, s)
    assert r.success.all()
    tol = _tol(dtype, 1e-6, 5e-3)
    assert er.max() < tol and et.max() < tol


def test_refine_exact_from_perturbed_start(dtype):
    s = absolute_pose_scene(batch=32, num_points=15, dtype=dtype, seed=5)
    g = torch.Generator().manual_seed(0)
    dR = axis_angle_to_matrix((0.05 * torch.randn(32, 3, generator=g, dtype=F64)).to(dtype))
    R0, t0 = dR @ s.R, s.t + (0.1 * torch.randn(32, 3, generator=g, dtype=F64)).to(dtype)
    r = refine_pnp(R0, t0, s.x, s.X, s.K, iterations=20)
    er, et = _pose_err(r.R, r.t, s)
    assert r.success.all()
    tol = _tol(dtype, 1e-9, 1e-4)
    assert er.max() < tol and et.max() < tol


# ----------------------------------------------------------------------------------------------------------
# batching, masks, weights
# ----------------------------------------------------------------------------------------------------------


def _solvers():
    return {
        "epnp": lambda x, X, K, **kw: epnp(x, X, K, **kw),
        "dlt": lambda x, X, K, **kw: pnp_dlt(x, X, K, **kw),
        "refine": lambda x, X, K, **kw: refine_pnp(*epnp(x, X, K, **kw)[:2], x, X, K, **kw),
    }


@pytest.mark.parametrize("name", ["epnp", "dlt", "refine"])
def test_leading_batch_dims(name):
    fn = _solvers()[name]
    s = absolute_pose_scene(batch=6, num_points=10, noise_px=1.0, dtype=F64, seed=6)
    flat = fn(s.x, s.X, s.K)
    nested = fn(s.x.reshape(2, 3, 10, 2), s.X.reshape(2, 3, 10, 3), s.K.reshape(2, 3, 3, 3))
    assert nested.R.shape == (2, 3, 3, 3) and nested.success.shape == (2, 3)
    torch.testing.assert_close(nested.R.reshape(6, 3, 3), flat.R, atol=1e-10, rtol=0)
    torch.testing.assert_close(nested.t.reshape(6, 3), flat.t, atol=1e-10, rtol=0)
    one = fn(s.x[:1], s.X[:1], s.K[:1])  # a batch of one keeps its batch dim
    assert one.R.shape == (1, 3, 3) and one.success.shape == (1,)


@pytest.mark.parametrize("name", ["epnp", "dlt", "refine"])
def test_mask_nan_padding_and_zero_weights(name):
    fn = _solvers()[name]
    s = absolute_pose_scene(batch=4, num_points=12, noise_px=1.0, dtype=F64, seed=7)
    keep = torch.ones(4, 12, dtype=torch.bool)
    keep[:, 8:] = False
    keep[1, 2] = False
    ref = [fn(s.x[i:i + 1, keep[i]], s.X[i:i + 1, keep[i]], s.K[i:i + 1]) for i in range(4)]
    x_pad, X_pad = s.x.clone(), s.X.clone()
    x_pad[~keep] = float("nan")
    X_pad[~keep] = float("nan")
    masked = fn(x_pad, X_pad, s.K, mask=keep)
    zero_w = fn(s.x, s.X, s.K, weights=keep.to(F64))
    for i in range(4):
        for out in (masked, zero_w):
            torch.testing.assert_close(out.R[i], ref[i].R[0], atol=1e-9, rtol=0)
            torch.testing.assert_close(out.t[i], ref[i].t[0], atol=1e-8, rtol=0)
    assert masked.success.all()


def test_weights_act_like_multiplicity():
    s = absolute_pose_scene(batch=3, num_points=8, noise_px=1.0, dtype=F64, seed=8)
    w = torch.ones(3, 8, dtype=F64)
    w[:, 0] = 2.0
    dup = lambda v: torch.cat([v, v[:, :1]], dim=1)
    for fn in (epnp, pnp_dlt):
        a = fn(s.x, s.X, s.K, weights=w)
        b = fn(dup(s.x), dup(s.X), s.K)
        torch.testing.assert_close(a.R, b.R, atol=1e-9, rtol=0)
        torch.testing.assert_close(a.t, b.t, atol=1e-8, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# accuracy against OpenCV / PoseLib on noisy data
# ----------------------------------------------------------------------------------------------------------


def _cv_pnp(s, flag):
    Rs, ts = [], []
    for i in range(s.x.shape[0]):
        _, rv, tv = cv2.solvePnP(s.X[i].numpy(), s.x[i].numpy(), s.K[i].numpy(), None, flags=flag)
        Rs.append(cv2.Rodrigues(rv)[0])
        ts.append(tv[:, 0])
    return torch.tensor(np.array(Rs)), torch.tensor(np.array(ts))


def _medians(R, t, s, keep):
    er, et = _pose_err(R, t, s)
    return float(er[keep].median()), float(et[keep].median())


@pytest.mark.parametrize("n,planar", [(10, False), (50, False), (20, True)])
def test_noisy_accuracy_vs_opencv(n, planar):
    s = absolute_pose_scene(batch=300, num_points=n, noise_px=1.0, planar=planar, dtype=F64, seed=9)
    keep = _front(s)
    e = epnp(s.x, s.X, s.K)
    assert e.success[keep].all()
    ours = _medians(e.R, e.t, s, keep)
    peer = _medians(*_cv_pnp(s, cv2.SOLVEPNP_EPNP), s, keep)
    assert ours[0] <= 1.05 * peer[0] and ours[1] <= 1.05 * peer[1], (ours, peer)
    rf = refine_pnp(e.R, e.t, s.x, s.X, s.K)
    assert rf.success[keep].all()
    ours_r = _medians(rf.R, rf.t, s, keep)
    for flag in (cv2.SOLVEPNP_ITERATIVE, cv2.SOLVEPNP_SQPNP):
        peer_r = _medians(*_cv_pnp(s, flag), s, keep)
        assert ours_r[0] <= 1.05 * peer_r[0] and ours_r[1] <= 1.05 * peer_r[1], (flag, ours_r, peer_r)


def test_dlt_noisy_accuracy_vs_kornia():
    from kornia.geometry.calibration import solve_pnp_dlt

    s = absolute_pose_scene(batch=300, num_points=20, noise_px=1.0, dtype=F64, seed=10)
    keep = torch.ones(300, dtype=torch.bool)
    d = pnp_dlt(s.x, s.X, s.K)
    assert d.success.all()
    P = solve_pnp_dlt(s.X, s.x, s.K)
    ours = _medians(d.R, d.t, s, keep)
    peer = _medians(P[:, :, :3], P[:, :, 3], s, keep)
    assert ours[0] <= 1.05 * peer[0] and ours[1] <= 1.05 * peer[1], (ours, peer)


def test_p3p_solution_set_matches_poselib_and_opencv():
    poselib = pytest.importorskip("poselib")
    s = absolute_pose_scene(batch=100, num_points=3, noise_px=0.0, dtype=F64, seed=11)
    y = bearing_vectors(s.x, s.K)
    sol = p3p(y, s.X)
    for i in range(100):
        ref = poselib.p3p(y[i].numpy(), s.X[i].numpy())
        ours = [(sol.R[i, j], sol.t[i, j]) for j in range(4) if sol.valid[i, j]]
        assert len(ours) == len(ref)
        for pose in ref:
            Rr, tr = torch.tensor(pose.R), torch.tensor(pose.t)
            d = min(float(rotation_error(R, Rr) + (t - tr).norm() / tr.norm()) for R, t in ours)
            assert d < 1e-7
        # OpenCV's P3P (Ding et al.) must find the ground truth, and so must we
        _, rvecs, tvecs = cv2.solveP3P(s.X[i].numpy(), s.x[i].numpy(), s.K[i].numpy(), None, cv2.SOLVEPNP_P3P)
        cv_poses = [(torch.tensor(cv2.Rodrigues(r)[0]), torch.tensor(t[:, 0])) for r, t in zip(rvecs, tvecs)]
        for Rc, tc in cv_poses:
            d = min(float(rotation_error(R, Rc) + (t - tc).norm() / tc.norm()) for R, t in ours)
            assert d < 1e-6


# ----------------------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------------------


def test_p3p_gradcheck():
    s = absolute_pose_scene(batch=2, num_points=3, dtype=F64, seed=12)
    y = bearing_vectors(s.x, s.K).requires_grad_()
    X = s.X.clone().requires_grad_()
    valid = p3p(y, X).valid

    def fn(y, X):
        r = p3p(y, X)
        return r.R[valid], r.t[valid]

    assert torch.autograd.gradcheck(fn, (y, X))


@pytest.mark.parametrize("planar", [False, True])
def test_epnp_gradcheck(planar):
    s = absolute_pose_scene(batch=2, num_points=7, noise_px=0.5, planar=planar, dtype=F64, seed=13)
    x, X = s.x.clone().requires_grad_(), s.X.clone().requires_grad_()
    w = (torch.rand(2, 7, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, X, w: tuple(epnp(x, X, s.K, weights=w)[:2]), (x, X, w),
                                    fast_mode=True)


def test_dlt_gradcheck():
    s = absolute_pose_scene(batch=2, num_points=7, noise_px=0.5, dtype=F64, seed=14)
    x, X = s.x.clone().requires_grad_(), s.X.clone().requires_grad_()
    w = (torch.rand(2, 7, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, X, w: tuple(pnp_dlt(x, X, s.K, weights=w)[:2]), (x, X, w),
                                    fast_mode=True)


def test_refine_gradcheck():
    """Noise-free data (zero residual at the optimum): the implicit gradient is exact."""
    s = absolute_pose_scene(batch=2, num_points=6, dtype=F64, seed=15)
    R0 = axis_angle_to_matrix(torch.tensor([0.02, -0.01, 0.03], dtype=F64)) @ s.R
    t0 = s.t + 0.05
    x, X = s.x.clone().requires_grad_(), s.X.clone().requires_grad_()
    K = s.K.clone().requires_grad_()
    fn = lambda x, X, K: tuple(refine_pnp(R0, t0, x, X, K, iterations=30)[:2])
    assert torch.autograd.gradcheck(fn, (x, X, K), fast_mode=True)


def test_refine_robust_loss_ignores_outliers():
    s = absolute_pose_scene(batch=8, num_points=40, noise_px=0.5, outlier_ratio=0.2, dtype=F64, seed=16)
    inl = s.inliers
    e = epnp(s.x, s.X, s.K, mask=inl)  # a clean start, as RANSAC would give
    plain = refine_pnp(e.R, e.t, s.x, s.X, s.K, iterations=30)
    robust = refine_pnp(e.R, e.t, s.x, s.X, s.K, iterations=30, loss="cauchy", loss_scale=2.0)
    oracle = refine_pnp(e.R, e.t, s.x, s.X, s.K, mask=inl, iterations=30)
    er_p, _ = _pose_err(plain.R, plain.t, s)
    er_r, _ = _pose_err(robust.R, robust.t, s)
    er_o, _ = _pose_err(oracle.R, oracle.t, s)
    assert er_r.median() < 0.2 * er_p.median()
    assert er_r.median() < 2.0 * er_o.median()


# ----------------------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(6, 30), st.booleans())
def test_property_epnp_refine_recover_random_poses(seed, n, planar):
    s = absolute_pose_scene(batch=4, num_points=n, planar=planar, dtype=F64, seed=seed)
    front = _front(s)
    e = epnp(s.x, s.X, s.K)
    er, et = _pose_err(e.R, e.t, s)
    assert e.success[front].all()
    assert er[front].max() < 1e-6 and et[front].max() < 1e-6
    assert not e.success[~front].any()  # some ground-truth point behind the camera
    if not planar:
        d = pnp_dlt(s.x, s.X, s.K)
        er, et = _pose_err(d.R, d.t, s)
        assert d.success.all() and er.max() < 1e-6 and et.max() < 1e-6


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_property_p3p_contains_truth_and_is_cheiral(seed):
    s = absolute_pose_scene(batch=8, num_points=3, dtype=F64, seed=seed)
    sol = p3p(bearing_vectors(s.x, s.K), s.X)
    er = rotation_error(sol.R, s.R[:, None]) + (sol.t - s.t[:, None]).norm(dim=-1) / s.t.norm(dim=-1)[:, None]
    er = torch.where(sol.valid, er, torch.full_like(er, math.inf))
    assert (er.min(-1).values < 1e-6).all()
    z = torch.einsum("bsij,bnj->bsni", sol.R, s.X)[..., 2] + sol.t[..., None, 2]
    assert (z[sol.valid] > 0).all()


# ----------------------------------------------------------------------------------------------------------
# degenerate and bad input
# ----------------------------------------------------------------------------------------------------------


def _check_failed_and_isolated(fn, x, X, K, bad, **kw):
    """Problem ``bad`` must fail with finite (I, 0) output while the others equal their solo results."""
    out = fn(x, X, K, **kw)
    assert not out.success[bad]
    assert torch.isfinite(out.R).all() and torch.isfinite(out.t).all()
    torch.testing.assert_close(out.R[bad], torch.eye(3, dtype=x.dtype))
    others = [i for i in range(x.shape[0]) if i != bad]
    kw_o = {k: v[others] for k, v in kw.items()}
    ref = fn(x[others], X[others], K[others], **kw_o)
    torch.testing.assert_close(out.R[others], ref.R, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.t[others], ref.t, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.success[others], ref.success)
    return out


def _degenerate_cases():
    s = absolute_pose_scene(batch=4, num_points=10, noise_px=0.5, dtype=F64, seed=17)
    cases = {}
    X = s.X.clone()
    X[1] = X[1, :1] + torch.linspace(0, 1, 10, dtype=F64)[:, None] * (X[1, 1] - X[1, 0])  # collinear
    cases["collinear"] = (s.x, X, s.K, 1, {})
    X = s.X.clone()
    X[2] = X[2, :1].expand(10, 3)  # coincident
    cases["coincident"] = (s.x, X, s.K, 2, {})
    x = s.x.clone()
    x[0, 3] = float("nan")  # NaN in a used row
    cases["nan"] = (x, s.X, s.K, 0, {})
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[3, 2:] = False  # too few valid points (2: under-determined for every solver)
    cases["too_few"] = (s.x, s.X, s.K, 3, {"mask": mask})
    # points behind the camera: mirror the camera-frame points of problem 1 through the camera centre
    Xc = transform_points(s.R, s.t, s.X)
    Xc[1, :5] = -Xc[1, :5]
    Rinv = s.R.transpose(-1, -2)
    X = (Xc - s.t[:, None]) @ Rinv.transpose(-1, -2)
    cases["behind"] = (s.x, X, s.K, 1, {})
    return cases


@pytest.mark.parametrize("case", ["collinear", "coincident", "nan", "too_few", "behind"])
@pytest.mark.parametrize("name", ["epnp", "dlt", "refine"])
def test_degenerate_input_fails_gracefully(name, case):
    x, X, K, bad, kw = _degenerate_cases()[case]
    if name == "refine":
        s = absolute_pose_scene(batch=4, num_points=10, noise_px=0.5, dtype=F64, seed=17)

        def fn(x, X, K, **kw):
            idx = torch.arange(4) if x.shape[0] == 4 else torch.tensor([i for i in range(4) if i != bad])
            return refine_pnp(s.R[idx], s.t[idx], x, X, K, **kw)
    else:
        fn = _solvers()[name]
    if name == "refine" and case in ("collinear", "coincident"):
        # LM from a given pose has no degeneracy test for the point configuration; it must stay finite
        out = fn(x, X, K, **kw)
        assert torch.isfinite(out.R).all() and torch.isfinite(out.t).all()
        return
    _check_failed_and_isolated(fn, x, X, K, bad, **kw)


def test_p3p_degenerate():
    s = absolute_pose_scene(batch=4, num_points=3, dtype=F64, seed=18)
    y = bearing_vectors(s.x, s.K)
    X = s.X.clone()
    X[1, 2] = 0.5 * (X[1, 0] + X[1, 1])  # collinear world points
    X[2, 1] = X[2, 0]  # coincident
    y = y.clone()
    y[3, 0] = float("nan")
    sol = p3p(y, X)
    assert sol.success.tolist() == [True, False, False, False]
    assert torch.isfinite(sol.R).all() and torch.isfinite(sol.t).all()
    ref = p3p(y[:1], X[:1])
    torch.testing.assert_close(sol.R[:1], ref.R)


def test_too_few_columns():
    s = absolute_pose_scene(batch=2, num_points=3, dtype=F64, seed=19)
    assert not epnp(s.x, s.X, s.K).success.any()
    s = absolute_pose_scene(batch=2, num_points=5, dtype=F64, seed=19)
    out = pnp_dlt(s.x, s.X, s.K)
    assert not out.success.any() and out.R.shape == (2, 3, 3)


def test_planar_points_fail_dlt():
    s = absolute_pose_scene(batch=2, num_points=10, planar=True, dtype=F64, seed=20)
    assert not pnp_dlt(s.x, s.X, s.K).success.any()


def test_bad_arguments_raise():
    s = absolute_pose_scene(batch=2, num_points=8, dtype=F64, seed=21)
    for fn in (epnp, pnp_dlt):
        with pytest.raises(ValueError):
            fn(s.x[..., :1], s.X, s.K)  # wrong last dim
        with pytest.raises(ValueError):
            fn(s.x, s.X[:, :7], s.K)  # mismatched N
        with pytest.raises(ValueError):
            fn(s.x.float(), s.X, s.K)  # mixed dtypes
        with pytest.raises(ValueError):
            fn(s.x.long(), s.X.long(), s.K.long())  # integer
        with pytest.raises(ValueError):
            fn(s.x, s.X, s.K[:, :2])  # bad K
        with pytest.raises(ValueError):
            fn(s.x, s.X, s.K, mask=torch.ones(2, 8))  # non-bool mask
        with pytest.raises(ValueError):
            fn(s.x, s.X, torch.eye(3, dtype=F64).expand(3, 3, 3))  # K batch mismatch
    with pytest.raises(ValueError):
        refine_pnp(s.R[:1], s.t, s.x, s.X, s.K)
    with pytest.raises(ValueError):
        refine_pnp(s.R.float(), s.t, s.x, s.X, s.K)
    y = bearing_vectors(s.x[:, :3], s.K)
    with pytest.raises(ValueError):
        p3p(y, s.X[:, :4])
    with pytest.raises(ValueError):
        p3p(y.float(), s.X[:, :3])
    with pytest.raises(ValueError):
        p3p(y[..., :2], s.X[:, :3, :2])
    if torch.cuda.is_available():
        with pytest.raises(ValueError):
            epnp(s.x.cuda(), s.X, s.K)


def test_shared_intrinsics_broadcast():
    s = absolute_pose_scene(batch=3, num_points=8, dtype=F64, seed=22)
    K = s.K[0]
    x = s.x.clone()
    # re-project with the shared K
    Xc = transform_points(s.R, s.t, s.X)
    x = (Xc[..., :2] / Xc[..., 2:]) * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    for fn in (epnp, pnp_dlt):
        r = fn(x, s.X, K)
        er, _ = _pose_err(r.R, r.t, s)
        assert r.success.all() and er.max() < 1e-6


def test_epnp_mixed_planar_and_general_batch():
    """Planar, general and 4-point problems in one batch give the same results as solved separately."""
    a = absolute_pose_scene(batch=3, num_points=9, noise_px=0.5, dtype=F64, seed=23)
    b = absolute_pose_scene(batch=3, num_points=9, noise_px=0.5, planar=True, dtype=F64, seed=24)
    x, X, K = (torch.cat([getattr(a, k), getattr(b, k)]) for k in ("x", "X", "K"))
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[1, 4:] = False  # a 4-point general problem
    out = epnp(x, X, K, mask=mask)
    for i in range(6):
        ref = epnp(x[i:i + 1], X[i:i + 1], K[i:i + 1], mask=mask[i:i + 1])
        torch.testing.assert_close(out.R[i], ref.R[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out.t[i], ref.t[0], atol=1e-10, rtol=0)
    s_all = [a, b]
    for i in range(6):
        s = s_all[i // 3]
        er = rotation_error(out.R[i], s.R[i % 3])
        assert er < 0.05


def test_device_follows_input(device):
    """Every solver runs on the input's device and matches the CPU result (only CPU when no GPU)."""
    s = absolute_pose_scene(batch=4, num_points=10, noise_px=0.5, dtype=F64, seed=25)
    y = bearing_vectors(s.x[:, :3], s.K)
    mv = lambda *ts: [t.to(device) for t in ts]
    x, X, K, R, t = mv(s.x, s.X, s.K, s.R, s.t)
    outs = {
        "p3p": (p3p(*mv(y, s.X[:, :3])), p3p(y, s.X[:, :3])),
        "epnp": (epnp(x, X, K), epnp(s.x, s.X, s.K)),
        "dlt": (pnp_dlt(x, X, K), pnp_dlt(s.x, s.X, s.K)),
        "refine": (refine_pnp(R, t, x, X, K), refine_pnp(s.R, s.t, s.x, s.X, s.K)),
    }
    for name, (dev_out, cpu_out) in outs.items():
        assert dev_out.R.device.type == torch.device(device).type, name
        torch.testing.assert_close(dev_out.R.cpu(), cpu_out.R, atol=1e-8, rtol=0)
        torch.testing.assert_close(dev_out.t.cpu(), cpu_out.t, atol=1e-7, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# the entry-major EPnP path (non-planar, >= 6 points) against the general (eigh-based) code
# ----------------------------------------------------------------------------------------------------------


def _epnp_both(s, dtype):
    """EPnP of a non-planar scene by the entry-major path and by the general path on the same inputs."""
    from torch3dv.solvers.pnp._common import prepare_pnp
    from torch3dv.solvers.pnp._epnp_general import epnp_general
    from torch3dv.solvers.pnp.epnp import _epnp_rest

    prep = prepare_pnp(s.x, s.X, s.K, None, None)
    fast = epnp_general(prep.xn, prep.X, prep.w, prep.ok)
    ref = _epnp_rest(prep.xn, prep.X, prep.w, prep.ok)
    return fast, ref


@pytest.mark.parametrize("n,noise", [(6, 0.0), (12, 0.0), (10, 1.0), (50, 1.0)])
def test_epnp_fast_path_matches_general_path(dtype, n, noise):
    s = absolute_pose_scene(batch=500, num_points=n, noise_px=noise, dtype=dtype, seed=31)
    (R, t, ok, handled), (Rr, tr, okr) = _epnp_both(s, dtype)
    assert handled.all() and torch.equal(ok, okr)
    # same iterates up to rounding (Gauss-Newton in the depths instead of the eigenvector coefficients)
    dR = (R - Rr).flatten(1).abs().amax(-1)
    dt = (t - tr).abs().amax(-1) / tr.norm(dim=-1)
    tol = _tol(dtype, 1e-8, 2e-3)
    assert dR.max() < tol and dt.max() < tol, (dR.max(), dt.max())
    assert dR.median() < _tol(dtype, 1e-13, 1e-5)


def test_epnp_fast_path_chunks(monkeypatch):
    import importlib

    mod = importlib.import_module("torch3dv.solvers.pnp._epnp_general")
    s = absolute_pose_scene(batch=50, num_points=8, noise_px=0.5, dtype=F64, seed=32)
    ref = epnp(s.x, s.X, s.K)
    monkeypatch.setattr(mod, "_CHUNK", 7)
    out = epnp(s.x, s.X, s.K)
    assert torch.equal(out.success, ref.success)
    torch.testing.assert_close(out.R, ref.R, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.t, ref.t, atol=1e-12, rtol=0)


def test_epnp_gradients_mixed_batch():
    """Gradients through a batch mixing the entry-major path (general, >= 6 points) with problems it hands on
    (planar, 5 used points, collinear): finite everywhere, isolated per problem, and correct (gradcheck)."""
    a = absolute_pose_scene(batch=2, num_points=7, noise_px=0.5, dtype=F64, seed=33)
    b = absolute_pose_scene(batch=1, num_points=7, noise_px=0.5, planar=True, dtype=F64, seed=34)
    x, X, K = (torch.cat([getattr(a, k), getattr(b, k), getattr(a, k)[:1]]) for k in ("x", "X", "K"))
    X = X.clone()
    X[3] = X[3, :1] + torch.linspace(0, 1, 7, dtype=F64)[:, None] * torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False  # 5 used points
    xg, Xg = x.clone().requires_grad_(), X.clone().requires_grad_()
    out = epnp(xg, Xg, K, mask=mask)
    assert out.success.tolist() == [True, True, True, False]
    (out.R.sum() + out.t.sum()).backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(Xg.grad).all()
    x0, X0 = x[:1].clone().requires_grad_(), X[:1].clone().requires_grad_()
    alone = epnp(x0, X0, K[:1])
    (alone.R.sum() + alone.t.sum()).backward()
    torch.testing.assert_close(xg.grad[:1], x0.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(Xg.grad[:1], X0.grad, atol=1e-10, rtol=1e-8)
    # a general problem next to a failing one (its stand-in runs through the entry-major path)
    idx = [0, 3]
    assert torch.autograd.gradcheck(lambda x, X: tuple(epnp(x, X, K[idx], mask=mask[idx])[:2]),
                                    (x[idx].clone().requires_grad_(), X[idx].clone().requires_grad_()),
                                    fast_mode=True)
