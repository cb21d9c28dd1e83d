import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import data_path
from torch3dv.solvers.homography import homography_4point, homography_dlt, transfer_error
from torch3dv.testing import two_view_scene

cv2 = pytest.importorskip("cv2")


def h_err(H: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Relative distance up to scale and sign (both scaled to unit Frobenius norm)."""
    H = H / H.flatten(-2).norm(dim=-1)[..., None, None]
    G = G / G.flatten(-2).norm(dim=-1)[..., None, None]
    return torch.minimum((H - G).flatten(-2).norm(dim=-1), (H + G).flatten(-2).norm(dim=-1))


@pytest.mark.parametrize("solver,n", [(homography_4point, 4), (homography_dlt, 4), (homography_dlt, 30)])
def test_exact_recovery(dtype, solver, n):
    s = two_view_scene(300, n, planar=True, seed=1, dtype=dtype)
    r = solver(s.x1, s.x2)
    assert r.H.shape == (300, 3, 3) and r.H.dtype == dtype
    e = h_err(r.H.double(), s.H.double())
    if dtype == torch.float64:
        assert r.success.all() and e.max() <= 1e-6
        # OpenCV scaling: H22 = 1, so after that normalisation the matrices agree entrywise
        rel = (r.H - s.H).flatten(-2).norm(dim=-1) / s.H.flatten(-2).norm(dim=-1)
        assert rel.max() <= 1e-6
        assert torch.allclose(r.H[..., 2, 2], torch.ones((), dtype=dtype))
    else:
        assert r.success.float().mean() >= 0.98
        e = e[r.success]
        # a few random quadrilaterals are nearly degenerate (three almost collinear points): float32 loses digits
        assert e.median() < 1e-5 and torch.quantile(e, 0.97) < 1e-3


def test_batched_mask_weights(dtype):
    s = two_view_scene(6, 10, noise_px=0.5, planar=True, seed=2, dtype=dtype)
    flat = homography_dlt(s.x1, s.x2)
    r = homography_dlt(s.x1.reshape(3, 2, 10, 2), s.x2.reshape(3, 2, 10, 2))
    assert r.H.shape == (3, 2, 3, 3) and r.success.shape == (3, 2)
    torch.testing.assert_close(r.H.reshape(6, 3, 3), flat.H)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    # NaN padding under a mask == the unpadded problem
    pad = torch.full((6, 3, 2), float("nan"), dtype=dtype)
    mask = torch.ones(6, 13, dtype=torch.bool)
    mask[:, 4:7] = False
    rp = homography_dlt(torch.cat([s.x1[:, :4], pad, s.x1[:, 4:]], 1),
                        torch.cat([s.x2[:, :4], pad, s.x2[:, 4:]], 1), mask=mask)
    assert rp.success.all() and h_err(rp.H, flat.H).max() < tol
    # zero weights == removing rows; weights act as multiplicities
    junk = 50 * torch.randn(6, 3, 2, dtype=dtype)
    rw = homography_dlt(torch.cat([s.x1, junk], 1), torch.cat([s.x2, junk.flip(-1)], 1),
                        weights=torch.cat([torch.ones(6, 10, dtype=dtype), torch.zeros(6, 3, dtype=dtype)], 1))
    assert h_err(rw.H, flat.H).max() < tol
    w = torch.ones(6, 10, dtype=dtype)
    w[:, 2] = 3.0
    rm = homography_dlt(s.x1, s.x2, weights=w)
    rd = homography_dlt(torch.cat([s.x1, s.x1[:, 2:3].expand(6, 2, 2)], 1),
                        torch.cat([s.x2, s.x2[:, 2:3].expand(6, 2, 2)], 1))
    assert h_err(rm.H, rd.H).max() < (1e-8 if dtype == torch.float64 else 1e-2)
    # 4-point: batch dims and a batch of one
    s4 = two_view_scene(4, 4, planar=True, seed=3, dtype=dtype)
    r4 = homography_4point(s4.x1.reshape(2, 2, 4, 2), s4.x2.reshape(2, 2, 4, 2))
    assert r4.H.shape == (2, 2, 3, 3)
    assert homography_4point(s4.x1[:1], s4.x2[:1]).H.shape == (1, 3, 3)


def test_noisy_dlt_matches_opencv():
    s = two_view_scene(40, 100, noise_px=1.0, planar=True, seed=4)
    r = homography_dlt(s.x1, s.x2)
    assert r.success.all()
    Hcv = torch.stack([torch.from_numpy(cv2.findHomography(s.x1[i].numpy(), s.x2[i].numpy(), 0)[0])
                       for i in range(40)])
    ours = transfer_error(r.H, s.x1_clean, s.x2_clean).median(-1).values
    theirs = transfer_error(Hcv, s.x1_clean, s.x2_clean).median(-1).values
    assert ours.median() <= 1.05 * theirs.median()
    assert h_err(r.H, Hcv).median() < 1e-2  # OpenCV adds an LM refinement; close but not identical


def test_transfer_error():
    s = two_view_scene(3, 6, noise_px=1.0, planar=True, seed=5)
    e = transfer_error(s.H, s.x1, s.x2)
    assert e.shape == (3, 6)
    for b in range(3):
        for n in range(6):
            p = s.H[b] @ torch.cat([s.x1[b, n], torch.ones(1, dtype=torch.float64)])
            ref = ((p[:2] / p[2] - s.x2[b, n]) ** 2).sum()
            q = torch.linalg.inv(s.H[b]) @ torch.cat([s.x2[b, n], torch.ones(1, dtype=torch.float64)])
            ref_b = ((q[:2] / q[2] - s.x1[b, n]) ** 2).sum()
            torch.testing.assert_close(e[b, n], ref)
            torch.testing.assert_close(transfer_error(s.H, s.x1, s.x2, symmetric=True)[b, n], ref + ref_b)
    assert transfer_error(s.H, s.x1_clean, s.x2_clean, symmetric=True).max() < 1e-16
    Hs = torch.stack([s.H, -3 * s.H], 1)
    es = transfer_error(Hs, s.x1, s.x2)
    assert es.shape == (3, 2, 6)
    torch.testing.assert_close(es[:, 1], e)


def test_gradcheck():
    s = two_view_scene(2, 6, noise_px=0.5, planar=True, seed=6)
    w = torch.rand(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).add(0.5)
    args = (s.x1.clone().requires_grad_(), s.x2.clone().requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, ww: homography_dlt(a, b, weights=ww).H, args, fast_mode=True)
    s4 = two_view_scene(2, 4, planar=True, seed=7)
    args4 = (s4.x1.clone().requires_grad_(), s4.x2.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: homography_4point(a, b).H, args4, fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b: homography_dlt(a, b).H, args4, fast_mode=True)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(4, 30))
def test_property_random_scenes(seed, n):
    s = two_view_scene(4, n, planar=True, seed=seed)
    r = homography_dlt(s.x1, s.x2)
    assert r.success.all()
    assert transfer_error(r.H, s.x1, s.x2, symmetric=True).max() < 1e-12
    if n == 4:
        r4 = homography_4point(s.x1, s.x2)
        assert r4.success.all() and h_err(r4.H, r.H).max() < 1e-6
    # equivariance: solving the swapped problem gives the inverse
    ri = homography_dlt(s.x2, s.x1)
    assert h_err(ri.H, torch.linalg.inv(r.H)).max() < 1e-6


def test_degenerate_inputs_fail_locally(dtype):
    s = two_view_scene(5, 4, planar=True, seed=8, dtype=dtype)
    x1, x2 = s.x1.clone(), s.x2.clone()
    # problem 1: three collinear points in image 1 (and hence in image 2 under the true H)
    x1[1, 2] = 0.3 * x1[1, 0] + 0.7 * x1[1, 1]
    p = s.H[1] @ torch.cat([x1[1, 2], torch.ones(1, dtype=dtype)])
    x2[1, 2] = p[:2] / p[2]
    x1[2, 1] = float("nan")  # NaN row
    x1[3, 3], x2[3, 3] = x1[3, 0], x2[3, 0]  # repeated point: only 3 distinct
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[4, 0] = False  # too few points
    ref4 = homography_4point(s.x1, s.x2)
    refd = homography_dlt(s.x1, s.x2)
    for solver, ref in [(homography_4point, ref4), (homography_dlt, refd)]:
        r = solver(x1, x2, mask=mask)
        assert r.success.tolist() == [True, False, False, False, False], solver.__name__
        assert torch.isfinite(r.H).all()
        torch.testing.assert_close(r.H[0], ref.H[0])
        torch.testing.assert_close(r.H[1:], torch.eye(3, dtype=dtype).expand(4, 3, 3))
    # all points collinear for the DLT with many points
    t = torch.linspace(0, 1, 10, dtype=dtype)
    line = torch.stack([100 + 300 * t, 50 + 200 * t], -1)[None]
    assert not homography_dlt(line, 2 * line + 3).success.any()


def test_caller_errors():
    x = torch.rand(2, 6, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        homography_4point(x, x)  # not 4 points
    with pytest.raises(ValueError):
        homography_dlt(x, x[:, :5])
    with pytest.raises(ValueError):
        homography_dlt(x.int(), x.int())
    with pytest.raises(ValueError):
        homography_dlt(x, x.to("meta"))
    with pytest.raises(ValueError):
        homography_dlt(x, x, weights=torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError):
        transfer_error(torch.eye(3), x, x)  # dtype mismatch
    with pytest.raises(ValueError):
        transfer_error(torch.eye(3, dtype=torch.float64), x, x[..., :1])


def _read_graf_h(path) -> np.ndarray:
    """H1to3p.xml: OpenCV 5 FileStorage fails on it (see SOURCE.txt), so parse the <data> text by hand."""
    text = path.read_text()
    data = re.search(r"<data>(.*?)</data>", text, re.S).group(1)
    return np.array([float(v) for v in data.split()], dtype=np.float64).reshape(3, 3)


def test_real_graf_homography():
    root = data_path("opencv_graf_homography")
    H_gt = torch.from_numpy(_read_graf_h(root / "H1to3p.xml"))
    im1 = cv2.imread(str(root / "graf1.png"), cv2.IMREAD_GRAYSCALE)
    im3 = cv2.imread(str(root / "graf3.png"), cv2.IMREAD_GRAYSCALE)
    sift = cv2.SIFT_create(nfeatures=4000)
    k1, d1 = sift.detectAndCompute(im1, None)
    k3, d3 = sift.detectAndCompute(im3, None)
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d3, k=2)
    good = [m for m, n in matches if m.distance < 0.8 * n.distance]
    p1 = np.float64([k1[m.queryIdx].pt for m in good])
    p3 = np.float64([k3[m.trainIdx].pt for m in good])
    _, inl = cv2.findHomography(p1, p3, cv2.RANSAC, 2.0)  # test-only inlier selection
    inl = inl.ravel().astype(bool)
    assert inl.sum() >= 50
    x1, x3 = torch.from_numpy(p1[inl]), torch.from_numpy(p3[inl])
    r = homography_dlt(x1[None], x3[None])
    assert r.success.all()
    H_cv = torch.from_numpy(cv2.findHomography(p1[inl], p3[inl], 0)[0])
    h, w = im1.shape
    gx, gy = torch.meshgrid(torch.linspace(0, w - 1, 9, dtype=torch.float64),
                            torch.linspace(0, h - 1, 9, dtype=torch.float64), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], -1)
    proj = torch.cat([grid, torch.ones(len(grid), 1, dtype=torch.float64)], -1) @ H_gt.T
    target = proj[:, :2] / proj[:, 2:]

    def err(H):
        return transfer_error(H, grid, target).sqrt().mean()

    e_ours, e_cv = err(r.H[0]), err(H_cv)
    assert e_ours < 2.0
    assert e_ours <= 1.05 * e_cv
    # float32 gives the same answer to a fraction of a pixel
    r32 = homography_dlt(x1[None].float(), x3[None].float())
    assert r32.success.all() and err(r32.H[0].double()) < e_ours + 0.05


def _reference_dlt(x1, x2):
    """Slow, obvious reference: explicit 2N x 9 DLT design, SVD, denormalisation (float64)."""
    from torch3dv.linalg.normalization import normalize_points

    n1, n2 = normalize_points(x1), normalize_points(x2)
    h1 = torch.cat([n1.points, torch.ones_like(n1.points[..., :1])], -1)
    z = torch.zeros_like(h1)
    u, v = n2.points[..., :1], n2.points[..., 1:]
    A = torch.stack([torch.cat([z, -h1, v * h1], -1), torch.cat([h1, z, -u * h1], -1)], -2).flatten(-3, -2)
    Vh = np.linalg.svd(A.numpy(), full_matrices=A.shape[-2] < 9)[2]  # numpy: torch's batched CPU SVD is slow
    Hn = torch.from_numpy(Vh[..., -1, :]).reshape(-1, 3, 3)
    return torch.linalg.inv(n2.T) @ Hn @ n1.T


@pytest.mark.parametrize("n", [4, 32])
def test_dlt_matches_slow_reference(n):
    # the fast paths (Householder null vector for N = 4, block inverse iteration for N > 4) against an SVD
    s = two_view_scene(500, n, noise_px=0.5, planar=True, seed=31)
    r = homography_dlt(s.x1, s.x2)
    assert r.success.all()
    assert h_err(r.H, _reference_dlt(s.x1, s.x2)).max() < 1e-9


def test_grad_mode_gives_same_values():
    for n in [4, 12]:
        s = two_view_scene(50, n, noise_px=0.5, planar=True, seed=32)
        a = homography_dlt(s.x1, s.x2).H
        b = homography_dlt(s.x1.clone().requires_grad_(), s.x2).H.detach()
        assert h_err(a, b).max() < 1e-10


def test_chunking_is_invisible(dtype, monkeypatch):
    import torch3dv.solvers.homography as hm

    s4 = two_view_scene(700, 4, noise_px=0.5, planar=True, seed=33, dtype=dtype)
    s32 = two_view_scene(700, 32, noise_px=0.5, planar=True, seed=33, dtype=dtype)
    calls = [lambda: homography_dlt(s4.x1, s4.x2), lambda: homography_4point(s4.x1, s4.x2),
             lambda: homography_dlt(s32.x1, s32.x2)]
    ref = [f() for f in calls]
    monkeypatch.setattr(hm, "_chunk_size", lambda n: 256)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    for r, f in zip(ref, calls):
        g = f()
        assert torch.equal(r.success, g.success)
        torch.testing.assert_close(g.H, r.H, rtol=tol, atol=tol)
