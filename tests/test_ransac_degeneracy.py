"""DEGENSAC-style dominant-plane handling of the fundamental matrix (torch3dv.ransac.degeneracy)."""

import torch

import torch3dv
from torch3dv.ransac.degeneracy import parallax_fundamental, plane_and_parallax
from torch3dv.ransac.estimator import RansacOptions
from torch3dv.ransac.residuals import sampson_sq
from torch3dv.testing import two_view_scene


def _max_clean_error(F, s):
    """Largest epipolar (Sampson) error of the noise-free inlier correspondences, pixels (B,)."""
    r = sampson_sq(F[:, None], s.x1_clean, s.x2_clean)[:, 0].sqrt()
    return torch.where(s.inliers, r, torch.zeros_like(r)).amax(-1)


def test_parallax_fundamental_is_exact():
    s = two_view_scene(4, 40, planar=True, planar_fraction=0.5, seed=1)
    # points 20 and 31 are off the plane; H is the plane's homography
    F = parallax_fundamental(s.H, s.x1[:, 20], s.x2[:, 20], s.x1[:, 31], s.x2[:, 31])
    sign = torch.sign((F * s.F).sum((-1, -2)))
    torch.testing.assert_close(F * sign[:, None, None], s.F, atol=1e-9, rtol=0)


def test_dominant_plane_is_recovered():
    # 85% of the points on one plane, 30% outliers: plain 7-point RANSAC often returns an F that fits the plane
    # and a few off-plane points; plane-and-parallax recovers the true epipolar geometry
    s = two_view_scene(60, 300, noise_px=0.5, outlier_ratio=0.3, planar=True, planar_fraction=0.85, seed=3)
    plain = torch3dv.estimate_fundamental(s.x1, s.x2, degeneracy_check=False)
    checked = torch3dv.estimate_fundamental(s.x1, s.x2)
    bad_plain = (_max_clean_error(plain.F, s) > 5).double().mean()
    bad_checked = (_max_clean_error(checked.F, s) > 5).double().mean()
    assert bad_plain > 0.3  # the degenerate case is real on this data
    assert bad_checked <= 0.05
    assert checked.success.all()
    # inliers now include the off-plane points
    on_plane = torch.arange(300) < 255
    off_in = s.inliers & ~on_plane
    recall = (checked.inliers & off_in).sum() / off_in.sum()
    assert recall > 0.9


def test_general_scene_is_unchanged_and_batch_independent():
    s = two_view_scene(6, 200, noise_px=0.5, outlier_ratio=0.3, seed=4)
    a = torch3dv.estimate_fundamental(s.x1, s.x2, degeneracy_check=False)
    b = torch3dv.estimate_fundamental(s.x1, s.x2)
    torch.testing.assert_close(a.F, b.F)
    valid = torch.ones(6, 200, dtype=torch.bool)
    chk = plane_and_parallax(a.F, a.inliers, s.x1, s.x2, valid, RansacOptions(), torch.arange(6))
    assert not chk.replaced.any()
    # a problem's result does not depend on the rest of the batch
    p = two_view_scene(5, 300, noise_px=0.5, outlier_ratio=0.3, planar=True, planar_fraction=0.85, seed=3)
    full = torch3dv.estimate_fundamental(p.x1, p.x2)
    opts = RansacOptions(seed=3)
    one = torch3dv.estimate_fundamental(p.x1[3:4], p.x2[3:4], options=opts)
    torch.testing.assert_close(one.F[0], full.F[3])


def test_gradient_flows_through_replaced_model():
    s = two_view_scene(4, 150, noise_px=0.5, outlier_ratio=0.2, planar=True, planar_fraction=0.85, seed=7)
    x1 = s.x1.clone().requires_grad_()
    e = torch3dv.estimate_fundamental(x1, s.x2)
    (e.F * s.F).sum().backward()
    assert x1.grad is not None and torch.isfinite(x1.grad).all() and x1.grad.abs().sum() > 0
