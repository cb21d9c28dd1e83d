"""torch3dv.solvers.homography_decompose: (R, t/d, n) from a calibrated homography, pose by cheirality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch3dv.camera.pinhole import pixels_to_normalized
from torch3dv.geometry import rotation_error, translation_direction_error
from torch3dv.geometry.rotations import random_rotation
from torch3dv.solvers import decompose_homography, homography_dlt, pose_from_homography, transfer_error
from torch3dv.testing import two_view_scene

cv2 = pytest.importorskip("cv2")

EYE = torch.eye(3, dtype=torch.float64)


def deg(x: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(x)


def gt_solution(s):
    """Ground truth (R, t/d, n) with d > 0 (the scene stores n . X = d with either sign of d)."""
    sgn = torch.sign(s.plane[:, 3:])
    return s.R, s.t / s.plane[:, 3:].abs(), s.plane[:, :3] * sgn


def solution_distance(R, t, n, R0, t0, n0):
    """Max-abs distance of each of the solutions (..., S, ...) to one reference (..., ...)."""
    return torch.stack([(R - R0[..., None, :, :]).abs().flatten(-2).amax(-1),
                        (t - t0[..., None, :]).abs().amax(-1), (n - n0[..., None, :]).abs().amax(-1)]).amax(0)


def test_exact_planar_scenes_match_ground_truth_and_opencv():
    s = two_view_scene(200, 20, planar=True, seed=1)
    dec = decompose_homography(s.H, s.K1, s.K2)
    assert dec.R.shape == (200, 4, 3, 3) and dec.t.shape == (200, 4, 3) and dec.valid.shape == (200, 4)
    assert bool(dec.valid.all())
    # one of the four is the ground truth
    dist = solution_distance(dec.R, dec.t, dec.n, *gt_solution(s))
    assert float(dist.min(-1).values.max()) < 1e-9
    # every solution is an exact decomposition of the Euclidean homography, with a proper rotation
    Hn = torch.linalg.inv(s.K2) @ s.H @ s.K1
    Hn = Hn / torch.linalg.svdvals(Hn)[:, 1, None, None]
    rec = dec.R + dec.t[..., :, None] * dec.n[..., None, :]
    assert float((rec - Hn[:, None]).abs().max()) < 1e-12
    assert float((dec.R.transpose(-1, -2) @ dec.R - EYE).abs().max()) < 1e-12
    assert float((torch.linalg.det(dec.R) - 1).abs().max()) < 1e-12
    assert float((dec.n.norm(dim=-1) - 1).abs().max()) < 1e-12
    # the same set as OpenCV (Malis & Vargas), up to order
    worst = 0.0
    for b in range(200):
        k, Rs, ts, ns = cv2.decomposeHomographyMat(Hn[b].numpy(), np.eye(3))
        assert k == 4
        cR = torch.from_numpy(np.stack(Rs))
        ct = torch.from_numpy(np.stack(ts))[..., 0]
        cn = torch.from_numpy(np.stack(ns))[..., 0]
        D = torch.stack([solution_distance(dec.R[b], dec.t[b], dec.n[b], cR[j], ct[j], cn[j])
                         for j in range(4)])
        worst = max(worst, float(D.min(0).values.max()), float(D.min(1).values.max()))
    assert worst < 1e-8  # OpenCV itself is within ~1e-10 of the ground truth here


def test_float32_and_any_scale_or_sign():
    s = two_view_scene(200, 20, planar=True, seed=2)
    scale = torch.empty(200, 1, 1, dtype=torch.float64).uniform_(-3.0, 3.0)
    scale = torch.where(scale.abs() < 0.1, torch.full_like(scale, 0.5), scale)
    d64 = decompose_homography(scale * s.H, s.K1, s.K2)
    ref = decompose_homography(s.H, s.K1, s.K2)
    assert float((d64.R - ref.R).abs().max()) < 1e-12 and float((d64.t - ref.t).abs().max()) < 1e-12
    d32 = decompose_homography(s.H.float(), s.K1.float(), s.K2.float())
    assert d32.R.dtype == torch.float32 and bool(d32.valid.all())
    dist = solution_distance(d32.R.double(), d32.t.double(), d32.n.double(), *gt_solution(s)).min(-1).values
    assert float(dist.median()) < 1e-5 and float(dist.max()) < 1e-3


def test_batched_broadcast_and_masked_pose():
    s = two_view_scene(6, 40, noise_px=0.5, planar=True, seed=4)
    H = homography_dlt(s.x1, s.x2).H
    flat = pose_from_homography(H, s.x1, s.x2, s.K1, s.K2)
    r = pose_from_homography(H.reshape(2, 3, 3, 3), s.x1.reshape(2, 3, 40, 2), s.x2.reshape(2, 3, 40, 2),
                             s.K1.reshape(2, 3, 3, 3), s.K2.reshape(2, 3, 3, 3))
    assert r.R.shape == (2, 3, 3, 3) and r.t.shape == (2, 3, 3) and r.in_front.shape == (2, 3, 40)
    assert r.success.shape == (2, 3)
    torch.testing.assert_close(r.R.reshape(6, 3, 3), flat.R)
    assert torch.equal(r.ambiguous.reshape(6), flat.ambiguous)
    # NaN padding under a mask gives the unpadded answer
    pad = torch.full((6, 5, 2), float("nan"), dtype=torch.float64)
    mask = torch.ones(6, 45, dtype=torch.bool)
    mask[:, 10:15] = False
    x1p = torch.cat([s.x1[:, :10], pad, s.x1[:, 10:]], 1)
    x2p = torch.cat([s.x2[:, :10], pad, s.x2[:, 10:]], 1)
    rp = pose_from_homography(H, x1p, x2p, s.K1, s.K2, mask=mask)
    torch.testing.assert_close(rp.R, flat.R)
    torch.testing.assert_close(rp.t, flat.t)
    assert torch.equal(rp.num_in_front, flat.num_in_front) and not bool(rp.in_front[:, 10:15].any())
    # one shared K (3, 3) broadcasts over the batch
    d = decompose_homography(s.H[:2], s.K1[0], s.K2[0])
    d0 = decompose_homography(s.H[:2], s.K1[:1].expand(2, 3, 3), s.K2[:1].expand(2, 3, 3))
    torch.testing.assert_close(d.R, d0.R)


def test_noisy_pose_matches_opencv_filter():
    B = 300
    s = two_view_scene(B, 100, noise_px=0.5, planar=True, seed=3)
    H = homography_dlt(s.x1, s.x2).H
    p = pose_from_homography(H, s.x1, s.x2, s.K1, s.K2)
    assert bool(p.success.all())
    eR, et = deg(rotation_error(p.R, s.R)), deg(translation_direction_error(p.t, s.t))
    eRa, eta = deg(rotation_error(p.R_alt, s.R)), deg(translation_direction_error(p.t_alt, s.t))
    x1n = pixels_to_normalized(s.x1, s.K1).numpy().astype(np.float32)[:, :, None]
    x2n = pixels_to_normalized(s.x2, s.K2).numpy().astype(np.float32)[:, :, None]
    Hn = (torch.linalg.inv(s.K2) @ H @ s.K1).numpy()
    cv_amb = torch.zeros(B, dtype=torch.bool)
    cv_err = torch.zeros(B, 2, dtype=torch.float64)  # best (R, t) error among OpenCV's surviving solutions
    for b in range(B):
        _, Rs, ts, ns = cv2.decomposeHomographyMat(Hn[b], np.eye(3))
        keep = cv2.filterHomographyDecompByVisibleRefpoints(Rs, ns, x1n[b], x2n[b])
        assert keep is not None
        keep = keep.ravel()
        cv_amb[b] = len(keep) > 1
        errs = [(float(deg(rotation_error(torch.from_numpy(Rs[i]), s.R[b]))),
                 float(deg(translation_direction_error(torch.from_numpy(ts[i]).ravel(), s.t[b]))))
                for i in keep]
        cv_err[b] = torch.tensor(min(errs, key=sum))
    # the same problems are ambiguous (a motion mostly towards the plane), about half of these scenes
    assert torch.equal(cv_amb, p.ambiguous)
    assert 0.2 < float(p.ambiguous.float().mean()) < 0.8
    one = ~p.ambiguous  # a unique solution: it is the ground truth, with OpenCV's errors
    assert float(eR[one].median()) < 0.2 and float(eR[one].max()) < 1.0
    assert float(et[one].median()) < 1.0 and float(et[one].max()) < 5.0
    assert float((eR[one] - cv_err[one, 0]).abs().max()) < 1e-3
    assert float((et[one] - cv_err[one, 1]).abs().max()) < 1e-3
    # ambiguous: the ground truth is the chosen or the alternative solution, as close as OpenCV's best
    chosen = (eR + et) <= (eRa + eta)
    bR, bt = torch.where(chosen, eR, eRa)[~one], torch.where(chosen, et, eta)[~one]
    assert float(bR.max()) < 1.0 and float(bt.max()) < 5.0
    assert float((bR - cv_err[~one, 0]).abs().max()) < 1e-3
    assert float((bt - cv_err[~one, 1]).abs().max()) < 1e-3
    # the twin is a genuinely different pose (degrees away), so the flag matters
    assert float(torch.where(chosen, eRa, eR)[~one].median()) > 1.0


def test_off_plane_points_break_the_twin_tie():
    s = two_view_scene(100, 120, noise_px=0.5, planar=True, planar_fraction=0.7, seed=6)
    H = homography_dlt(s.x1[:, :84], s.x2[:, :84]).H
    plane_only = pose_from_homography(H, s.x1[:, :84], s.x2[:, :84], s.K1, s.K2)
    amb = plane_only.ambiguous
    assert bool(amb.any())
    p = pose_from_homography(H, s.x1, s.x2, s.K1, s.K2, threshold=3.0)
    assert bool(p.success.all())
    # the 36 off-plane points decide: the ground truth everywhere, including where the plane alone could not
    eR, et = deg(rotation_error(p.R, s.R)), deg(translation_direction_error(p.t, s.t))
    eRa, eta = deg(rotation_error(p.R_alt, s.R)), deg(translation_direction_error(p.t_alt, s.t))
    assert bool((eR + et < eRa + eta).all())
    assert float(eR.max()) < 1.0 and float(et.median()) < 1.5 and float(et.max()) < 8.0
    # H's outliers (transfer error >= threshold) are not plane points for cheirality
    te = transfer_error(H, s.x1, s.x2)
    assert not bool((p.in_front & (te >= 9.0)).any()) and bool((p.num_in_front >= 75).all())


def test_pure_rotation():
    s = two_view_scene(5, 30, pure_rotation=True, seed=2)
    dec = decompose_homography(s.H, s.K1, s.K2)
    assert dec.valid.tolist() == [[True, False, False, False]] * 5
    assert float((dec.R[:, 0] - s.R).abs().max()) < 1e-12
    assert float(dec.t.abs().max()) == 0.0 and float(dec.n.abs().max()) == 0.0
    p = pose_from_homography(s.H, s.x1, s.x2, s.K1, s.K2)
    assert not bool(p.success.any())  # translation unobservable
    assert float((p.R - s.R).abs().max()) < 1e-12 and float(p.t.abs().max()) == 0.0
    # noisy H from a rotation: 4 solutions with a fake small translation, no success (no parallax left after
    # the best rotation)
    n = two_view_scene(40, 60, noise_px=0.5, pure_rotation=True, seed=3)
    Hn = homography_dlt(n.x1, n.x2).H
    assert bool(decompose_homography(Hn, n.K1, n.K2).valid.all(-1).any())
    assert not bool(pose_from_homography(Hn, n.x1, n.x2, n.K1, n.K2).success.any())


def test_degenerate_inputs_fail_cleanly(dtype):
    s = two_view_scene(5, 30, planar=True, seed=7, dtype=dtype)
    H = s.H.clone()
    H[0, 1, 1] = float("nan")
    H[1] = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]], dtype=dtype)  # rank 2
    H[2] = 0.0
    H[3, 2, 2] = float("inf")
    K1 = s.K1.clone()
    H = H.requires_grad_(True)
    dec = decompose_homography(H, K1, s.K2)
    assert dec.valid[:4].sum() == 0 and bool(dec.valid[4].all())
    assert all(bool(torch.isfinite(v).all()) for v in (dec.R, dec.t, dec.n))
    (dec.R.sum() + dec.t.sum() + dec.n.sum()).backward()
    assert bool(torch.isfinite(H.grad).all())
    p = pose_from_homography(H.detach(), s.x1, s.x2, K1, s.K2)
    assert p.success.tolist() == [False] * 4 + [True]
    assert all(bool(torch.isfinite(v).all()) for v in (p.R, p.t, p.n, p.R_alt))
    ok = decompose_homography(s.H[4:], K1[4:], s.K2[4:])
    torch.testing.assert_close(dec.R[4:].detach(), ok.R)


def test_caller_errors():
    s = two_view_scene(2, 10, planar=True, seed=0)
    with pytest.raises(ValueError):
        decompose_homography(s.H[..., :2], s.K1, s.K2)
    with pytest.raises(ValueError):
        decompose_homography(s.H.long(), s.K1, s.K2)
    with pytest.raises(ValueError):
        decompose_homography(s.H, s.K1.float(), s.K2)
    with pytest.raises(ValueError):
        pose_from_homography(s.H[:1], s.x1, s.x2, s.K1, s.K2)


def test_gradcheck():
    s = two_view_scene(6, 30, noise_px=0.3, planar=True, seed=5)
    Hn = (torch.linalg.inv(s.K2) @ homography_dlt(s.x1, s.x2).H @ s.K1).requires_grad_(True)

    def dec(H):
        d = decompose_homography(H, EYE, EYE)
        return d.R, d.t, d.n

    assert torch.autograd.gradcheck(dec, (Hn[:2],))
    # through the intrinsics (pixel H fixed)
    K1, K2 = s.K1[:2].clone().requires_grad_(True), s.K2[:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: decompose_homography(s.H[:2], a, b)[:3], (K1, K2))
    # the chosen solution of a non-ambiguous problem, pixels in
    p0 = pose_from_homography(s.K2 @ Hn.detach() @ torch.linalg.inv(s.K1), s.x1, s.x2, s.K1, s.K2)
    b = int((~p0.ambiguous & p0.success).nonzero()[0, 0])

    def pose(H):
        K1b, K2b = s.K1[b:b + 1], s.K2[b:b + 1]
        p = pose_from_homography(K2b @ H @ torch.linalg.inv(K1b), s.x1[b:b + 1], s.x2[b:b + 1], K1b, K2b)
        return p.R, p.t, p.n, p.t_over_d

    assert torch.autograd.gradcheck(pose, (Hn[b:b + 1].detach().clone().requires_grad_(True),))


def _random_plane_problems(seed: int, B: int = 64, N: int = 60):
    """Random K, rotations, planes (n, d) and translations with both cameras on the plane's visible side, and
    plane points seen by both cameras."""
    g = torch.Generator().manual_seed(seed)
    f = torch.empty(B, dtype=torch.float64).uniform_(300, 900, generator=g)
    K = torch.zeros(B, 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1], K[:, 2, 2] = f, f * 1.01, 1.0
    K[:, 0, 2], K[:, 1, 2] = 320.0, 240.0
    R = random_rotation(B, generator=g, dtype=torch.float64)
    n = torch.randn(B, 3, generator=g, dtype=torch.float64)
    n[:, 2] = n[:, 2].abs() + 0.7  # a plane in front of camera 1
    n = n / n.norm(dim=-1, keepdim=True)
    d = torch.empty(B, dtype=torch.float64).uniform_(1.0, 10.0, generator=g)
    t = torch.randn(B, 3, generator=g, dtype=torch.float64)
    t = t / t.norm(dim=-1, keepdim=True) * d[:, None] * torch.empty(B, 1, dtype=torch.float64).uniform_(
        0.05, 0.5, generator=g)
    # points: rays of camera 1 that meet the plane in front, kept where camera 2 sees them in front too
    m = torch.cat([torch.empty(B, N, 2, dtype=torch.float64).uniform_(-0.5, 0.5, generator=g),
                   torch.ones(B, N, 1, dtype=torch.float64)], -1)
    nm = (m * n[:, None]).sum(-1)
    X = m * (d[:, None] / nm.clamp_min(1e-9))[..., None]
    X2 = X @ R.transpose(-1, -2) + t[:, None]
    ok = (nm > 0.05) & (X2[..., 2] > 0.05)
    Hm = K @ (R + t[:, :, None] * n[:, None, :] / d[:, None, None]) @ torch.linalg.inv(K)
    det = torch.linalg.det(R + t[:, :, None] * n[:, None, :] / d[:, None, None])
    x1 = (X @ K.transpose(-1, -2))[..., :2] / X[..., 2:]
    x2 = (X2 @ K.transpose(-1, -2))[..., :2] / X2[..., 2:].clamp_min(1e-9)
    good = (det > 0.05) & (ok.sum(-1) >= 10)
    return K, R, t / d[:, None], n, Hm, x1, x2, ok, good


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(-5.0, 5.0).filter(lambda v: abs(v) > 1e-3))
def test_property_random_planes_and_poses(seed, scale):
    K, R, tod, n, Hm, x1, x2, ok, good = _random_plane_problems(seed)
    dec = decompose_homography(scale * Hm, K, K)
    assert bool(dec.valid[good].all())
    # the ground truth is one of the four (|t/d| >= 0.05: the normal is well conditioned)
    dist = solution_distance(dec.R, dec.t, dec.n, R, tod, n).min(-1).values
    assert float(dist[good].max()) < 1e-8
    # pose by cheirality: the ground truth is the unique survivor, or one of the two when ambiguous
    p = pose_from_homography(Hm, x1, x2, K, K, mask=ok)
    eR = rotation_error(p.R, R)
    eRa = rotation_error(p.R_alt, R)
    en = (p.n - n).norm(dim=-1)
    ena = (p.n_alt - n).norm(dim=-1)
    hit = (eR < 1e-7) & (en < 1e-7)
    hit_alt = (eRa < 1e-7) & (ena < 1e-7)
    assert bool((hit | (p.ambiguous & hit_alt))[good].all())
    assert bool((p.num_in_front == ok.sum(-1))[good].all())  # all visible points pass for the truth


def test_pipeline_homography_method_returns_the_true_pose():
    # the rendered plane of tests/test_pipelines.py, where an essential-matrix pose on H's inliers returned
    # the twin pose (7 degrees off)
    from torch3dv.features import build_matcher
    from torch3dv.pipelines import relative_pose_from_matches
    from torch3dv.testing.render import render_pair

    p = render_pair(batch=1, image_size=(160, 120), planar=True, texture_size=256, seed=3)
    m = build_matcher("sift", max_keypoints=384)(p.image0, p.image1)
    g = relative_pose_from_matches(m, p.K0, p.K1, method="homography")
    assert bool(g.success.all())
    assert float(deg(rotation_error(g.R, p.R)).max()) < 0.5
    assert float(deg(translation_direction_error(g.t, p.t)).max()) < 2.0
