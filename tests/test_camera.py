"""Lens distortion models (radial-tangential, fisheye) and the Camera dispatch, checked against OpenCV."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.autograd import gradcheck

from torch3dv.camera.fisheye import (
    distort_fisheye,
    project_fisheye,
    undistort_fisheye,
    undistort_pixels_fisheye,
    unproject_fisheye,
    unproject_fisheye_bearing,
)
from torch3dv.camera.models import Camera, bearing, project, undistort_pixels, unproject
from torch3dv.camera.pinhole import bearing_vectors, pixels_to_normalized, project_pinhole
from torch3dv.camera.radtan import (
    distort_radtan,
    project_radtan,
    radtan_jacobian,
    undistort_pixels_radtan,
    undistort_radtan,
    unproject_radtan,
)

cv2 = pytest.importorskip("cv2")

F64 = torch.float64
# a 640x480 camera with strong barrel distortion (typical of a 90 degree webcam / machine-vision lens)
K_RT = [[520.0, 0.0, 325.3], [0.0, 515.0, 245.1], [0.0, 0.0, 1.0]]
DIST_RT = [-0.28, 0.07, 1e-3, -5e-4, -0.01]
SIZE_RT = (640, 480)
# a 1280x960 fisheye camera (about 190 degrees diagonal)
K_FE = [[285.0, 0.0, 639.7], [0.0, 286.0, 479.2], [0.0, 0.0, 1.0]]
DIST_FE = [0.05, -0.01, 0.002, -0.0005]
CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)


def _t(x, dtype=F64, device="cpu"):
    return torch.tensor(x, dtype=dtype, device=device)


def _image_pixels(n: int, size, g: torch.Generator, margin: float = 0.0) -> torch.Tensor:
    """Uniform pixels (n, 2) over the whole image (corners included), float64."""
    w, h = size
    u = torch.rand(n, 2, generator=g, dtype=F64)
    return torch.stack([margin + u[:, 0] * (w - 1 - 2 * margin), margin + u[:, 1] * (h - 1 - 2 * margin)], -1)


def _rays(n: int, max_deg: float, g: torch.Generator, depth: bool = True) -> torch.Tensor:
    """Camera-frame points (n, 3) with angles to the optical axis up to ``max_deg`` (uniform in angle)."""
    th = torch.rand(n, generator=g, dtype=F64) * math.radians(max_deg)
    ph = torch.rand(n, generator=g, dtype=F64) * 2 * math.pi
    X = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1)
    return X * (1 + 4 * torch.rand(n, 1, generator=g, dtype=F64)) if depth else X


def _cv_pts(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy().reshape(-1, 1, x.shape[-1]))


# ------------------------------------------------------------------------------------ OpenCV agreement


@pytest.mark.parametrize("ncoef", [5, 4])
def test_project_radtan_matches_opencv(ncoef):
    g = torch.Generator().manual_seed(0)
    K, dist = _t(K_RT), _t(DIST_RT[:ncoef])
    # points whose undistorted pixels cover the image and a margin around it
    X = torch.cat(
        [pixels_to_normalized(_image_pixels(500, SIZE_RT, g, margin=-60), K), torch.ones(500, 1, dtype=F64)],
        -1,
    )
    X = X * (0.5 + 5 * torch.rand(500, 1, generator=g, dtype=F64))
    ours = project_radtan(X, K, dist)
    ref, _ = cv2.projectPoints(X.numpy(), np.zeros(3), np.zeros(3), K.numpy(), dist.numpy())
    assert np.abs(ours.numpy() - ref[:, 0]).max() < 1e-6


def test_undistort_radtan_matches_opencv():
    g = torch.Generator().manual_seed(1)
    K, dist = _t(K_RT), _t(DIST_RT)
    px = _image_pixels(1000, SIZE_RT, g)
    r = unproject_radtan(px, K, dist, return_converged=True)
    assert bool(r.converged.all())
    ref = cv2.undistortPoints(_cv_pts(px), K.numpy(), dist.numpy(), criteria=CRITERIA)[:, 0]
    # normalised difference expressed in pixels (times the focal length)
    assert np.abs(r.points.numpy() - ref).max() * 520 < 1e-6
    ours_px = undistort_pixels_radtan(px, K, dist)
    ref_px = cv2.undistortPoints(_cv_pts(px), K.numpy(), dist.numpy(), P=K.numpy(), criteria=CRITERIA)[:, 0]
    assert np.abs(ours_px.numpy() - ref_px).max() < 1e-6


def test_project_fisheye_matches_opencv():
    g = torch.Generator().manual_seed(2)
    K, dist = _t(K_FE), _t(DIST_FE)
    X = _rays(1000, 89.0, g)
    ours = project_fisheye(X, K, dist)
    ref, _ = cv2.fisheye.projectPoints(_cv_pts(X), np.zeros(3), np.zeros(3), K.numpy(), dist.numpy())
    assert np.abs(ours.numpy() - ref[:, 0]).max() < 1e-6


def test_undistort_fisheye_matches_opencv():
    g = torch.Generator().manual_seed(3)
    K, dist = _t(K_FE), _t(DIST_FE)
    # OpenCV clips theta_d to pi/2 (here about 80 degrees off-axis); compare below that
    X = _rays(1000, 78.0, g)
    px = project_fisheye(X, K, dist)
    r = unproject_fisheye(px, K, dist, return_converged=True)
    assert bool(r.converged.all())
    ref = cv2.fisheye.undistortPoints(_cv_pts(px), K.numpy(), dist.numpy(), criteria=CRITERIA)[:, 0]
    assert np.abs(r.points.numpy() - ref).max() * 285 < 1e-6
    ours_px = undistort_pixels_fisheye(px, K, dist)
    ref_px = cv2.fisheye.undistortPoints(_cv_pts(px), K.numpy(), dist.numpy(), P=K.numpy(), criteria=CRITERIA)
    assert np.abs(ours_px.numpy() - ref_px[:, 0]).max() < 1e-6


# ------------------------------------------------------------------------------------ round trips


def test_radtan_roundtrip_float64():
    g = torch.Generator().manual_seed(4)
    K, dist = _t(K_RT), _t(DIST_RT)
    px = _image_pixels(2000, SIZE_RT, g)
    xn = unproject_radtan(px, K, dist)
    X = torch.cat([xn, torch.ones_like(xn[:, :1])], -1) * 3.0
    assert (project_radtan(X, K, dist) - px).abs().max() < 1e-9
    # distort -> undistort on normalised coordinates
    xu = pixels_to_normalized(_image_pixels(2000, SIZE_RT, g), K)
    assert (undistort_radtan(distort_radtan(xu, dist), dist) - xu).abs().max() < 1e-9 / 520


def test_fisheye_roundtrip_float64():
    g = torch.Generator().manual_seed(5)
    K, dist = _t(K_FE), _t(DIST_FE)
    X = _rays(2000, 85.0, g)
    px = project_fisheye(X, K, dist)
    xn = unproject_fisheye(px, K, dist)
    torch.testing.assert_close(xn, X[:, :2] / X[:, 2:], atol=1e-10, rtol=1e-12)
    X1 = torch.cat([xn, torch.ones_like(xn[:, :1])], -1)
    assert (project_fisheye(X1, K, dist) - px).abs().max() < 1e-9
    xd = distort_fisheye(xn, dist)
    assert (undistort_fisheye(xd, dist) - xn).abs().max() < 1e-9


def test_fisheye_bearing_beyond_90_degrees():
    g = torch.Generator().manual_seed(6)
    K, dist = _t(K_FE), _t(DIST_FE)
    rays = _rays(2000, 110.0, g, depth=False)
    px = project_fisheye(rays * 2.5, K, dist)
    r = unproject_fisheye_bearing(px, K, dist, return_converged=True)
    assert bool(r.converged.all())
    torch.testing.assert_close(r.points, rays, atol=1e-12, rtol=0)
    # normalised coordinates exist only below 90 degrees: flagged, but finite
    n = unproject_fisheye(px, K, dist, return_converged=True)
    front = rays[:, 2] > 1e-3
    assert torch.equal(n.converged[front], torch.ones_like(n.converged[front]))
    assert not bool(n.converged[rays[:, 2] < 0].any())
    assert bool(torch.isfinite(n.points).all())


def test_roundtrip_float32(dtype, device):
    g = torch.Generator().manual_seed(7)
    K, dist = _t(K_RT), _t(DIST_RT)
    px = _image_pixels(500, SIZE_RT, g)
    ref = unproject_radtan(px, K, dist)
    r = unproject_radtan(
        px.to(device, dtype), K.to(device, dtype), dist.to(device, dtype), return_converged=True
    )
    assert r.points.dtype == dtype and r.points.device.type == device
    assert bool(r.converged.all())
    tol = 2e-3 if dtype == torch.float32 else 1e-9  # pixels
    assert (r.points.double().cpu() - ref).abs().max() * 520 < tol
    back = project_radtan(
        torch.cat([r.points, torch.ones_like(r.points[:, :1])], -1),
        K.to(device, dtype),
        dist.to(device, dtype),
    )
    assert (back.double().cpu() - px).abs().max() < tol

    Kf, distf = _t(K_FE), _t(DIST_FE)
    X = _rays(500, 80.0, g)
    pxf = project_fisheye(X, Kf, distf)
    rf = unproject_fisheye_bearing(
        pxf.to(device, dtype), Kf.to(device, dtype), distf.to(device, dtype), return_converged=True
    )
    assert rf.points.dtype == dtype and bool(rf.converged.all())
    ang_tol = 2e-6 if dtype == torch.float32 else 1e-12  # radians
    assert (rf.points.double().cpu() - X / X.norm(dim=-1, keepdim=True)).abs().max() < ang_tol


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k1=st.floats(-0.3, 0.3),
    k2=st.floats(-0.05, 0.08),
    p=st.tuples(st.floats(-2e-3, 2e-3), st.floats(-2e-3, 2e-3)),
    k3=st.floats(-0.01, 0.01),
)
def test_radtan_roundtrip_property(seed, k1, k2, p, k3):
    g = torch.Generator().manual_seed(seed)
    dist = _t([k1, k2, p[0], p[1], k3])
    # a 75 degree diagonal field of view: |x| <= tan(37.5 deg) ~ 0.77 radius
    xn = (torch.rand(64, 2, generator=g, dtype=F64) - 0.5) * 1.08
    xd = distort_radtan(xn, dist)
    r = undistort_radtan(xd, dist, return_converged=True)
    assert bool(r.converged.all())
    assert (r.points - xn).abs().max() < 1e-11


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.tuples(
        st.floats(-0.05, 0.1), st.floats(-0.02, 0.02), st.floats(-0.005, 0.005), st.floats(-1e-3, 1e-3)
    ),
    max_deg=st.floats(1.0, 100.0),
)
def test_fisheye_roundtrip_property(seed, k, max_deg):
    g = torch.Generator().manual_seed(seed)
    dist = _t(list(k))
    K = _t(K_FE)
    # beyond the first fold of theta_d(theta) the model is not injective: stay before it
    k1, k2, k3, k4 = k
    fold = _fold(k, lambda t, c: 1 + 3 * k1 * t**2 + 5 * k2 * t**4 + 7 * k3 * t**6 + 9 * k4 * t**8)
    rays = _rays(64, min(max_deg, math.degrees(0.95 * fold)), g, depth=False)
    r = unproject_fisheye_bearing(project_fisheye(rays, K, dist), K, dist, return_converged=True)
    assert bool(r.converged.all())
    assert (r.points - rays).abs().max() < 1e-11


def _fold(coeffs, dpoly) -> float:
    """First radius/angle where the derivative of the radial profile ``dpoly(r)`` vanishes."""
    r = torch.linspace(0, 4, 40001, dtype=F64)
    neg = (dpoly(r, coeffs) <= 0).nonzero()
    return float(r[neg[0, 0]]) if len(neg) else 4.0


@pytest.mark.parametrize(
    "dist",
    [
        [0.396, 0.132, -0.004, 0.003, -0.028],  # strong pincushion: plain Newton from x_d overshoots the fold
        [-0.464, -0.13, 0.002, 0.002, 0.033],  # strong barrel with a nearby fold
        [-0.28, 0.07, 1e-3, -5e-4, -0.01],
    ],
)
def test_radtan_strong_distortion_converges_up_to_the_fold(dist):
    k1, k2, _, _, k3 = dist
    fold = _fold(dist, lambda r, c: 1 + 3 * k1 * r**2 + 5 * k2 * r**4 + 7 * k3 * r**6)
    g = torch.Generator().manual_seed(12)
    ang = torch.rand(4000, generator=g, dtype=F64) * 2 * math.pi
    rad = torch.rand(4000, generator=g, dtype=F64).sqrt() * 0.9 * fold
    xn = torch.stack([rad * ang.cos(), rad * ang.sin()], -1)
    r = undistort_radtan(distort_radtan(xn, _t(dist)), _t(dist), return_converged=True)
    assert bool(r.converged.all())
    assert (r.points - xn).abs().max() < 1e-9
    # far beyond the fold there is no physical preimage: reported, finite
    xd_far = distort_radtan(_t([[0.0, 0.0]]), _t(dist)) + 50.0
    far = undistort_radtan(xd_far, _t(dist), return_converged=True)
    assert not bool(far.converged.any()) and bool(torch.isfinite(far.points).all())


@pytest.mark.parametrize(
    "k",
    [
        [0.161, 0.018, -0.008, -0.005],  # theta_d(theta) peaks near 90 degrees
        [0.249, -0.062, 0.003, -0.008],
        [-0.116, 0.062, 0.026, -0.004],
    ],
)
def test_fisheye_strong_distortion_converges_up_to_the_fold(k):
    k1, k2, k3, k4 = k
    fold = _fold(k, lambda t, c: 1 + 3 * k1 * t**2 + 5 * k2 * t**4 + 7 * k3 * t**6 + 9 * k4 * t**8)
    g = torch.Generator().manual_seed(13)
    rays = _rays(4000, math.degrees(min(0.95 * fold, math.pi - 0.05)), g, depth=False)
    K = _t(K_FE)
    r = unproject_fisheye_bearing(project_fisheye(rays, K, _t(k)), K, _t(k), return_converged=True)
    assert bool(r.converged.all())
    assert (r.points - rays).abs().max() < 1e-9


# ------------------------------------------------------------------------------------ gradients


def _pts2(requires_grad=True):
    # includes the exact optical axis and a point very close to it
    return _t([[0.31, -0.22], [0.0, 0.0], [-0.45, 0.38], [1e-9, -2e-9], [0.05, 0.6]]).requires_grad_(
        requires_grad
    )


def test_gradcheck_radtan():
    dist = _t(DIST_RT).requires_grad_()
    K = _t(K_RT).requires_grad_()
    assert gradcheck(distort_radtan, (_pts2(), dist))
    assert gradcheck(undistort_radtan, (_pts2(), dist))
    X = _t([[0.3, -0.2, 1.5], [0.0, 0.0, 2.0], [-0.5, 0.4, 1.2], [0.1, 0.1, 0.7]]).requires_grad_()
    assert gradcheck(project_radtan, (X, K, dist))
    px = _t([[100.0, 50.0], [325.3, 245.1], [600.0, 400.0]]).requires_grad_()
    assert gradcheck(undistort_pixels_radtan, (px, K, dist))
    # the analytic Jacobian used by Newton matches autograd
    x = _pts2(False)
    J_auto = torch.autograd.functional.jacobian(lambda v: distort_radtan(v[None], dist.detach())[0], x)
    J_auto = torch.stack([J_auto[i, :, i, :] for i in range(x.shape[0])])
    torch.testing.assert_close(radtan_jacobian(x, dist.detach()), J_auto)


def test_gradcheck_fisheye():
    dist = _t(DIST_FE).requires_grad_()
    K = _t(K_FE).requires_grad_()
    assert gradcheck(distort_fisheye, (_pts2(), dist))
    assert gradcheck(undistort_fisheye, (_pts2(), dist))
    X = _t(
        [[0.3, -0.2, 1.5], [0.0, 0.0, 2.0], [-0.5, 0.4, 1.2], [1.0, 0.5, -0.3], [1e-6, 0.0, 1.0]]
    ).requires_grad_()
    assert gradcheck(project_fisheye, (X, K, dist))
    px = project_fisheye(X, K, dist).detach().requires_grad_()
    assert gradcheck(unproject_fisheye_bearing, (px, K, dist))
    assert gradcheck(undistort_pixels_fisheye, (px[:3], K, dist))


@pytest.mark.parametrize(
    "fn,dist",
    [
        (distort_radtan, DIST_RT),
        (undistort_radtan, DIST_RT),
        (distort_fisheye, DIST_FE),
        (undistort_fisheye, DIST_FE),
    ],
)
def test_gradient_at_optical_axis_is_identity(fn, dist, dtype):
    x = torch.zeros(1, 2, dtype=dtype, requires_grad=True)
    d = _t(dist, dtype).requires_grad_()
    y = fn(x, d)
    gx = torch.stack([torch.autograd.grad(y[0, i], x, retain_graph=True)[0][0] for i in range(2)])
    gd = torch.autograd.grad(y.sum(), d)[0]
    assert bool(torch.isfinite(gd).all())
    # at the centre every model is the identity to first order (tangential terms are quadratic)
    torch.testing.assert_close(gx, torch.eye(2, dtype=dtype))


def test_project_fisheye_finite_on_singular_directions(dtype):
    # the camera centre and the backward optical axis have no defined direction: finite values and gradients
    X = torch.tensor(
        [[0.0, 0, -1], [0, 0, 0], [1e-30, 0, -1], [0.3, 0.1, 0.0]], dtype=dtype, requires_grad=True
    )
    p = project_fisheye(X, _t(K_FE, dtype), _t(DIST_FE, dtype))
    (g,) = torch.autograd.grad(p.sum(), X)
    assert bool(torch.isfinite(p).all()) and bool(torch.isfinite(g).all())
    torch.testing.assert_close(p[:2], _t(K_FE, dtype)[:2, 2].expand(2, 2))  # principal point


# ------------------------------------------------------------------------------------ batching


def test_batched_leading_dims_match_per_problem():
    g = torch.Generator().manual_seed(8)
    B = (2, 3)
    dist_rt = _t(DIST_RT) * (1 + 0.3 * torch.rand(*B, 5, generator=g, dtype=F64))
    dist_fe = _t(DIST_FE) * (1 + 0.3 * torch.rand(*B, 4, generator=g, dtype=F64))
    K = _t(K_RT).expand(*B, 3, 3).clone()
    K[..., 0, 0] += 20 * torch.rand(*B, generator=g, dtype=F64)
    xd = (torch.rand(*B, 40, 2, generator=g, dtype=F64) - 0.5) * 0.9
    for undist, dist in ((undistort_radtan, dist_rt), (undistort_fisheye, dist_fe)):
        out = undist(xd, dist)
        assert out.shape == (*B, 40, 2)
        for i in range(B[0]):
            for j in range(B[1]):
                torch.testing.assert_close(out[i, j], undist(xd[i, j], dist[i, j]), atol=1e-14, rtol=0)
    px = unproject_radtan(xd * 500 + 300, K, dist_rt)
    torch.testing.assert_close(px[1, 2], unproject_radtan(xd[1, 2] * 500 + 300, K[1, 2], dist_rt[1, 2]))
    # one set of coefficients broadcast over all problems, and a batch of one is kept (not squeezed)
    torch.testing.assert_close(
        undistort_radtan(xd, _t(DIST_RT))[0, 1], undistort_radtan(xd[0, 1], _t(DIST_RT))
    )
    assert undistort_fisheye(xd[:1, :1], dist_fe[:1, :1]).shape == (1, 1, 40, 2)
    X = torch.cat([xd, torch.ones_like(xd[..., :1])], -1)
    assert project_fisheye(X, K, dist_fe).shape == (*B, 40, 2)
    assert project_radtan(X, K, dist_rt[..., :4]).shape == (*B, 40, 2)


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_raises_value_error():
    K, dr, df = _t(K_RT), _t(DIST_RT), _t(DIST_FE)
    x = torch.zeros(5, 2, dtype=F64)
    X = torch.ones(5, 3, dtype=F64)
    with pytest.raises(ValueError, match="K"):
        project_radtan(X, K[:2], dr)
    with pytest.raises(ValueError, match="dist"):
        project_radtan(X, K, dr[:3])
    with pytest.raises(ValueError, match="dist"):
        undistort_fisheye(x, dr)  # 5 coefficients for a 4-coefficient model
    with pytest.raises(ValueError, match="xd"):
        undistort_radtan(torch.zeros(5, 3, dtype=F64), dr)
    with pytest.raises(ValueError, match="X_cam"):
        project_fisheye(x, K, df)
    with pytest.raises(ValueError, match="floating"):
        undistort_radtan(torch.zeros(5, 2, dtype=torch.int64), dr)
    with pytest.raises(ValueError, match="dtype"):
        undistort_radtan(x.float(), dr)
    with pytest.raises(ValueError, match="broadcast"):
        undistort_radtan(torch.zeros(3, 5, 2, dtype=F64), dr.expand(2, 5))
    with pytest.raises(ValueError, match="model"):
        Camera("kannala", K, df)
    with pytest.raises(ValueError, match="dist"):
        Camera("radtan", K)
    with pytest.raises(ValueError, match="dist"):
        Camera("fisheye", K, dr)
    with pytest.raises(ValueError, match="camera"):
        project(K, X)  # type: ignore[arg-type]


def test_nan_and_non_invertible_points_stay_local():
    dist = _t(DIST_RT).expand(2, 5).clone()
    xd = (torch.rand(2, 6, 2, generator=torch.Generator().manual_seed(9), dtype=F64) - 0.5) * 0.8
    clean = undistort_radtan(xd, dist)
    bad = xd.clone()
    bad[0, 1] = float("nan")
    bad[0, 2] = torch.tensor([1.5, -1.4])  # beyond the fold of the barrel model: no physical preimage
    bad[1, 3] = torch.tensor([1e4, 3e3])
    r = undistort_radtan(bad, dist, return_converged=True)
    assert bool(torch.isnan(r.points[0, 1]).all())
    finite_rows = torch.ones(2, 6, dtype=torch.bool)
    finite_rows[0, 1] = False
    assert bool(torch.isfinite(r.points[finite_rows]).all())
    expected = torch.ones(2, 6, dtype=torch.bool)
    expected[0, 1] = expected[0, 2] = expected[1, 3] = False
    assert torch.equal(r.converged, expected)
    torch.testing.assert_close(r.points[expected], clean[expected])
    # NaN coefficients poison only their own problem
    dist_nan = dist.clone()
    dist_nan[1, 0] = float("nan")
    r2 = undistort_radtan(xd, dist_nan, return_converged=True)
    torch.testing.assert_close(r2.points[0], clean[0])
    assert not bool(r2.converged[1].any())

    dfe = _t(DIST_FE)
    bad = xd.clone()
    bad[1, 0] = float("nan")
    bad[1, 4] = torch.tensor([40.0, 30.0])  # radius far beyond any angle of this lens
    r3 = unproject_fisheye_bearing(bad * 285 + 600, _t(K_FE).expand(2, 3, 3), dfe, return_converged=True)
    assert bool(torch.isnan(r3.points[1, 0]).all())
    assert not bool(r3.converged[1, 0]) and not bool(r3.converged[1, 4])
    assert bool(torch.isfinite(r3.points[1, 1:]).all()) and bool(r3.converged[0].all())


@pytest.mark.parametrize(
    "fn,K,dist",
    [
        (unproject_radtan, K_RT, DIST_RT),
        (undistort_pixels_radtan, K_RT, DIST_RT),
        (unproject_fisheye, K_FE, DIST_FE),
        (unproject_fisheye_bearing, K_FE, DIST_FE),
        (undistort_pixels_fisheye, K_FE, DIST_FE),
        (project_radtan, K_RT, DIST_RT),
        (project_fisheye, K_FE, DIST_FE),
    ],
)
def test_nan_point_does_not_poison_shared_gradients(fn, K, dist):
    g = torch.Generator().manual_seed(11)
    if fn in (project_radtan, project_fisheye):
        x = _rays(6, 40.0, g)
    else:
        x = _image_pixels(6, SIZE_RT, g)
    x_bad = x.clone()
    x_bad[2] = float("nan")
    keep = torch.arange(6) != 2
    grads = []
    for pts, rows in ((x_bad, keep), (x[keep], slice(None))):
        Kt, dt = _t(K).requires_grad_(), _t(dist).requires_grad_()
        out = fn(pts, Kt, dt)
        grads.append(torch.autograd.grad(out[rows].sum(), (Kt, dt)))
        if pts is x_bad:
            assert bool(torch.isnan(out[2]).all()) and bool(torch.isfinite(out[keep]).all())
    for a, b in zip(*grads, strict=True):
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------ Camera dispatch


def test_camera_dispatch_matches_direct_calls():
    g = torch.Generator().manual_seed(10)
    X = _rays(50, 35.0, g)
    cams = {
        "pinhole": Camera.pinhole(_t(K_RT)),
        "radtan": Camera.radtan(_t(K_RT), _t(DIST_RT)),
        "fisheye": Camera("fisheye", _t(K_FE), _t(DIST_FE)),
    }
    assert cams["pinhole"].dist.shape == (0,) and cams["radtan"].batch_shape == ()
    torch.testing.assert_close(project(cams["pinhole"], X), project_pinhole(X, _t(K_RT)))
    torch.testing.assert_close(project(cams["radtan"], X), project_radtan(X, _t(K_RT), _t(DIST_RT)))
    torch.testing.assert_close(project(cams["fisheye"], X), project_fisheye(X, _t(K_FE), _t(DIST_FE)))
    xn_true = X[:, :2] / X[:, 2:]
    rays_true = X / X.norm(dim=-1, keepdim=True)
    for cam in cams.values():
        px = project(cam, X)
        r = unproject(cam, px, return_converged=True)
        assert bool(r.converged.all())
        torch.testing.assert_close(r.points, xn_true, atol=1e-12, rtol=0)
        torch.testing.assert_close(bearing(cam, px), rays_true, atol=1e-12, rtol=0)
        ideal = project_pinhole(X, cam.K)
        torch.testing.assert_close(undistort_pixels(cam, px), ideal, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        bearing(cams["pinhole"], project(cams["pinhole"], X)),
        bearing_vectors(project_pinhole(X, _t(K_RT)), _t(K_RT)),
    )
    # batched camera, moved to float32
    cam32 = Camera.radtan(_t(K_RT).expand(4, 3, 3), _t(DIST_RT).expand(4, 5)).to(torch.float32)
    assert cam32.K.dtype == torch.float32 and cam32.batch_shape == (4,)
    assert unproject(cam32, project(cam32, X.float().expand(4, 50, 3))).shape == (4, 50, 2)
