import math

import cv2
import numpy as np
import pytest
import torch
from conftest import data_path
from hypothesis import given, settings
from hypothesis import strategies as st

from torch3dv.camera.pinhole import pixels_to_normalized
from torch3dv.geometry import camera_center, projection_matrix
from torch3dv.solvers.triangulation import (
    Triangulation,
    camera_centers_from_projections,
    cheirality,
    reprojection_errors,
    triangulate_midpoint,
    triangulate_multiview,
    triangulate_two_view,
    triangulation_angle,
)
from torch3dv.testing import multi_view_scene


def _scene(dtype=torch.float64, **kw):
    sc = multi_view_scene(dtype=dtype, **kw)
    return sc, projection_matrix(sc.K, sc.R, sc.t)


def _rel_err(X, X_gt):
    return (X - X_gt).norm(dim=-1) / X_gt.norm(dim=-1).clamp_min(1.0)


@pytest.mark.parametrize("method", ["closed_form", "eigh"])
def test_exact_recovery_all_views(dtype, method):
    sc, P = _scene(dtype, batch=10, num_views=5, num_points=60, seed=1)
    r = triangulate_multiview(P, sc.x_clean, method=method)
    assert isinstance(r, Triangulation) and r.X.shape == (10, 60, 3) and r.X.dtype == dtype
    assert r.success.all()
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    assert _rel_err(r.X, sc.X).max() < tol


def test_exact_recovery_random_visibility(dtype):
    sc, P = _scene(dtype, batch=8, num_views=6, num_points=80, seed=2)
    g = torch.Generator().manual_seed(0)
    vis = sc.visible & (torch.rand(sc.visible.shape, generator=g) < 0.5)
    x = torch.where(vis[..., None], sc.x_clean, torch.full_like(sc.x_clean, float("nan")))  # NaN padding
    r = triangulate_multiview(P, x, visible=vis)
    nvis = vis.sum(1)
    assert (r.success == (nvis >= 2)).all()
    tol = 1e-6 if dtype == torch.float64 else 2e-4
    assert _rel_err(r.X, sc.X)[r.success].max() < tol
    assert (r.X[~r.success] == 0).all()
    # zero weights act like invisibility, other weights don't change an exact solution
    w = vis.to(dtype) * (torch.rand(vis.shape, generator=g, dtype=dtype) + 0.5)
    r2 = triangulate_multiview(P, torch.nan_to_num(x), weights=w)
    assert (r2.success == r.success).all()
    assert _rel_err(r2.X, sc.X)[r2.success].max() < tol


def test_batched_dims_and_two_view_wrapper():
    sc, P = _scene(batch=6, num_views=2, num_points=30, noise_px=0.5, seed=3)
    flat = triangulate_multiview(P, sc.x)
    nested = triangulate_multiview(P.reshape(2, 3, 2, 3, 4), sc.x.reshape(2, 3, 2, 30, 2))
    assert nested.X.shape == (2, 3, 30, 3) and nested.success.shape == (2, 3, 30)
    torch.testing.assert_close(nested.X.reshape(6, 30, 3), flat.X)
    tv = triangulate_two_view(P[:, 0], P[:, 1], sc.x[:, 0], sc.x[:, 1])
    torch.testing.assert_close(tv.X, flat.X)


def test_two_view_matches_opencv_on_noisy_data():
    sc, P = _scene(batch=4, num_views=2, num_points=200, noise_px=1.0, seed=4)
    r = triangulate_two_view(P[:, 0], P[:, 1], sc.x[:, 0], sc.x[:, 1])
    assert r.success.all()
    for b in range(4):
        Xh = cv2.triangulatePoints(P[b, 0].numpy(), P[b, 1].numpy(), sc.x[b, 0].numpy().T.copy(),
                                   sc.x[b, 1].numpy().T.copy())
        Xcv = torch.from_numpy((Xh[:3] / Xh[3]).T)
        # both are linear DLT; the row normalisations differ, so the points agree to O(noise) only
        e_ours = reprojection_errors(r.X[b], P[b], sc.x[b])
        e_cv = reprojection_errors(Xcv, P[b], sc.x[b])
        assert float(e_ours.median()) < 1.2 * float(e_cv.median())
        assert float(e_ours.mean()) < 1.2 * float(e_cv.mean())
        assert float(((r.X[b] - Xcv).norm(dim=-1)).median()) < 5e-3  # metres, for points ~4 m away
        # and both are close to the ground truth
        assert float((r.X[b] - sc.X[b]).norm(dim=-1).median()) < 2e-2


