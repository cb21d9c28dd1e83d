import pytest
import torch
from hypothesis import given, settings, strategies as st

from torch3dv.linalg.skew import skew
from torch3dv.solvers.focal import focal_from_fundamental, shared_focal_from_fundamental
from torch3dv.solvers.fundamental import fundamental_8point
from torch3dv.testing import two_view_scene


def square(K: torch.Tensor) -> torch.Tensor:
    """Bougnoux/Sturm assume square pixels; the scene's intrinsics have fy = fx * (1 +- 1%), so set fy = fx."""
    K = K.clone()
    K[..., 1, 1] = K[..., 0, 0]
    return K


def fundamental(K1, K2, R, t):
    return torch.linalg.inv(K2).transpose(-1, -2) @ skew(t) @ R @ torch.linalg.inv(K1)


def test_two_focals_exact(dtype):
    s = two_view_scene(200, 8, seed=1)  # float64 ground truth, cast below
    K1, K2 = square(s.K1), square(s.K2)
    F = fundamental(K1, K2, s.R, s.t)
    F = F / F.flatten(-2).norm(dim=-1)[..., None, None]
    r = focal_from_fundamental(F.to(dtype), K1[:, :2, 2].to(dtype), K2[:, :2, 2].to(dtype))
    assert r.f1.shape == (200,) and r.f1.dtype == dtype
    e1 = (r.f1.double() / K1[:, 0, 0] - 1).abs()
    e2 = (r.f2.double() / K2[:, 0, 0] - 1).abs()
    if dtype == torch.float64:
        assert r.success.all()
        # the scene aims camera 2 at the points' centroid, close to camera 1's axis (Bougnoux's blind spot),
        # so a few problems lose digits; the bulk is at rounding level
        assert torch.quantile(e1, 0.98) < 1e-6 and torch.quantile(e2, 0.98) < 1e-6
        assert e1.median() < 1e-12 and e2.median() < 1e-12
    else:
        assert r.success.float().mean() > 0.9
        assert e1[r.success].median() < 1e-3 and e2[r.success].median() < 1e-3


def test_shared_focal_exact(dtype):
    s = two_view_scene(200, 8, seed=2)
    K = square(s.K1)
    F = fundamental(K, K, s.R, s.t)
    r = shared_focal_from_fundamental(F.to(dtype), K[:, :2, 2].to(dtype))
    e = (r.f.double() / K[:, 0, 0] - 1).abs()
    if dtype == torch.float64:
        assert r.success.all()
        assert torch.quantile(e, 0.98) < 1e-6 and e.median() < 1e-9
        # Bougnoux on the same data agrees
        rb = focal_from_fundamental(F, K[:, :2, 2], K[:, :2, 2])
        assert (rb.f1 / r.f - 1).abs().median() < 1e-8
    else:
        assert r.success.float().mean() > 0.9 and e[r.success].median() < 1e-3
    # a different principal point in view 2 (e.g. a crop), same focal
    K2 = K.clone()
    K2[:, 0, 2] += 25.0
    F2 = fundamental(K, K2, s.R, s.t)
    r2 = shared_focal_from_fundamental(F2, K[:, :2, 2], K2[:, :2, 2])
    assert r2.success.all() and torch.quantile((r2.f / K[:, 0, 0] - 1).abs(), 0.98) < 1e-6


def test_focal_from_estimated_f():
    s = two_view_scene(50, 100, noise_px=0.5, seed=3)
    K1, K2 = square(s.K1), square(s.K2)
    X = s.X
    from torch3dv.camera.pinhole import project_pinhole
    from torch3dv.geometry.transforms import transform_points
    x1 = project_pinhole(X, K1) + 0.2 * torch.randn(50, 100, 2, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(0))
    x2 = project_pinhole(transform_points(s.R, s.t, X), K2)
    F = fundamental_8point(x1, x2).F
    r = focal_from_fundamental(F, K1[:, :2, 2], K2[:, :2, 2])
    # noisy F: Bougnoux is sensitive, but most problems land within 20%
    e = (r.f1 / K1[:, 0, 0] - 1).abs()
    assert (r.success & (e < 0.2)).float().mean() > 0.6


