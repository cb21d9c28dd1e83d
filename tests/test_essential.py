"""Essential-matrix solvers: 5-point, 8-point, decomposition and cheirality pose recovery."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from conftest import data_path
from hypothesis import given, settings
from hypothesis import strategies as st

from torch3dv.camera.pinhole import pixels_to_normalized
from torch3dv.geometry.metrics import rotation_error, translation_direction_error
from torch3dv.linalg.polynomial import real_roots, real_roots_list
from torch3dv.solvers.essential import (
    EssentialSolutions,
    decompose_essential,
    essential_5point,
    essential_8point,
    essential_from_pose,
    project_to_essential,
    recover_pose,
)
from torch3dv.testing.scenes import two_view_scene


def _normalized(scene):
    return pixels_to_normalized(scene.x1, scene.K1), pixels_to_normalized(scene.x2, scene.K2)


def _e_dist(E: torch.Tensor, Eg: torch.Tensor) -> torch.Tensor:
    """Distance between essential matrices up to scale and sign (relative, Frobenius)."""
    En = E / E.flatten(-2).norm(dim=-1).clamp_min(1e-300)[..., None, None]
    Egn = Eg / Eg.flatten(-2).norm(dim=-1)[..., None, None]
    return torch.minimum((En - Egn).flatten(-2).norm(dim=-1), (En + Egn).flatten(-2).norm(dim=-1))


def _best_solution_error(sol: EssentialSolutions, Eg: torch.Tensor) -> torch.Tensor:
    d = _e_dist(sol.E, Eg[..., None, :, :])
    return torch.where(sol.valid, d, torch.full_like(d, float("inf"))).amin(-1)


# ------------------------------------------------------------------------------------------------ polynomial


def test_real_roots_match_numpy():
    g = torch.Generator().manual_seed(0)
    n = 300
    # clustered real roots (hard for sign-change methods) plus complex pairs
    real = torch.randn(n, 4, generator=g, dtype=torch.float64) * 0.05 + torch.randn(n, 1, generator=g,
                                                                                     dtype=torch.float64)
    cplx = torch.complex(torch.randn(n, 3, generator=g, dtype=torch.float64),
                         torch.rand(n, 3, generator=g, dtype=torch.float64) + 0.05)
    coefs = []
    for i in range(n):
        r = np.concatenate([real[i].numpy(), cplx[i].numpy(), cplx[i].numpy().conj()])
        coefs.append(np.real(np.poly(r))[::-1].copy())
    c = torch.tensor(np.array(coefs))
    z, valid = real_roots(c)
    assert valid.sum(-1).eq(4).all()
    got = torch.sort(torch.where(valid, z, torch.full_like(z, float("inf"))), -1).values[:, :4]
    want = torch.sort(real, -1).values
    err = (got - want).abs()
    assert err.max() < 1e-4  # roots 1e-3 apart: rounding the coefficients alone moves them by ~1e-6
    assert err.median() < 1e-9


def test_real_roots_list_matches_numpy():
    g = torch.Generator().manual_seed(1)
    n = 400
    # real roots spread over the whole line (both charts, |z| = 1 exactly, close pairs) plus complex pairs
    theta = torch.rand(n, 4, generator=g, dtype=torch.float64) * (math.pi - 0.01) - (math.pi - 0.01) / 2
    theta[:, 1] = theta[:, 0] + 1e-3 * (torch.rand(n, generator=g, dtype=torch.float64) + 0.1)  # close pair
    z = torch.tan(theta)  # (pairs closer than the finest isolation cell, ~1e-7, are not resolved)
    z[:40, 2] = 1.0
    z[40:80, 2] = -1.0
    cplx = torch.complex(torch.randn(n, 3, generator=g, dtype=torch.float64),
                         torch.rand(n, 3, generator=g, dtype=torch.float64) + 0.05)
    coefs = []
    for i in range(n):
        real = z[i, 1:].numpy() if 80 <= i < 120 else z[i].numpy()  # 80..119: z[0] at infinity (leading coef 0)
        co = np.real(np.poly(np.concatenate([real, cplx[i].numpy(), cplx[i].numpy().conj()])))[::-1]
        coefs.append(np.concatenate([co, np.zeros(11 - len(co))]))
    c = torch.tensor(np.array(coefs))
    prob, slot, uv = real_roots_list(c)
    count = torch.bincount(prob, minlength=n)
    assert count[:80].eq(4).all() and count[120:].eq(4).all() and count[80:120].eq(4).all()
    # slots are distinct per polynomial and fill 0 .. count - 1
    assert torch.equal(torch.bincount(prob * 16 + slot, minlength=16 * n).reshape(n, 16).sum(-1), count)
    assert (slot < count[prob]).all()
    ang = torch.atan2(uv[:, 0], uv[:, 1])  # the projective point as an angle modulo pi
    want = torch.atan(z)
    want[80:120, 0] = math.pi / 2  # the root at infinity
    d = (ang[:, None] - want[prob]).remainder(math.pi)
    d = torch.minimum(d, math.pi - d).amin(-1)
    assert d.max() < 1e-7 and d.median() < 1e-13


# ------------------------------------------------------------------------------------------------ 5-point


def test_5point_noise_free_float64():
    s = two_view_scene(400, 5, seed=1)
    x1, x2 = _normalized(s)
    sol = essential_5point(x1, x2)
    assert sol.E.shape == (400, 10, 3, 3) and sol.valid.shape == (400, 10) and sol.success.shape == (400,)
    err = _best_solution_error(sol, s.E)
    assert (err <= 1e-6).float().mean() >= 0.995  # a few random minimal samples are very ill-conditioned
    assert err.median() < 1e-12
    # every valid solution satisfies the epipolar and the essential constraints
    Ev = sol.E[sol.valid]
    svals = torch.linalg.svdvals(Ev)
    assert (svals[:, 2] / svals[:, 0]).max() < 1e-6
    assert (svals[:, 1] / svals[:, 0] - 1).abs().max() < 1e-6
    x1h = torch.cat([x1, torch.ones_like(x1[..., :1])], -1)
    x2h = torch.cat([x2, torch.ones_like(x2[..., :1])], -1)
    res = torch.einsum("bni,bsij,bnj->bsn", x2h, sol.E, x1h)
    assert res[sol.valid].abs().max() < 1e-8
    # invalid slots are zero, valid slots first
    assert (sol.E[~sol.valid] == 0).all()
    assert (sol.valid.int().diff(dim=-1) <= 0).all()


def test_5point_float32():
    s = two_view_scene(400, 5, seed=2, dtype=torch.float32)
    x1, x2 = _normalized(s)
    sol = essential_5point(x1, x2)
    assert sol.E.dtype == torch.float32
    err = _best_solution_error(sol, s.E)
    # solved in float64 internally: only the float32 rounding of inputs and outputs remains
    assert (err <= 1e-3).float().mean() >= 0.99
    assert err.median() < 1e-5


def test_5point_chunks(monkeypatch):
    e5 = importlib.import_module("torch3dv.solvers.essential_5point")  # (the package re-exports the function)

    s = two_view_scene(150, 5, seed=24)
    x1, x2 = _normalized(s)
    ref = essential_5point(x1, x2)
    for chunk in (64, 70):  # 64: chunks padded with degenerate problems
        monkeypatch.setattr(e5, "_CHUNK", chunk)
        sol = essential_5point(x1, x2)
        assert torch.equal(sol.valid, ref.valid)
        torch.testing.assert_close(sol.E, ref.E, rtol=0, atol=1e-9)  # rounding differs with the batch layout


def test_5point_batched_leading_dims():
    s = two_view_scene(12, 5, seed=3)
    x1, x2 = _normalized(s)
    flat = essential_5point(x1, x2)
    sol = essential_5point(x1.reshape(3, 4, 5, 2), x2.reshape(3, 4, 5, 2))
    assert sol.E.shape == (3, 4, 10, 3, 3) and sol.valid.shape == (3, 4, 10) and sol.success.shape == (3, 4)
    torch.testing.assert_close(sol.E.reshape(12, 10, 3, 3), flat.E)
    assert torch.equal(sol.valid.reshape(12, 10), flat.valid)
    one = essential_5point(x1[0], x2[0])  # no batch dims
    assert one.E.shape == (10, 3, 3)


def _constraint_residual(E: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Largest violation of the epipolar constraints and of the essential singular values (unit-norm E)."""
    E = E / np.linalg.norm(E)
    ep = np.abs(np.einsum("ni,ij,nj->n", np.c_[b, np.ones(len(b))], E, np.c_[a, np.ones(len(a))])).max()
    sv = np.linalg.svd(E, compute_uv=False)
    return max(ep, sv[2] / sv[0], abs(sv[0] - sv[1]) / sv[0])