def test_methods_agree_on_noisy_data():
    sc, P = _scene(batch=5, num_views=4, num_points=50, noise_px=1.0, seed=5)
    a = triangulate_multiview(P, sc.x, sc.visible)
    b = triangulate_multiview(P, sc.x, sc.visible, method="eigh")
    assert (a.success == b.success).all()
    torch.testing.assert_close(a.X, b.X, atol=1e-9, rtol=1e-9)


def test_midpoint_exact_and_bearing_inputs(dtype):
    sc = multi_view_scene(batch=3, num_views=2, num_points=40, seed=6, dtype=dtype)
    xn1 = pixels_to_normalized(sc.x_clean[:, 0], sc.K[:, 0])
    xn2 = pixels_to_normalized(sc.x_clean[:, 1], sc.K[:, 1])
    R1, t1, R2, t2 = sc.R[:, 0], sc.t[:, 0], sc.R[:, 1], sc.t[:, 1]
    r = triangulate_midpoint(R1, t1, R2, t2, xn1, xn2)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    assert r.success.all() and _rel_err(r.X, sc.X).max() < tol
    f1 = torch.cat([xn1, torch.ones_like(xn1[..., :1])], -1) * 3.0  # any length
    f2 = torch.cat([xn2, torch.ones_like(xn2[..., :1])], -1)
    f2 = f2 / f2.norm(dim=-1, keepdim=True)
    r2 = triangulate_midpoint(R1, t1, R2, t2, f1, f2)
    assert r2.success.all() and _rel_err(r2.X, sc.X).max() < tol
    # parallel rays from a pure translation: no intersection -> failure, others unaffected
    f2p = f1 @ R1 @ R2.transpose(-1, -2)  # same world direction as ray 1
    f2p[:, 5:] = f2[:, 5:]
    r3 = triangulate_midpoint(R1, t1, R2, t2, f1, f2p)
    assert not r3.success[:, :5].any() and r3.success[:, 5:].all() and torch.isfinite(r3.X).all()


def test_midpoint_hand_computed():
    eye = torch.eye(3, dtype=torch.float64)
    # camera 1 at the origin, camera 2 at C2 = (2, 0.2, 0) (t = -R C); skew rays whose common perpendicular
    # joins (1, 0, 1) and (1, 0.2, 1)
    R = eye[None]
    t1 = torch.zeros(1, 3, dtype=torch.float64)
    t2 = torch.tensor([[-2.0, -0.2, 0.0]], dtype=torch.float64)
    f1 = torch.tensor([[[1.0, 0.0, 1.0]]], dtype=torch.float64)
    f2 = torch.tensor([[[-1.0, 0.0, 1.0]]], dtype=torch.float64)
    r = triangulate_midpoint(R, t1, R, t2, f1, f2)
    torch.testing.assert_close(r.X, torch.tensor([[[1.0, 0.1, 1.0]]], dtype=torch.float64))


def test_cheirality_detects_points_behind():
    sc, _ = _scene(batch=2, num_views=3, num_points=20, seed=7)
    ch = cheirality(sc.X, sc.R, sc.t)
    assert ch.shape == (2, 3, 20) and ch.all()
    # reflect some points through camera 0 of problem 0: behind that camera
    C0 = camera_center(sc.R[0, 0], sc.t[0, 0])
    Xb = sc.X.clone()
    Xb[0, :4] = 2 * C0 - sc.X[0, :4]
    ch = cheirality(Xb, sc.R, sc.t)
    assert not ch[0, 0, :4].any() and ch[0, 0, 4:].all() and ch[1].all()


