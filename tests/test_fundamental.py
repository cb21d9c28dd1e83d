import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from torch3dv.solvers.fundamental import (
    fundamental_7point,
    fundamental_8point,
    sampson_distance,
    symmetric_epipolar_distance,
)
from torch3dv.testing import two_view_scene

cv2 = pytest.importorskip("cv2")


def f_err(F: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Distance between matrices up to scale and sign (both scaled to unit Frobenius norm)."""
    F = F / F.flatten(-2).norm(dim=-1)[..., None, None]
    G = G / G.flatten(-2).norm(dim=-1)[..., None, None]
    return torch.minimum((F - G).flatten(-2).norm(dim=-1), (F + G).flatten(-2).norm(dim=-1))


def best_of_7pt(res, F_true):
    e = f_err(res.F.double(), F_true.double()[..., None, :, :])
    return torch.where(res.valid, e, torch.full_like(e, float("inf"))).amin(-1)


@pytest.mark.parametrize("n", [8, 20])
def test_8point_exact(dtype, n):
    s = two_view_scene(300, n, seed=1, dtype=dtype)
    r = fundamental_8point(s.x1, s.x2)
    assert r.F.dtype == dtype and r.F.shape == (300, 3, 3)
    e = f_err(r.F.double(), s.F.double())
    if dtype == torch.float64:
        assert r.success.all()
        # random 8-point sets include a few near-critical configurations; all others are exact
        assert (e <= 1e-6).float().mean() >= (0.99 if n == 8 else 1.0)
        assert torch.linalg.det(r.F).abs().max() < 1e-12
        torch.testing.assert_close(r.F.flatten(-2).norm(dim=-1), torch.ones(300, dtype=dtype))
    else:
        assert r.success.float().mean() > 0.95
        e = e[r.success]
        assert e.median() < 1e-5 and torch.quantile(e, 0.9) < 1e-3


def test_7point_exact(dtype):
    s = two_view_scene(300, 7, seed=2, dtype=dtype)
    r = fundamental_7point(s.x1, s.x2)
    assert r.F.shape == (300, 3, 3, 3) and r.valid.shape == (300, 3)
    assert torch.equal(r.success, r.valid.any(-1))
    e = best_of_7pt(r, s.F)
    if dtype == torch.float64:
        assert r.success.all() and (e <= 1e-6).float().mean() >= 0.99
        # every valid solution is rank 2 and satisfies the 7 constraints
        x1h = torch.cat([s.x1, torch.ones_like(s.x1[..., :1])], -1)
        x2h = torch.cat([s.x2, torch.ones_like(s.x2[..., :1])], -1)
        alg = torch.einsum("bni,bsij,bnj->bsn", x2h, r.F, x1h)
        assert alg[r.valid].abs().max() < 1e-9
        assert torch.linalg.det(r.F)[r.valid].abs().max() < 1e-12
    else:
        assert r.success.float().mean() > 0.97
        assert e[r.success].median() < 1e-5


def test_7point_unrefined_null_space():
    # refine=False (RANSAC hypotheses) skips the refinement step of the float64 null space: same solutions to
    # well within any RANSAC threshold, and exactly the same on the float32 default
    s = two_view_scene(300, 7, noise_px=0.5, seed=3)
    a, b = fundamental_7point(s.x1, s.x2), fundamental_7point(s.x1, s.x2, refine=False)
    assert torch.equal(a.valid, b.valid)
    assert f_err(a.F, b.F)[a.valid].max() < 1e-8
    assert sampson_distance(b.F, s.x1, s.x2)[b.valid].max() < 1e-12
    s32 = two_view_scene(50, 7, noise_px=0.5, seed=3, dtype=torch.float32)
    assert torch.equal(fundamental_7point(s32.x1, s32.x2).F, fundamental_7point(s32.x1, s32.x2, refine=False).F)


def test_batched_leading_dims(dtype):
    s = two_view_scene(6, 12, seed=3, dtype=dtype)
    flat = fundamental_8point(s.x1, s.x2)
    r = fundamental_8point(s.x1.reshape(2, 3, 12, 2), s.x2.reshape(2, 3, 12, 2))
    assert r.F.shape == (2, 3, 3, 3) and r.success.shape == (2, 3)
    torch.testing.assert_close(r.F.reshape(6, 3, 3), flat.F)
    s7 = two_view_scene(6, 7, seed=3, dtype=dtype)
    r7 = fundamental_7point(s7.x1.reshape(3, 2, 7, 2), s7.x2.reshape(3, 2, 7, 2))
    assert r7.F.shape == (3, 2, 3, 3, 3) and r7.valid.shape == (3, 2, 3)
    # a batch of one keeps its dimension
    assert fundamental_8point(s.x1[:1], s.x2[:1]).F.shape == (1, 3, 3)


def test_mask_padding_and_zero_weights(dtype):
    s = two_view_scene(4, 15, noise_px=0.5, seed=4, dtype=dtype)
    ref = fundamental_8point(s.x1, s.x2)
    pad = torch.full((4, 5, 2), float("nan"), dtype=dtype)
    x1 = torch.cat([s.x1[:, :7], pad, s.x1[:, 7:]], 1)
    x2 = torch.cat([s.x2[:, :7], pad, s.x2[:, 7:]], 1)
    mask = torch.ones(4, 20, dtype=torch.bool)
    mask[:, 7:12] = False
    r = fundamental_8point(x1, x2, mask=mask)
    assert r.success.all()
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    assert f_err(r.F, ref.F).max() < tol
    # zero weights equal removing the rows (the padding holds random finite junk here)
    junk = 100 * torch.randn(4, 5, 2, dtype=dtype)
    w = mask.to(dtype)
    r = fundamental_8point(torch.cat([s.x1[:, :7], junk, s.x1[:, 7:]], 1),
                           torch.cat([s.x2[:, :7], -junk, s.x2[:, 7:]], 1), weights=w)
    assert f_err(r.F, ref.F).max() < tol
    # uniform weights change nothing; integer weights act as row multiplicities
    r2 = fundamental_8point(s.x1, s.x2, weights=torch.full((4, 15), 3.0, dtype=dtype))
    assert f_err(r2.F, ref.F).max() < tol
    wi = torch.ones(4, 15, dtype=dtype)
    wi[:, 0] = 2.0
    r3 = fundamental_8point(s.x1, s.x2, weights=wi)
    r4 = fundamental_8point(torch.cat([s.x1, s.x1[:, :1]], 1), torch.cat([s.x2, s.x2[:, :1]], 1))
    assert f_err(r3.F, r4.F).max() < (1e-6 if dtype == torch.float64 else 1e-2)


def test_noisy_8point_matches_opencv():
    s = two_view_scene(40, 100, noise_px=1.0, seed=7)
    r = fundamental_8point(s.x1, s.x2)
    assert r.success.all()
    Fcv = torch.stack([torch.from_numpy(cv2.findFundamentalMat(s.x1[i].numpy(), s.x2[i].numpy(),
                                                               cv2.FM_8POINT)[0]) for i in range(40)])
    ours = sampson_distance(r.F, s.x1_clean, s.x2_clean).median(-1).values
    theirs = sampson_distance(Fcv, s.x1_clean, s.x2_clean).median(-1).values
    assert ours.median() <= 1.05 * theirs.median()
    # same algorithm (normalised 8-point + rank 2 in the normalised frame): near-identical matrices
    assert f_err(r.F, Fcv).median() < 1e-6


def test_7point_matches_opencv():
    s = two_view_scene(30, 7, noise_px=0.5, seed=8)
    r = fundamental_7point(s.x1, s.x2)
    for i in range(30):
        Fc, _ = cv2.findFundamentalMat(s.x1[i].numpy(), s.x2[i].numpy(), cv2.FM_7POINT)
        Fc = torch.from_numpy(Fc).reshape(-1, 3, 3)
        ours = r.F[i][r.valid[i]]
        assert len(ours) == len(Fc)
        d = f_err(ours[:, None], Fc[None])  # (ours, cv)
        # every OpenCV solution is one of ours (loose: OpenCV's root finder is less accurate near double roots)
        assert d.amin(0).max() < 1e-3
        assert d.amin(0).median() < 1e-4
        assert sampson_distance(ours, s.x1[i], s.x2[i]).max() < 1e-12


def test_sampson_and_symmetric_distance():
    s = two_view_scene(3, 10, noise_px=2.0, seed=9)
    d = sampson_distance(s.F, s.x1, s.x2)
    assert d.shape == (3, 10)
    # slow reference, one point at a time
    for b in range(3):
        for n in range(10):
            x1 = torch.cat([s.x1[b, n], torch.ones(1, dtype=torch.float64)])
            x2 = torch.cat([s.x2[b, n], torch.ones(1, dtype=torch.float64)])
            Fx1, Ftx2 = s.F[b] @ x1, s.F[b].T @ x2
            r = x2 @ Fx1
            ref = r ** 2 / (Fx1[0] ** 2 + Fx1[1] ** 2 + Ftx2[0] ** 2 + Ftx2[1] ** 2)
            sym = r ** 2 * (1 / (Fx1[0] ** 2 + Fx1[1] ** 2) + 1 / (Ftx2[0] ** 2 + Ftx2[1] ** 2))
            torch.testing.assert_close(d[b, n], ref)
            torch.testing.assert_close(symmetric_epipolar_distance(s.F, s.x1, s.x2)[b, n], sym)
    # exact matrix on clean points: zero; stacked hypotheses broadcast to (*B, S, N)
    assert sampson_distance(s.F, s.x1_clean, s.x2_clean).max() < 1e-16
    Fs = torch.stack([s.F, 2 * s.F, s.F.transpose(-1, -2)], 1)
    ds = sampson_distance(Fs, s.x1, s.x2)
    assert ds.shape == (3, 3, 10)
    torch.testing.assert_close(ds[:, 1], d)  # scale invariant
    assert symmetric_epipolar_distance(Fs, s.x1, s.x2).shape == (3, 3, 10)


def test_gradcheck():
    s = two_view_scene(2, 10, noise_px=0.5, seed=10)
    x1 = s.x1.clone().requires_grad_(True)
    x2 = s.x2.clone().requires_grad_(True)
    w = torch.rand(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).add(0.5)
    w.requires_grad_(True)

    def f8(a, b, ww):
        F = fundamental_8point(a, b, weights=ww).F
        return F * torch.sign(F[..., 2:, 2:])  # fix the arbitrary sign

    assert torch.autograd.gradcheck(f8, (x1, x2, w), fast_mode=True)
    # minimal 8-point path (projection instead of eigh)
    assert torch.autograd.gradcheck(f8, (x1[:, :8].detach().requires_grad_(), x2[:, :8].detach().requires_grad_(),
                                         w[:, :8].detach().requires_grad_()), fast_mode=True)

    def f7(a, b):
        # sum_k F_k (x) F_k over the solutions: invariant to their order and signs
        r = fundamental_7point(a, b)
        v = r.F.flatten(-2) * r.valid[..., None]
        return torch.einsum("bsi,bsj->bij", v, v)

    s7 = two_view_scene(2, 7, noise_px=0.5, seed=11)
    assert torch.autograd.gradcheck(f7, (s7.x1.clone().requires_grad_(), s7.x2.clone().requires_grad_()),
                                    fast_mode=True)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(8, 40))
def test_property_recovers_random_scenes(seed, n):
    s = two_view_scene(4, n, seed=seed)
    r = fundamental_8point(s.x1, s.x2)
    assert r.success.all()
    assert sampson_distance(r.F, s.x1, s.x2).max() < 1e-12
    s7 = two_view_scene(4, 7, seed=seed)
    r7 = fundamental_7point(s7.x1, s7.x2)
    assert r7.success.all()
    assert best_of_7pt(r7, s7.F).max() < 1e-6
    # every valid solution explains the seven points
    assert sampson_distance(r7.F, s7.x1, s7.x2)[r7.valid].max() < 1e-12


def test_degenerate_inputs_fail_locally(dtype):
    s = two_view_scene(5, 12, seed=12, dtype=dtype)
    planar = two_view_scene(1, 12, seed=13, planar=True, dtype=dtype)
    x1, x2 = s.x1.clone(), s.x2.clone()
    mask = torch.ones(5, 12, dtype=torch.bool)
    mask[1, 5:] = False  # only 5 points
    x1[2, 3] = float("nan")  # NaN in a used row
    x1[3], x2[3] = planar.x1[0], planar.x2[0]  # all points on one plane
    ref = fundamental_8point(s.x1, s.x2)
    r = fundamental_8point(x1, x2, mask=mask)
    assert r.success.tolist() == [True, False, False, False, True]
    assert torch.isfinite(r.F).all()
    torch.testing.assert_close(r.F[[0, 4]], ref.F[[0, 4]])
    # 7-point: NaN, masked row, coplanar
    s7 = two_view_scene(4, 7, seed=14, dtype=dtype)
    p7 = two_view_scene(1, 7, seed=15, planar=True, dtype=dtype)
    y1, y2 = s7.x1.clone(), s7.x2.clone()
    y2[0, 6] = float("inf")
    y1[2], y2[2] = p7.x1[0], p7.x2[0]
    m7 = torch.ones(4, 7, dtype=torch.bool)
    m7[1, 0] = False
    r7 = fundamental_7point(y1, y2, mask=m7)
    assert r7.success.tolist() == [False, False, False, True]
    assert torch.isfinite(r7.F).all() and not r7.valid[:3].any()
    torch.testing.assert_close(r7.F[3], fundamental_7point(s7.x1[3:], s7.x2[3:]).F[0])


def test_caller_errors():
    x = torch.rand(2, 10, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        fundamental_8point(x, x[..., :1])  # wrong shape
    with pytest.raises(ValueError):
        fundamental_8point(x, x[:, :9])  # mismatched N
    with pytest.raises(ValueError):
        fundamental_8point(x.long(), x.long())  # integer dtype
    with pytest.raises(ValueError):
        fundamental_8point(x, x.float())  # mixed dtypes
    with pytest.raises(ValueError):
        fundamental_8point(x, x.to("meta"))  # mixed devices
    with pytest.raises(ValueError):
        fundamental_8point(x, x, mask=torch.ones(2, 10))  # non-bool mask
    with pytest.raises(ValueError):
        fundamental_7point(x, x)  # not 7 points
    with pytest.raises(ValueError):
        sampson_distance(torch.eye(3, dtype=torch.float64)[:2], x, x)
    with pytest.raises(ValueError):
        sampson_distance(torch.eye(3, dtype=torch.float32), x, x)


def _reference_8point(x1, x2):
    """Slow, obvious reference: explicit design matrix, eigh of A^T A, rank 2 by SVD (float64)."""
    from torch3dv.linalg.normalization import normalize_points

    n1, n2 = normalize_points(x1), normalize_points(x2)
    h1 = torch.cat([n1.points, torch.ones_like(n1.points[..., :1])], -1)
    h2 = torch.cat([n2.points, torch.ones_like(n2.points[..., :1])], -1)
    A = (h2[..., :, None] * h1[..., None, :]).flatten(-2)
    f = torch.linalg.eigh(A.transpose(-1, -2) @ A)[1][..., 0]
    U, S, Vh = (torch.from_numpy(t) for t in np.linalg.svd(f.reshape(-1, 3, 3).numpy()))
    Fn = U @ torch.diag_embed(S * torch.tensor([1.0, 1.0, 0.0], dtype=S.dtype)) @ Vh
    return n2.T.transpose(-1, -2) @ Fn @ n1.T


@pytest.mark.parametrize("n", [8, 20])
def test_matches_slow_reference(n):
    # the fast paths (Householder null vector for N = 8, block inverse iteration for N > 8) against eigh + SVD
    s = two_view_scene(500, n, noise_px=0.5, seed=21)
    r = fundamental_8point(s.x1, s.x2)
    assert r.success.all()
    assert f_err(r.F, _reference_8point(s.x1, s.x2)).quantile(0.99) < 1e-9


def test_grad_mode_gives_same_values():
    # with autograd the minimal solvers keep their value (projection only adds the derivative) and the
    # least-squares path switches to eigh: the results agree to rounding
    for n in [8, 20]:
        s = two_view_scene(50, n, noise_px=0.5, seed=22)
        a = fundamental_8point(s.x1, s.x2).F
        b = fundamental_8point(s.x1.clone().requires_grad_(), s.x2).F.detach()
        assert f_err(a, b).max() < 1e-10
    s7 = two_view_scene(50, 7, noise_px=0.5, seed=23)
    a = fundamental_7point(s7.x1, s7.x2)
    b = fundamental_7point(s7.x1.clone().requires_grad_(), s7.x2)
    assert torch.equal(a.valid, b.valid)
    torch.testing.assert_close(a.F, b.F.detach(), rtol=0, atol=1e-12)


def test_chunking_is_invisible(dtype, monkeypatch):
    # large batches run in chunks; a chunked call equals the unchunked one problem by problem
    import torch3dv.solvers.fundamental as fm

    s = two_view_scene(700, 8, noise_px=0.5, seed=24, dtype=dtype)
    s20 = two_view_scene(700, 20, noise_px=0.5, seed=24, dtype=dtype)
    s7 = two_view_scene(700, 7, noise_px=0.5, seed=24, dtype=dtype)
    ref = [fundamental_8point(s.x1, s.x2), fundamental_8point(s20.x1, s20.x2), fundamental_7point(s7.x1, s7.x2)]
    monkeypatch.setattr(fm, "_chunk_size", lambda n: 256)
    got = [fundamental_8point(s.x1, s.x2), fundamental_8point(s20.x1, s20.x2), fundamental_7point(s7.x1, s7.x2)]
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for r, g in zip(ref, got):
        assert torch.equal(r.success, g.success)
        torch.testing.assert_close(g.F, r.F, rtol=0, atol=tol)