def test_5point_matches_poselib():
    poselib = pytest.importorskip("poselib")
    s = two_view_scene(150, 5, seed=4, noise_px=0.5)
    x1, x2 = _normalized(s)
    sol = essential_5point(x1, x2)
    dist, ours_res, theirs_res = [], [], []
    for i in range(150):
        a, b = x1[i].numpy(), x2[i].numpy()
        for Er in poselib.essential_matrix_5pt(np.c_[a, np.ones(5)], np.c_[b, np.ones(5)]):
            d = _e_dist(sol.E[i], torch.from_numpy(np.asarray(Er))[None])
            d = torch.where(sol.valid[i], d, torch.full_like(d, 9.0))
            dist.append(float(d.min()))
            ours_res.append(_constraint_residual(sol.E[i, d.argmin()].numpy(), a, b))
            theirs_res.append(_constraint_residual(np.asarray(Er), a, b))
    dist, ours_res, theirs_res = map(np.array, (dist, ours_res, theirs_res))
    # every PoseLib solution is one of ours (up to scale and sign) ...
    assert (dist < 1e-3).mean() >= 0.97
    assert np.median(dist) < 1e-10
    # ... and where they differ, ours is the one that satisfies the constraints (PoseLib is not polished)
    assert ours_res.max() < 1e-9
    assert np.median(theirs_res[dist > 1e-6]) > 1e3 * np.median(ours_res[dist > 1e-6])


