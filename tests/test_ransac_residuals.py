"""The blocked scoring kernels of torch3dv.ransac.residuals against direct formulas."""

import pytest
import torch

from torch3dv.ransac import residuals as res


def _h(x):
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def _sampson_ref(F, x1, x2):
    a, b = _h(x1)[:, None], _h(x2)[:, None]  # (M, 1, N, 3)
    l = torch.einsum("mhij,mhnj->mhni", F, a.expand(-1, F.shape[1], -1, -1))
    m = torch.einsum("mhji,mhnj->mhni", F, b.expand(-1, F.shape[1], -1, -1))
    num = (b * l).sum(-1)
    den = l[..., 0] ** 2 + l[..., 1] ** 2 + m[..., 0] ** 2 + m[..., 1] ** 2
    return num ** 2 / den, den


@pytest.fixture(params=[1 << 17, 64])
def block(request, monkeypatch):
    monkeypatch.setattr(res, "_BLOCK", request.param)  # 64: many blocks, exercises the block seams
    return request.param


def _data(M=5, H=7, N=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, H, 3, 3, generator=g, dtype=torch.float64),
            torch.rand(M, N, 2, generator=g, dtype=torch.float64) * 600,
            torch.rand(M, N, 2, generator=g, dtype=torch.float64) * 600, g)


def test_sampson_matches_formula(block):
    F, x1, x2, _ = _data()
    r2, den = res.sampson_sq(F, x1, x2, with_denominator=True)
    r2_ref, den_ref = _sampson_ref(F, x1, x2)
    torch.testing.assert_close(r2, r2_ref, rtol=1e-9, atol=0)
    torch.testing.assert_close(den, den_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.sampson_sq(F, x1, x2), r2_ref, rtol=1e-9, atol=0)


def test_transfer_matches_formula(block):
    Hm, x1, x2, _ = _data(seed=1)
    Hm = Hm + 3 * torch.eye(3, dtype=Hm.dtype)
    Hm[..., 2, :2] *= 1e-3
    p = torch.einsum("mhij,mnj->mhni", Hm, _h(x1))
    ref = ((p[..., :2] / p[..., 2:] - x2[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(res.transfer_sq(Hm, x1, x2), ref, rtol=1e-10, atol=1e-12)


def test_reprojection_matches_formula_and_flags_points_behind(block):
    M, H, N = 4, 6, 9
    g = torch.Generator().manual_seed(2)
    P = torch.randn(M, H, 3, 4, generator=g, dtype=torch.float64)
    X = torch.randn(M, N, 3, generator=g, dtype=torch.float64)
    x = torch.rand(M, N, 2, generator=g, dtype=torch.float64) * 500
    K = torch.tensor([[500.0, 0.5, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    K = K.expand(M, 3, 3).clone()
    K[1, 0, 0] = 700.0
    Xc = torch.einsum("mhij,mnj->mhni", P, _h(X))
    proj = torch.einsum("mij,mhnj->mhni", K, Xc / Xc[..., 2:])[..., :2]
    ref = ((proj - x[:, None]) ** 2).sum(-1)
    behind = Xc[..., 2] <= 0
    assert behind.any() and (~behind).any()
    ref = torch.where(behind, torch.full_like(ref, float("inf")), ref)
    torch.testing.assert_close(res.reprojection_sq(P, X, x, K), ref, rtol=1e-10, atol=1e-12)


def test_euclidean_matches_formula(block):
    g = torch.Generator().manual_seed(3)
    P = torch.randn(3, 5, 3, 4, generator=g, dtype=torch.float64)
    X, Y = torch.randn(2, 3, 8, 3, generator=g, dtype=torch.float64)
    Yp = torch.einsum("mhij,mnj->mhni", P, _h(X))
    ref = ((Yp - Y[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(res.euclidean_sq(P, X, Y), ref, rtol=1e-12, atol=1e-12)


def test_gradients_flow_out_of_place():
    F, x1, x2, _ = _data(M=2, H=3, N=4)
    x1 = (x1 / 600).requires_grad_()
    x2 = (x2 / 600).requires_grad_()
    assert torch.autograd.gradcheck(lambda F, a, b: res.sampson_sq(F, a, b), (F.requires_grad_(), x1, x2))
    Hm = (torch.eye(3, dtype=torch.float64) + 0.1 * F.detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda H, a, b: res.transfer_sq(H, a, b), (Hm, x1, x2))


def test_float32_close_to_float64():
    F, x1, x2, _ = _data(M=3, H=4, N=50, seed=4)
    F = F / F.flatten(-2).norm(dim=-1)[..., None, None]
    r64 = res.sampson_sq(F, x1, x2)
    r32 = res.sampson_sq(F.float(), x1.float(), x2.float())
    rel = ((r32.double() - r64).abs() / r64.clamp_min(1e-3)).median()
    assert rel < 1e-3