def test_triangulation_angle_hand_computed():
    X = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1e9], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    C = torch.tensor([[[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    a = triangulation_angle(X, C[:, :2])
    torch.testing.assert_close(a[0, 0], torch.tensor(math.pi / 2, dtype=torch.float64))
    assert float(a[0, 1]) < 1e-8  # far point: ~2 / 1e9
    torch.testing.assert_close(a[0, 2], torch.tensor(math.pi, dtype=torch.float64))  # between the cameras
    # three views: the max pair; the third centre coincides with the last point (ray of length 0 ignored)
    a3 = triangulation_angle(X, C)
    torch.testing.assert_close(a3[0, 0], torch.tensor(math.pi / 2, dtype=torch.float64))
    # visibility: with only one visible view the angle is 0
    vis = torch.tensor([[[True, True, True], [False, True, True], [False, True, True]]])
    a_v = triangulation_angle(X, C, visible=vis)
    assert float(a_v[0, 0]) == 0.0
    # against the ground-truth rays of a synthetic scene
    sc, _ = _scene(batch=1, num_views=2, num_points=5, seed=8)
    Cs = camera_center(sc.R, sc.t)
    u = Cs[0, 0] - sc.X[0]
    v = Cs[0, 1] - sc.X[0]
    ref = torch.acos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)))
    torch.testing.assert_close(triangulation_angle(sc.X, Cs)[0], ref)


def test_reprojection_errors():
    sc, P = _scene(batch=2, num_views=3, num_points=10, seed=9)
    e = reprojection_errors(sc.X, P, sc.x_clean)
    assert e.shape == (2, 3, 10) and e.max() < 1e-9
    x = sc.x_clean.clone()
    x[1, 2, 4] += torch.tensor([3.0, 4.0], dtype=torch.float64)
    e = reprojection_errors(sc.X, P, x)
    assert abs(float(e[1, 2, 4]) - 5.0) < 1e-9


def test_camera_centers_from_projections():
    sc, P = _scene(batch=3, num_views=4, num_points=2, seed=10)
    Ch, C = camera_centers_from_projections(P)
    torch.testing.assert_close(C, camera_center(sc.R, sc.t))
    assert (P @ Ch[..., None]).abs().max() < 1e-6 * Ch.abs().max()


def test_degenerate_cases_fail_alone(dtype):
    sc, P = _scene(dtype, batch=3, num_views=3, num_points=10, seed=11)
    x = sc.x_clean.clone()
    vis = torch.ones(3, 3, 10, dtype=torch.bool)
    # problem 0: all three cameras identical (zero baseline)
    P = P.clone()
    P[0, 1] = P[0, 0]
    P[0, 2] = P[0, 0]
    x[0, 1] = x[0, 0]
    x[0, 2] = x[0, 0]
    # problem 1: point 0 seen by one view only, point 1 by none; point 2 has a NaN in a visible row
    vis[1, 1:, 0] = False
    vis[1, :, 1] = False
    x[1, 0, 2, 0] = float("nan")
    x[1, :, 1] = float("nan")  # padding
    r = triangulate_multiview(P, x, vis)
    assert not r.success[0].any()
    assert r.success[1].tolist() == [False, False, False] + [True] * 7
    assert r.success[2].all()
    assert torch.isfinite(r.X).all()
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    assert _rel_err(r.X[1, 3:], sc.X[1, 3:]).max() < tol
    ref = triangulate_multiview(P[2:], sc.x_clean[2:])
    torch.testing.assert_close(r.X[2], ref.X[0])
    # two identical cameras -> failure, or an angle of ~0 flagged by triangulation_angle
    tv = triangulate_two_view(P[0, 0], P[0, 0], x[0, 0], x[0, 0])
    assert not tv.success.any()
    C = camera_centers_from_projections(P[0, :2])[1]
    assert float(triangulation_angle(sc.X[0], C).max()) < 1e-6
    # a non-finite camera matrix fails only the points that use it
    P2 = P[2:].clone()
    P2[0, 2, 0, 0] = float("inf")
    vis2 = torch.ones(1, 3, 10, dtype=torch.bool)
    vis2[0, 2, 5:] = False
    r2 = triangulate_multiview(P2, sc.x_clean[2:], vis2)
    assert r2.success[0].tolist() == [False] * 5 + [True] * 5


def test_input_errors():
    P = torch.randn(2, 3, 3, 4)
    x = torch.randn(2, 3, 5, 2)
    with pytest.raises(ValueError):
        triangulate_multiview(P[..., :3], x)
    with pytest.raises(ValueError):
        triangulate_multiview(P, x[..., :1])
    with pytest.raises(ValueError):
        triangulate_multiview(P, x[:, :2])  # view count mismatch
    with pytest.raises(ValueError):
        triangulate_multiview(P, x.double())
    with pytest.raises(ValueError):
        triangulate_multiview(P.int(), x.int())
    with pytest.raises(ValueError):
        triangulate_multiview(P, x.to("meta"))
    with pytest.raises(ValueError):
        triangulate_multiview(P, x, visible=torch.ones(2, 3, 5))  # not bool
    with pytest.raises(ValueError):
        triangulate_multiview(P, x, weights=torch.ones(2, 3, 4))
    with pytest.raises(ValueError):
        triangulate_two_view(P[:, 0], P[:, 1], x[:, 0], x[:, 1, :4])
    R = torch.eye(3).expand(2, 3, 3)
    with pytest.raises(ValueError):
        z = torch.zeros(2, 3)
        triangulate_midpoint(R, z, R, z, torch.randn(2, 4, 3), torch.randn(2, 4, 4))
    with pytest.raises(ValueError):
        cheirality(torch.randn(2, 5, 3), torch.eye(3).expand(3, 2, 3, 3), torch.zeros(3, 2, 3))
    with pytest.raises(ValueError):
        triangulation_angle(torch.randn(2, 5, 3), torch.randn(3, 4, 3))
    with pytest.raises(ValueError):
        reprojection_errors(torch.randn(2, 4, 3), P, x)


def test_gradcheck():
    sc, P = _scene(batch=1, num_views=3, num_points=4, noise_px=1.0, seed=12)
    P = P.clone().requires_grad_(True)
    x = sc.x.clone().requires_grad_(True)
    w = (torch.rand(1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda P, x, w: triangulate_multiview(P, x, weights=w).X, (P, x, w),
                                    atol=1e-6, rtol=1e-5)
    poses = (sc.R[:, 0], sc.t[:, 0], sc.R[:, 1], sc.t[:, 1])
    R1, t1, R2, t2 = (v.clone().requires_grad_(True) for v in poses)
    f1 = pixels_to_normalized(sc.x[:, 0], sc.K[:, 0]).requires_grad_(True)
    f2 = pixels_to_normalized(sc.x[:, 1], sc.K[:, 1]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: triangulate_midpoint(*a).X, (R1, t1, R2, t2, f1, f2))
    Xp = sc.X.clone().requires_grad_(True)
    C = camera_center(sc.R, sc.t).requires_grad_(True)
    assert torch.autograd.gradcheck(triangulation_angle, (Xp, C))
    assert torch.autograd.gradcheck(reprojection_errors, (Xp, P, x))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 7), st.floats(1.5, 20.0))