def test_5point_degenerate_and_bad_rows():
    s = two_view_scene(6, 5, seed=5)
    x1, x2 = _normalized(s)
    x1, x2 = x1.clone(), x2.clone()
    x1[1, 4], x2[1, 4] = x1[1, 3], x2[1, 3]  # coincident correspondences: rank-deficient system
    x1[2, 0, 0] = float("nan")  # NaN row
    x2[3] = x2[3, :1]  # all points of image 2 identical
    sol = essential_5point(x1, x2)
    assert not sol.success[1] and not sol.success[2] and not sol.success[3]
    assert torch.isfinite(sol.E).all()
    ref = essential_5point(x1[[0, 4, 5]], x2[[0, 4, 5]])
    torch.testing.assert_close(sol.E[[0, 4, 5]], ref.E)
    assert sol.success[[0, 4, 5]].all()


def test_5point_bad_inputs():
    x = torch.zeros(2, 5, 2)
    with pytest.raises(ValueError):
        essential_5point(x[:, :4], x[:, :4])
    with pytest.raises(ValueError):
        essential_5point(x, x.double())
    with pytest.raises(ValueError):
        essential_5point(x.long(), x.long())
    with pytest.raises(ValueError):
        essential_5point(x[..., :1], x[..., :1])
    with pytest.raises(ValueError):
        essential_5point(x, x[:1])


def test_5point_gradcheck():
    s = two_view_scene(1, 5, seed=6)
    x1, x2 = _normalized(s)
    sol = essential_5point(x1, x2)
    k = int(_e_dist(sol.E[0], s.E).masked_fill(~sol.valid[0], 9).argmin())

    def f(a, b):
        return essential_5point(a, b).E[:, k]

    x1 = x1.clone().requires_grad_(True)
    x2 = x2.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x1, x2), eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ 8-point


def test_8point_noise_free(dtype):
    s = two_view_scene(50, 40, seed=7, dtype=dtype)
    x1, x2 = _normalized(s)
    E, ok = essential_8point(x1, x2)
    assert ok.all()
    tol = 1e-6 if dtype == torch.float64 else 2e-3
    assert _e_dist(E, s.E).max() < tol
    sv = torch.linalg.svdvals(E.double())
    torch.testing.assert_close(sv, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64).expand_as(sv),
                               atol=1e-5 if dtype == torch.float32 else 1e-10, rtol=0)