def test_batched_and_failures():
    s = two_view_scene(6, 8, seed=4)
    K1, K2 = square(s.K1), square(s.K2)
    F = fundamental(K1, K2, s.R, s.t)
    pp1, pp2 = K1[:, :2, 2], K2[:, :2, 2]
    flat = focal_from_fundamental(F, pp1, pp2)
    r = focal_from_fundamental(F.reshape(2, 3, 3, 3), pp1.reshape(2, 3, 2), pp2.reshape(2, 3, 2))
    assert r.f1.shape == (2, 3)
    torch.testing.assert_close(r.f1.reshape(6), flat.f1)
    Fb = F.clone()
    Fb[1, 0, 0] = float("nan")
    # blind spots: a NaN entry (problem 1) and parallel optical axes (problem 2, f^2 = 0 / 0)
    R = torch.eye(3, dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    Fb[2] = fundamental(K1[2], K2[2], R, t)  # parallel axes (meet at infinity): a classic failure
    # a negative squared focal: a random rank-2 matrix that is no fundamental matrix of square-pixel cameras
    G = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
    rb = focal_from_fundamental(Fb, pp1, pp2)
    rs = shared_focal_from_fundamental(Fb, pp1)
    assert not rb.success[1] and not rb.success[2] and not rs.success[1] and not rs.success[2]
    assert torch.isfinite(rb.f1).all() and torch.isfinite(rb.f2).all() and torch.isfinite(rs.f).all()
    keep = [0, 3, 4, 5]
    assert rb.success[keep].all()
    torch.testing.assert_close(rb.f1[keep], flat.f1[keep])
    g = focal_from_fundamental(G, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert g.f1.shape == () and (g.success.item() is False or (g.f1 > 0 and g.f2 > 0))


def test_gradcheck():
    s = two_view_scene(2, 8, seed=5)
    K1, K2 = square(s.K1), square(s.K2)
    # F in pixel units has entries ~1e-7: check gradients w.r.t. a well-scaled M with F = D M D
    D = torch.diag(torch.tensor([1e-3, 1e-3, 1.0], dtype=torch.float64))
    M = (torch.linalg.inv(D) @ fundamental(K1, K2, s.R, s.t) @ torch.linalg.inv(D)).requires_grad_()
    pp1 = K1[:, :2, 2].clone().requires_grad_()
    pp2 = K2[:, :2, 2].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: focal_from_fundamental(D @ a @ D, b, c)[:2], (M, pp1, pp2))
    Ms = (torch.linalg.inv(D) @ fundamental(K1, K1, s.R, s.t) @ torch.linalg.inv(D)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: shared_focal_from_fundamental(D @ a @ D, b).f, (Ms, pp1))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100.0))
def test_property_scale_invariance(seed, scale):
    s = two_view_scene(3, 8, seed=seed)
    K1, K2 = square(s.K1), square(s.K2)
    F = fundamental(K1, K2, s.R, s.t)
    r = focal_from_fundamental(F, K1[:, :2, 2], K2[:, :2, 2])
    rs = focal_from_fundamental(-scale * F, K1[:, :2, 2], K2[:, :2, 2])
    torch.testing.assert_close(rs.f1, r.f1, rtol=1e-9, atol=0)
    # swapping the views swaps the focals
    rt = focal_from_fundamental(F.transpose(-1, -2), K2[:, :2, 2], K1[:, :2, 2])
    torch.testing.assert_close(rt.f1, r.f2, rtol=1e-9, atol=0)
    ok = r.success
    assert ((r.f1 / K1[:, 0, 0] - 1).abs()[ok] < 1e-4).all()


def test_caller_errors():
    F = torch.eye(3, dtype=torch.float64)
    pp = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError):
        focal_from_fundamental(F[:2], pp, pp)
    with pytest.raises(ValueError):
        focal_from_fundamental(F, pp[:1], pp)
    with pytest.raises(ValueError):
        focal_from_fundamental(F, pp.float(), pp)
    with pytest.raises(ValueError):
        focal_from_fundamental(F, torch.zeros(4, 2, dtype=torch.float64), pp)
    with pytest.raises(ValueError):
        shared_focal_from_fundamental(F.int(), pp)
    with pytest.raises(ValueError):
        shared_focal_from_fundamental(F, pp.to("meta"))