def test_property_random_rigs(seed, views, radius):
    sc, P = _scene(batch=2, num_views=views, num_points=20, radius=radius, seed=seed)
    r = triangulate_multiview(P, sc.x_clean, sc.visible)
    assert (r.success == (sc.visible.sum(1) >= 2)).all()
    assert _rel_err(r.X, sc.X)[r.success].max() < 1e-6
    # invariance to a change of world frame: X' = s R X + t, P' = P [sR t; 0 1]^-1
    g = torch.Generator().manual_seed(seed)
    from torch3dv.geometry import random_rotation

    Rw = random_rotation(generator=g)
    tw = torch.randn(3, dtype=torch.float64, generator=g) * 100
    s = 0.01 + float(torch.rand((), generator=g)) * 100
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = s * Rw
    T[:3, 3] = tw
    r2 = triangulate_multiview(P @ torch.linalg.inv(T), sc.x_clean, sc.visible)
    assert (r2.success == r.success).all()
    X2 = r.X @ (s * Rw).T + tw
    assert ((r2.X - X2).norm(dim=-1) / (s * (1 + sc.X.norm(dim=-1))))[r.success].max() < 1e-6


# ----------------------------------------------------------------------------------------------- real data
def _read_strecha_camera(path):
    vals = [float(v) for v in path.read_text().split()]
    K = np.array(vals[0:9]).reshape(3, 3)
    R = np.array(vals[12:21]).reshape(3, 3)
    C = np.array(vals[21:24])
    return K, R, C