def test_8point_batched_masks_and_weights():
    s = two_view_scene(6, 20, seed=8)
    x1, x2 = _normalized(s)
    E, ok = essential_8point(x1.reshape(2, 3, 20, 2), x2.reshape(2, 3, 20, 2))
    assert E.shape == (2, 3, 3, 3) and ok.shape == (2, 3)
    E_flat, _ = essential_8point(x1, x2)
    torch.testing.assert_close(E.reshape(6, 3, 3), E_flat)
    # noisy data so that the subsets give different answers
    s = two_view_scene(4, 20, seed=9, noise_px=1.0)
    x1, x2 = _normalized(s)
    keep = torch.ones(4, 20, dtype=torch.bool)
    keep[:, 13:] = False
    ref, _ = essential_8point(x1[:, :13], x2[:, :13])
    # padded rows with NaN + mask
    x1p, x2p = x1.clone(), x2.clone()
    x1p[:, 13:] = float("nan")
    x2p[:, 15:] = float("inf")
    Em, okm = essential_8point(x1p, x2p, mask=keep)
    assert okm.all()
    torch.testing.assert_close(Em, ref)
    # zero weights = removed rows
    Ew, okw = essential_8point(x1, x2, weights=keep.double())
    assert okw.all()
    torch.testing.assert_close(Ew, ref)


def test_8point_against_poselib():
    poselib = pytest.importorskip("poselib")
    s = two_view_scene(400, 30, seed=10, noise_px=0.5)
    x1, x2 = _normalized(s)
    E, ok = essential_8point(x1, x2)
    assert ok.all()
    ours = _e_dist(E, s.E).numpy()
    theirs = np.array([float(_e_dist(torch.from_numpy(np.asarray(poselib.essential_matrix_8pt(
        np.c_[x1[i].numpy(), np.ones(30)], np.c_[x2[i].numpy(), np.ones(30)]))), s.E[i])) for i in range(400)])
    # same algorithm (linear 8-point + projection; PoseLib without Hartley normalisation): same accuracy
    assert np.median(ours) <= 1.05 * np.median(theirs)


def test_8point_degenerate():
    s = two_view_scene(5, 20, seed=11)
    x1, x2 = _normalized(s)
    x1, x2 = x1.clone(), x2.clone()
    mask = torch.ones(5, 20, dtype=torch.bool)
    mask[0, 7:] = False  # 7 points
    x1[1, 3, 1] = float("nan")  # NaN in a used row
    x1[2] = x1[2, :1]  # coincident points in image 1
    x2[2] = x2[2, :1]
    E, ok = essential_8point(x1, x2, mask=mask)
    assert not ok[:3].any() and ok[3:].all()
    assert torch.isfinite(E).all() and (E[:3] == 0).all()
    ref, _ = essential_8point(x1[3:], x2[3:])
    torch.testing.assert_close(E[3:], ref)
    # noise-free pure rotation: every [t]x R fits, the null space is 3-dimensional
    p = two_view_scene(4, 30, seed=12, pure_rotation=True)
    _, okp = essential_8point(*_normalized(p))
    assert not okp.any()


