"""torch3dv.testing.render: textured two-view renders whose images agree with their ground-truth geometry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torch3dv.camera.pinhole import project_pinhole, unproject_pinhole
from torch3dv.geometry import compose_rigid, invert_rigid, rotation_error
from torch3dv.testing.render import render_pair


def _warp_error(p, b: int = 0) -> torch.Tensor:
    """|image0 - image1 sampled at the projection of image 0's depth| per visible pixel (photo-consistency)."""
    H, W = p.depth0.shape[1:]
    vv, uu = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    x0 = torch.stack([uu, vv], -1).reshape(1, -1, 2).to(p.K0.dtype)
    X = unproject_pinhole(x0, p.K0[b:b + 1], p.depth0[b:b + 1].reshape(1, -1))
    Xc = X @ p.R[b:b + 1].transpose(-1, -2) + p.t[b:b + 1, None]
    x1 = project_pinhole(Xc, p.K1[b:b + 1])
    g = torch.stack([x1[..., 0] / (W - 1) * 2 - 1, x1[..., 1] / (H - 1) * 2 - 1], -1).reshape(1, H, W, 2)
    warped = F.grid_sample(p.image1[b:b + 1], g, align_corners=True)
    # drop pixels occluded in view 1: their depth in view 1 is larger than what view 1 sees there
    d1 = F.grid_sample(p.depth1[b:b + 1, None], g, align_corners=True)[0, 0]
    vis = (g.abs() <= 0.98).all(-1)[0] & ((Xc[0, :, 2].reshape(H, W) - d1).abs() < 0.02 * d1)
    return (warped - p.image0[b:b + 1]).abs().mean(1)[0][vis]


def test_shapes_ranges_and_poses():
    p = render_pair(batch=2, image_size=(96, 64), texture_size=128, seed=1)
    assert p.image0.shape == (2, 3, 64, 96) and p.depth1.shape == (2, 64, 96)
    assert p.image0.dtype == torch.float32
    assert float(p.image0.min()) >= 0 and float(p.image0.max()) <= 1
    assert bool(p.valid0.all()) and bool((p.depth0 > 1.0).all()) and bool((p.depth0 < 12).all())
    torch.testing.assert_close(p.R0, torch.eye(3).expand(2, 3, 3))
    R, t = compose_rigid(p.R1, p.t1, *invert_rigid(p.R0, p.t0))
    torch.testing.assert_close(R, p.R)
    torch.testing.assert_close(t, p.t)
    assert bool((p.t.norm(dim=-1) > 0.29).all())
    assert torch.isnan(p.H).all()


def test_seeded_and_batched_independently():
    a = render_pair(batch=1, image_size=(48, 32), texture_size=64, seed=3)
    b = render_pair(batch=1, image_size=(48, 32), texture_size=64, seed=3)
    c = render_pair(batch=1, image_size=(48, 32), texture_size=64, seed=4)
    assert torch.equal(a.image0, b.image0)
    assert (a.image0 - c.image0).abs().mean() > 0.01


def test_images_agree_with_depth_and_pose():
    p = render_pair(batch=1, image_size=(128, 96), texture_size=256, seed=2, dtype=torch.float64)
    err = _warp_error(p)
    assert err.numel() > 0.6 * 128 * 96
    assert float(err.median()) < 0.02  # intensities in [0, 1]; a wrong pose gives ~0.2


def test_planar_homography_matches_depth():
    p = render_pair(batch=2, image_size=(96, 72), planar=True, texture_size=128, seed=0, dtype=torch.float64)
    H, W = 72, 96
    vv, uu = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    x0 = torch.stack([uu, vv], -1).reshape(1, -1, 2).double().expand(2, -1, -1)
    X = unproject_pinhole(x0, p.K0, p.depth0.reshape(2, -1))
    x1 = project_pinhole(X @ p.R.transpose(-1, -2) + p.t[:, None], p.K1)
    xh = torch.cat([x0, torch.ones_like(x0[..., :1])], -1) @ p.H.transpose(-1, -2)
    assert float((xh[..., :2] / xh[..., 2:] - x1).norm(dim=-1).max()) < 1e-6
    n, d = p.plane[:, :3], p.plane[:, 3]
    assert float(((X * n[:, None]).sum(-1) - d[:, None]).abs().max()) < 1e-9
    assert float(rotation_error(p.R, p.R).max()) < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError):
        render_pair(image_size=(4, 4))
    with pytest.raises(ValueError):
        render_pair(batch=0)