@pytest.mark.realdata
def test_strecha_fountain_three_view_reprojection():
    """SIFT tracks over views 4-5-6 at 1/4 resolution: triangulate from 4 and 6 with the ground-truth cameras
    (x ~ K R^T (X - C)) and reproject into view 5."""
    root = data_path("strecha_fountain-P11")
    ids = ["0004", "0006", "0005"]
    imgs, Ps = [], []
    f = 0.25
    # pixel-centre convention kept: x_small = f (x + 0.5) - 0.5
    S = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1]])
    for i in ids:
        img = cv2.imread(str(root / "images" / f"{i}.jpg"), cv2.IMREAD_REDUCED_GRAYSCALE_4)
        assert img is not None and img.shape == (512, 768)
        imgs.append(img)
        K, R, C = _read_strecha_camera(root / "gt_dense_cameras" / f"{i}.jpg.camera")
        Rcw = R.T
        Ps.append(S @ K @ np.hstack([Rcw, (-Rcw @ C)[:, None]]))
    sift = cv2.SIFT_create(nfeatures=4000)
    feats = [sift.detectAndCompute(im, None) for im in imgs]
    matcher = cv2.BFMatcher(cv2.NORM_L2)

    def match(a, b):
        out = {}
        for m, n in matcher.knnMatch(feats[a][1], feats[b][1], k=2):
            if m.distance < 0.75 * n.distance:
                out[m.queryIdx] = m.trainIdx
        return out

    m01, m02 = match(0, 1), match(0, 2)
    common = [q for q in m01 if q in m02]
    assert len(common) > 200
    pts = [np.array([feats[0][0][q].pt for q in common]),
           np.array([feats[1][0][m01[q]].pt for q in common]),
           np.array([feats[2][0][m02[q]].pt for q in common])]
    P = torch.from_numpy(np.stack(Ps))
    x = torch.from_numpy(np.stack(pts))
    r = triangulate_two_view(P[0], P[1], x[0], x[1])
    assert r.success.float().mean() > 0.99
    # epipolar-consistent tracks only (ratio-test matches still contain some outliers)
    e2 = reprojection_errors(r.X, P[:2], x[:2]).amax(0)
    keep = r.success & (e2 < 1.0)
    assert keep.float().mean() > 0.6
    C = torch.from_numpy(np.stack([_read_strecha_camera(root / "gt_dense_cameras" / f"{i}.jpg.camera")[2]
                                   for i in ids]))
    Rc = torch.from_numpy(np.stack([_read_strecha_camera(root / "gt_dense_cameras" / f"{i}.jpg.camera")[1].T
                                    for i in ids]))
    tc = -(Rc @ C[..., None])[..., 0]
    assert cheirality(r.X[keep], Rc, tc).all()
    e3 = reprojection_errors(r.X[None, keep], P[None, 2:], x[None, 2:, keep])[0, 0]
    assert float(e3.median()) < 2.0
    # all three views together fit better still
    r3 = triangulate_multiview(P, x)
    e_all = reprojection_errors(r3.X[keep], P, x[:, keep])
    assert float(e_all.median()) < 1.0