def test_8point_bad_inputs():
    x = torch.zeros(2, 9, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        essential_8point(x, x[..., :9, :1])
    with pytest.raises(ValueError):
        essential_8point(x, x.float())
    with pytest.raises(ValueError):
        essential_8point(x, x, mask=torch.ones(2, 9))  # not bool
    with pytest.raises(ValueError):
        essential_8point(x, x, weights=torch.ones(2, 8, dtype=torch.float64))
    if torch.cuda.is_available():
        with pytest.raises(ValueError):
            essential_8point(x, x.cuda())


def test_8point_gradcheck():
    s = two_view_scene(1, 10, seed=13, noise_px=0.5)
    x1, x2 = _normalized(s)
    x1 = x1.clone().requires_grad_(True)
    x2 = x2.clone().requires_grad_(True)
    w = torch.rand(1, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: essential_8point(a, b, weights=c).E, (x1, x2, w))


def test_project_to_essential_gradcheck_at_essential_input():
    s = two_view_scene(1, 5, seed=14)
    E = (s.E + 1e-3 * torch.randn(1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    assert torch.autograd.gradcheck(project_to_essential, (E.clone().requires_grad_(True),))
    # exactly essential input (s1 = s2): SVD gradients would be infinite, ours are finite
    Ee = s.E.clone().requires_grad_(True)
    project_to_essential(Ee).sum().backward()
    assert torch.isfinite(Ee.grad).all()


# ------------------------------------------------------------------------------------------------ decomposition


def test_decompose_essential(dtype):
    s = two_view_scene(20, 5, seed=15, dtype=dtype)
    E = essential_from_pose(s.R, s.t) * -3.0  # any scale and sign
    R, t = decompose_essential(E)
    assert R.shape == (20, 4, 3, 3) and t.shape == (20, 4, 3)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(20, 4, dtype=dtype), atol=tol, rtol=0)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(20, 4, dtype=dtype), atol=tol, rtol=0)
    eye = torch.eye(3, dtype=dtype)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye.expand_as(R), atol=tol, rtol=0)
    # exactly one candidate equals the ground truth (unit t)
    tg = s.t / s.t.norm(dim=-1, keepdim=True)
    match = (rotation_error(R, s.R[:, None]) < 1e3 * tol) & ((t - tg[:, None]).norm(dim=-1) < 1e3 * tol)
    assert match.sum(-1).eq(1).all()
    # every candidate reproduces E up to scale and sign
    assert _e_dist(essential_from_pose(R, t), E[:, None]).max() < 1e3 * tol
    # zero / NaN inputs give finite identities
    R0, t0 = decompose_essential(torch.stack([torch.zeros(3, 3, dtype=dtype), torch.full((3, 3), float("nan"),
                                                                                         dtype=dtype)]))
    assert torch.isfinite(R0).all() and (t0 == 0).all()


# ------------------------------------------------------------------------------------------------ recover_pose


def test_recover_pose_noise_free(dtype):
    s = two_view_scene(30, 25, seed=16, dtype=dtype)
    x1, x2 = _normalized(s)
    E, _ = essential_8point(x1, x2)
    P = recover_pose(E, x1, x2)
    assert P.success.all() and P.in_front.all() and (P.num_in_front == 25).all()
    assert torch.equal(P.inliers, P.in_front)
    tol = 1e-6 if dtype == torch.float64 else 2e-3
    assert rotation_error(P.R, s.R).max() < tol
    assert translation_direction_error(P.t, s.t).max() < tol
    # with the exact E
    P2 = recover_pose(s.E, x1, x2)
    assert rotation_error(P2.R, s.R).max() < tol and translation_direction_error(P2.t, s.t).max() < tol


def test_recover_pose_with_solution_set():
    s = two_view_scene(40, 30, seed=17)
    x1, x2 = _normalized(s)
    sol = essential_5point(x1[:, :5], x2[:, :5])
    P = recover_pose(sol, x1, x2, threshold=1e-6)  # the 5-point solutions scored on all 30 points
    good = P.success
    assert good.float().mean() > 0.9  # fails where the (ill-conditioned) sample lost the true solution
    assert rotation_error(P.R[good], s.R[good]).max() < 1e-6
    assert translation_direction_error(P.t[good], s.t[good]).max() < 1e-6
    P2 = recover_pose(sol.E, x1, x2, valid=sol.valid, threshold=1e-6)
    torch.testing.assert_close(P2.R, P.R)
    assert torch.equal(P2.success, P.success)


def test_recover_pose_masks_and_weights():
    s = two_view_scene(5, 20, seed=18)
    x1, x2 = _normalized(s)
    E, _ = essential_8point(x1, x2)
    ref = recover_pose(E, x1[:, :12], x2[:, :12])
    mask = torch.zeros(5, 20, dtype=torch.bool)
    mask[:, :12] = True
    x1p = x1.clone()
    x1p[:, 12:] = float("nan")
    P = recover_pose(E, x1p, x2, mask=mask)
    torch.testing.assert_close(P.R, ref.R)
    torch.testing.assert_close(P.t, ref.t)
    assert torch.equal(P.num_in_front, ref.num_in_front) and not P.in_front[:, 12:].any()
    Pw = recover_pose(E, x1, x2, weights=mask.double())
    torch.testing.assert_close(Pw.R, ref.R)


