"""The pose API with distorted cameras (torch3dv.camera.Camera): pixels are undistorted before estimation."""

import torch

import torch3dv
from torch3dv.camera import Camera, project
from torch3dv.geometry import rotation_error, translation_direction_error
from torch3dv.geometry.transforms import transform_points
from torch3dv.ransac.residuals import sampson_sq
from torch3dv.testing import absolute_pose_scene, two_view_scene


def _radtan(B, dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    k = torch.tensor([-0.28, 0.09, 0.0005, -0.0004, -0.01], dtype=dtype)
    return k + 0.01 * torch.randn(B, 5, generator=g, dtype=dtype)


def _distorted_two_view(B=8, N=300, outliers=0.2):
    s = two_view_scene(B, N, noise_px=0.0, outlier_ratio=0.0, seed=21)
    cam1, cam2 = Camera.radtan(s.K1, _radtan(B)), Camera.radtan(s.K2, _radtan(B).flip(0))
    x1 = project(cam1, s.X)
    x2 = project(cam2, transform_points(s.R, s.t, s.X))
    g = torch.Generator().manual_seed(0)
    x1 = x1 + 0.3 * torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    x2 = x2 + 0.3 * torch.randn(x2.shape, generator=g, dtype=x2.dtype)
    out = torch.rand(B, N, generator=g) < outliers
    x2 = torch.where(out[..., None], torch.rand(B, N, 2, generator=g, dtype=x2.dtype) * 600, x2)
    return s, cam1, cam2, x1, x2, ~out


def test_relative_pose_with_radtan_cameras():
    s, cam1, cam2, x1, x2, inl = _distorted_two_view()
    est = torch3dv.estimate_relative_pose(x1, x2, cam1, cam2, threshold=1.0)
    er = torch.rad2deg(rotation_error(est.R, s.R))
    et = torch.rad2deg(translation_direction_error(est.t, s.t))
    assert est.success.all()
    assert er.max() < 0.2 and et.max() < 2.0
    # ignoring the distortion (plain K) is clearly worse: the check above is not vacuous
    naive = torch3dv.estimate_relative_pose(x1, x2, s.K1, s.K2, threshold=1.0)
    assert torch.rad2deg(rotation_error(naive.R, s.R)).median() > 3 * er.median()
    f1 = ((est.inliers & inl).sum(-1) * 2 / (est.inliers.sum(-1) + inl.sum(-1))).min()
    assert f1 > 0.9


def test_fundamental_and_homography_with_cameras():
    s, cam1, cam2, x1, x2, inl = _distorted_two_view(B=4)
    F = torch3dv.estimate_fundamental(x1, x2, camera1=cam1, camera2=cam2).F
    r = sampson_sq(F[:, None], s.x1_clean, s.x2_clean)[:, 0].sqrt()  # ideal pinhole pixels, noise free
    assert r.median() < 0.5
    p = two_view_scene(4, 200, planar=True, seed=3)
    c1, c2 = Camera.radtan(p.K1, _radtan(4)), Camera.radtan(p.K2, _radtan(4))
    y1 = project(c1, p.X)
    y2 = project(c2, transform_points(p.R, p.t, p.X))
    H = torch3dv.estimate_homography(y1, y2, camera1=c1, camera2=c2).H
    Hn = H / H[:, 2:, 2:]
    torch.testing.assert_close(Hn, p.H / p.H[:, 2:, 2:], atol=1e-6, rtol=1e-6)


def test_absolute_pose_with_fisheye_camera_masks_failed_points():
    s = absolute_pose_scene(6, 200, noise_px=0.0, outlier_ratio=0.0, seed=8)
    dist = torch.tensor([0.05, -0.01, 0.003, -0.0005], dtype=torch.float64).expand(6, 4)
    cam = Camera.fisheye(s.K, dist)
    x = project(cam, transform_points(s.R, s.t, s.X))
    x = x.clone()
    x[:, :5] = float("nan")  # points whose undistortion cannot succeed are left out, not fatal
    est = torch3dv.estimate_absolute_pose(x, s.X, cam, threshold=1.0)
    assert est.success.all()
    assert torch.rad2deg(rotation_error(est.R, s.R)).max() < 1e-3
    assert not est.inliers[:, :5].any()


def test_wrong_camera_type_is_an_error():
    s = two_view_scene(1, 20, seed=0)
    try:
        torch3dv.estimate_relative_pose(s.x1, s.x2, "K", s.K2)
    except ValueError as e:
        assert "K1" in str(e)
    else:
        raise AssertionError("expected ValueError")
