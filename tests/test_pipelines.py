"""torch3dv.pipelines: matches -> relative pose / PnP against depth / Procrustes recover rendered ground truth."""

from __future__ import annotations

import pytest
import torch

from torch3dv.features import Matches, build_matcher
from torch3dv.geometry import rotation_error, translation_direction_error
from torch3dv.pipelines import (
    localize_with_depth,
    register_with_depths,
    relative_pose_from_matches,
    sample_depth,
)
from torch3dv.testing.render import render_pair


@pytest.fixture(scope="module")
def scene():
    p = render_pair(batch=2, image_size=(176, 132), texture_size=256, seed=5)
    m = build_matcher("sift", max_keypoints=512)(p.image0, p.image1)
    return p, m


def deg(x: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(x)


@pytest.mark.parametrize("method", ["essential", "fundamental"])
def test_relative_pose_and_triangulation(scene, method):
    p, m = scene
    g = relative_pose_from_matches(m, p.K0, p.K1, method=method)
    assert g.R.shape == (2, 3, 3) and g.X.shape == (*m.mask.shape, 3) and bool(g.success.all())
    assert float(deg(rotation_error(g.R, p.R)).max()) < 1.0
    # F has 7 DoF and ignores K in the fit: its translation direction is visibly noisier at this image size
    assert float(deg(translation_direction_error(g.t, p.t)).max()) < (3.0 if method == "essential" else 10.0)
    # triangulated points (unit baseline) scaled by the true baseline lie on the rendered depth of image 0
    assert bool((g.points_mask.sum(-1) > 50).all())
    z, ok = sample_depth(p.depth0, m.kpts0)
    for b in range(2):
        sel = g.points_mask[b] & ok[b]
        rel = (g.X[b, sel, 2] * p.t[b].norm() - z[b, sel]).abs() / z[b, sel]
        assert float(rel.median()) < 0.05


def test_homography_on_a_plane():
    p = render_pair(batch=1, image_size=(160, 120), planar=True, texture_size=256, seed=3)
    m = build_matcher("sift", max_keypoints=384)(p.image0, p.image1)
    g = relative_pose_from_matches(m, p.K0, p.K1, method="homography")
    assert bool(g.success.all())
    xh = torch.cat([m.kpts0, torch.ones_like(m.kpts0[..., :1])], -1)
    a, b = xh @ g.model.transpose(-1, -2), xh @ p.H.transpose(-1, -2)
    diff = (a[..., :2] / a[..., 2:] - b[..., :2] / b[..., 2:]).norm(dim=-1)[m.mask]
    assert float(diff.median()) < 0.5
    # a plane seen by two calibrated views has two pose solutions that explain it equally well (the twin of
    # the homography decomposition); the returned pose is one of them, so only its cheirality is checked here
    assert bool(g.points_mask.sum() > 40) and bool((g.X[g.points_mask][:, 2] > 0).all())


def test_localize_against_depth_is_metric(scene):
    p, m = scene
    loc = localize_with_depth(m, p.depth0, p.K0, p.K1)
    assert bool(loc.success.all())
    assert float(deg(rotation_error(loc.R, p.R)).max()) < 0.5
    assert float((loc.t - p.t).norm(dim=-1).max()) < 0.02  # metres, baseline 0.3-0.7 m
    # with a world pose for camera 0 the answer is cam1_from_world
    R0 = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.2, 0.1], [0.2, 0.0, -0.3], [-0.1, 0.3, 0.0]]))
    t0 = torch.tensor([0.5, -1.0, 2.0])
    locw = localize_with_depth(m, p.depth0, p.K0, p.K1, R0=R0.expand(2, 3, 3), t0=t0.expand(2, 3))
    torch.testing.assert_close(locw.R, loc.R @ R0, atol=2e-3, rtol=0)


def test_procrustes_from_two_depths(scene):
    p, m = scene
    reg = register_with_depths(m, p.depth0, p.depth1, p.K0, p.K1)
    assert bool(reg.success.all())
    assert float(deg(rotation_error(reg.R, p.R)).max()) < 0.5
    assert float((reg.t - p.t).norm(dim=-1).max()) < 0.02
    sim = register_with_depths(m, p.depth0, 2.0 * p.depth1, p.K0, p.K1, with_scale=True, threshold=0.1)
    torch.testing.assert_close(sim.s, torch.full((2,), 2.0), atol=0.01, rtol=0)


def test_no_matches_fail_cleanly(scene):
    p, _ = scene
    B = 2
    empty = Matches(torch.zeros(B, 1, 2), torch.zeros(B, 1, 2), torch.zeros(B, 1), torch.zeros(B, 1, dtype=torch.bool),
                    torch.full((B, 1), -1), torch.full((B, 1), -1), torch.zeros(B, dtype=torch.long))
    for method in ("essential", "fundamental", "homography"):
        g = relative_pose_from_matches(empty, p.K0, p.K1, method=method)
        assert not bool(g.success.any()) and torch.isfinite(g.R).all() and not bool(g.points_mask.any())
    assert not bool(localize_with_depth(empty, p.depth0, p.K0, p.K1).success.any())
    assert not bool(register_with_depths(empty, p.depth0, p.depth1, p.K0, p.K1).success.any())


def test_one_empty_pair_does_not_spoil_the_other(scene):
    p, m = scene
    mask = m.mask.clone()
    mask[1] = False
    g = relative_pose_from_matches(m._replace(mask=mask, num_matches=mask.sum(-1)), p.K0, p.K1)
    assert bool(g.success[0]) and not bool(g.success[1])
    assert float(deg(rotation_error(g.R[:1], p.R[:1]))) < 1.0


def test_caller_errors(scene):
    p, m = scene
    with pytest.raises(ValueError):
        relative_pose_from_matches((m.kpts0, m.kpts1), p.K0, p.K1)
    with pytest.raises(ValueError, match="method"):
        relative_pose_from_matches(m, p.K0, p.K1, method="affine")
    with pytest.raises(ValueError):
        relative_pose_from_matches(m, p.K0[..., :2], p.K1)
    with pytest.raises(ValueError):
        localize_with_depth(m, p.depth0[0], p.K0, p.K1)


def test_sample_depth_refuses_discontinuities():
    d = torch.ones(1, 8, 8)
    d[:, :, 4:] = 5.0
    z, ok = sample_depth(d, torch.tensor([[[1.25, 2.0], [3.5, 2.0], [6.0, 7.0], [8.5, 1.0]]]))
    assert ok.tolist() == [[True, False, True, False]]
    torch.testing.assert_close(z, torch.tensor([[1.0, 0.0, 5.0, 0.0]]))