def test_recover_pose_degenerate():
    # pure rotation with 0.5 px noise: the 8-point succeeds on noise, the parallax test rejects the pose
    p = two_view_scene(40, 40, seed=19, pure_rotation=True, noise_px=0.5)
    x1, x2 = _normalized(p)
    E, ok = essential_8point(x1, x2)
    assert ok.all()
    P = recover_pose(E, x1, x2)
    assert P.success.float().mean() <= 0.1
    # half of the points behind the cameras: (R, t) and (R, -t) explain half each -> ambiguous
    s = two_view_scene(3, 20, seed=20)
    x1, x2 = _normalized(s)
    # points seen through (R, -t): same epipolar geometry (E -> -E), but behind the cameras for (R, t)
    Xb = s.X[:, 10:]
    X2b = Xb @ s.R.transpose(-1, -2) - s.t[:, None]
    assert (X2b[..., 2] > 0).all()
    x1b = Xb[..., :2] / Xb[..., 2:]
    x2b = X2b[..., :2] / X2b[..., 2:]
    x1m = torch.cat([x1[:, :10], x1b], 1)
    x2m = torch.cat([x2[:, :10], x2b], 1)
    P = recover_pose(s.E, x1m, x2m)
    assert not P.success.any()
    # NaN rows, zero / NaN E, garbage correspondences -> failure with finite outputs, others unchanged
    s = two_view_scene(5, 20, seed=21)
    x1, x2 = _normalized(s)
    x1, x2 = x1.clone(), x2.clone()
    x1[0, 2, 0] = float("nan")
    x2[2] = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    E = s.E.clone()
    E[1] = 0
    E[3] = float("nan")
    P = recover_pose(E, x1, x2, threshold=1e-3)
    assert not P.success[:4].any() and P.success[4]
    assert torch.isfinite(P.R).all() and torch.isfinite(P.t).all()
    ref = recover_pose(s.E[4:], x1[4:], x2[4:])
    torch.testing.assert_close(P.R[4:], ref.R)


def test_recover_pose_bad_inputs():
    x = torch.zeros(2, 9, 2, dtype=torch.float64)
    E = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    with pytest.raises(ValueError):
        recover_pose(E[:1], x, x)
    with pytest.raises(ValueError):
        recover_pose(E.float(), x, x)
    with pytest.raises(ValueError):
        recover_pose(E, x, x[:, :8])
    with pytest.raises(ValueError):
        recover_pose(E[:, None].expand(2, 3, 3, 3), x, x, valid=torch.ones(2, 2, dtype=torch.bool))


def test_recover_pose_gradcheck():
    s = two_view_scene(1, 12, seed=22, noise_px=0.5)
    x1, x2 = _normalized(s)
    x1 = x1.clone().requires_grad_(True)
    x2 = x2.clone().requires_grad_(True)

    def f(a, b):
        E, _ = essential_8point(a, b)
        P = recover_pose(E, a, b)
        return P.R, P.t

    assert torch.autograd.gradcheck(f, (x1, x2))


def test_noisy_accuracy_vs_opencv():
    cv2 = pytest.importorskip("cv2")
    s = two_view_scene(200, 60, seed=23, noise_px=0.5)
    x1, x2 = _normalized(s)
    E, ok = essential_8point(x1, x2)
    P = recover_pose(E, x1, x2)
    assert ok.all() and P.success.float().mean() > 0.97
    err_ours = torch.maximum(rotation_error(P.R, s.R), translation_direction_error(P.t, s.t))
    err_cv = []
    K = np.eye(3)
    for i in range(200):
        a, b = x1[i].numpy(), x2[i].numpy()
        Ec, _ = cv2.findEssentialMat(a, b, K, method=cv2.LMEDS)
        _, Rc, tc, _ = cv2.recoverPose(Ec[:3], a, b, K)
        err_cv.append(max(float(rotation_error(torch.from_numpy(Rc), s.R[i])),
                          float(translation_direction_error(torch.from_numpy(tc[:, 0]), s.t[i]))))
    med_ours, med_cv = float(err_ours.median()), float(np.median(err_cv))
    assert med_ours <= 1.05 * med_cv + math.radians(0.01), (math.degrees(med_ours), math.degrees(med_cv))


# ------------------------------------------------------------------------------------------------ properties


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(8, 40))
def test_property_8point_recover_pose(seed, n):
    s = two_view_scene(2, n, seed=seed)
    x1, x2 = _normalized(s)
    E, ok = essential_8point(x1, x2)
    P = recover_pose(E, x1, x2)
    good = ok & P.success
    assert good.all()
    assert rotation_error(P.R, s.R).max() < 1e-5
    assert translation_direction_error(P.t, s.t).max() < 1e-5
    # E is consistent with the recovered pose
    assert _e_dist(essential_from_pose(P.R, P.t), E).max() < 1e-5


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_property_5point_contains_truth(seed):
    s = two_view_scene(8, 5, seed=seed)
    x1, x2 = _normalized(s)
    sol = essential_5point(x1, x2)
    err = _best_solution_error(sol, s.E)
    assert (err < 1e-4).float().mean() >= 0.75  # random minimal samples can be badly conditioned
    assert torch.isfinite(sol.E).all() and (sol.valid.sum(-1) <= 10).all()


# ------------------------------------------------------------------------------------------------ real data

_IMAGES: dict = {}


def _fountain_view(root, idx: int, scale: float):
    import cv2

    key = (idx, scale)
    if key not in _IMAGES:
        img = cv2.imread(str(root / "images" / f"{idx:04d}.jpg"), cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        lines = (root / "gt_dense_cameras" / f"{idx:04d}.jpg.camera").read_text().split("\n")
        nums = [[float(v) for v in line.split()] for line in lines if line.strip()]
        K = np.array(nums[0:3])
        Rw = np.array(nums[4:7])
        C = np.array(nums[7])
        # pixel centres at integer coordinates: x_small = (x + 0.5) * scale - 0.5
        S = np.array([[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5], [0, 0, 1]])
        R_cw = Rw.T
        t_cw = -R_cw @ C
        _IMAGES[key] = (img, S @ K, R_cw, t_cw)
    return _IMAGES[key]


@pytest.mark.parametrize("pair", [(0, 1), (4, 6), (7, 8)])
def test_real_data_fountain(pair):
    cv2 = pytest.importorskip("cv2")
    root = data_path("strecha_fountain-P11")
    scale = 1024 / 3072
    i, j = pair
    img1, K1, R1, t1 = _fountain_view(root, i, scale)
    img2, K2, R2, t2 = _fountain_view(root, j, scale)
    sift = cv2.SIFT_create(nfeatures=4000)
    k1, d1 = sift.detectAndCompute(img1, None)
    k2, d2 = sift.detectAndCompute(img2, None)
    matches = cv2.BFMatcher().knnMatch(d1, d2, k=2)
    good = [m for m, n2 in matches if m.distance < 0.8 * n2.distance]
    p1 = np.float64([k1[m.queryIdx].pt for m in good])
    p2 = np.float64([k2[m.trainIdx].pt for m in good])
    K1t, K2t = torch.from_numpy(K1), torch.from_numpy(K2)
    x1 = pixels_to_normalized(torch.from_numpy(p1), K1t)
    x2 = pixels_to_normalized(torch.from_numpy(p2), K2t)
    # inliers from OpenCV's RANSAC (test-only), in normalised coordinates (0.75 px at f ~ 920 px)
    f = 0.5 * (K1[0, 0] + K2[0, 0])
    Ec, inl = cv2.findEssentialMat(x1.numpy(), x2.numpy(), np.eye(3), method=cv2.RANSAC, prob=0.999,
                                   threshold=0.75 / f)
    inl = inl[:, 0].astype(bool)
    assert inl.sum() > 100
    a, b = x1[inl], x2[inl]
    R_gt = torch.from_numpy(R2 @ R1.T)
    t_gt = torch.from_numpy(t2 - R2 @ R1.T @ t1)
    E, ok = essential_8point(a, b)
    P = recover_pose(E, a, b)
    assert ok and P.success
    err_r = math.degrees(float(rotation_error(P.R, R_gt)))
    err_t = math.degrees(float(translation_direction_error(P.t, t_gt)))
    _, Rc, tc, _ = cv2.recoverPose(Ec[:3], a.numpy(), b.numpy(), np.eye(3))
    err_rc = math.degrees(float(rotation_error(torch.from_numpy(Rc), R_gt)))
    err_tc = math.degrees(float(translation_direction_error(torch.from_numpy(tc[:, 0]), t_gt)))
    assert err_r < 2.0 and err_t < 5.0, (err_r, err_t)
    assert err_r <= 1.05 * err_rc + 0.25 and err_t <= 1.05 * err_tc + 1.0, (err_r, err_t, err_rc, err_tc)
