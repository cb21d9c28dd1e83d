"""Batch-last small-matrix kernels against LAPACK references."""

import math

import torch

from torch3dv.linalg import batch_last as bl
from torch3dv.linalg.cubic import real_cubic_roots
from torch3dv.solvers.fundamental import _null_eigvecs, _rank_test


def _bl(M: torch.Tensor) -> torch.Tensor:
    """(b, r, c) -> (r, c, b)."""
    return M.permute(1, 2, 0).contiguous()


def _spectrum_matrices(evals: torch.Tensor, seed: int) -> torch.Tensor:
    """Symmetric (b, 9, 9) with the given eigenvalues (b, 9) and random eigenvectors."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(evals.shape[0], 9, 9, generator=g, dtype=evals.dtype))[0]
    return Q @ torch.diag_embed(evals) @ Q.transpose(-1, -2)


def test_householder_nullspace(dtype):
    g = torch.Generator().manual_seed(0)
    for m in [7, 8]:
        A = torch.randn(200, m, 9, generator=g, dtype=torch.float64).to(dtype)
        N, r = bl.householder_nullspace(_bl(A))
        N = N.permute(2, 0, 1)
        tol = 1e-13 if dtype == torch.float64 else 1e-5
        assert N.shape == (200, 9, 9 - m)
        assert (A @ N).abs().max() < tol
        torch.testing.assert_close(N.transpose(-1, -2) @ N, torch.eye(9 - m, dtype=dtype).expand(200, -1, -1),
                                   atol=tol, rtol=0)
        # |R_kk| of the QR of A^T: distance of each row from the span of the previous ones
        R = torch.linalg.qr(A.double().transpose(-1, -2))[1]
        torch.testing.assert_close(r.t().double(), R.diagonal(dim1=-2, dim2=-1).abs(), rtol=1e-4, atol=tol)
    # a rank-deficient matrix reveals itself in r and stays finite
    A = torch.randn(10, 8, 9, generator=g, dtype=torch.float64).to(dtype)
    A[:, 5] = 0.5 * A[:, 1] - 2.0 * A[:, 3]
    N, r = bl.householder_nullspace(_bl(A))
    assert torch.isfinite(N).all() and (r.amin(0) < 1e-5 * r.amax(0)).all()


def test_smallest_eigenpairs_and_fallback():
    g = torch.Generator().manual_seed(1)
    b = 400
    ev = torch.rand(b, 9, generator=g, dtype=torch.float64).mul(10).add(1).sort(-1).values
    ev[:100, 0] = 0.0  # exactly singular (noise-free data)
    ev[100:200, 0] = 1e-6  # well separated
    ev[200:300, :4] = torch.tensor([1.0, 1.2, 1.3, 1.4], dtype=torch.float64)  # slow convergence: eigh fallback
    ev[300:, :2] = 0.0  # 2-dimensional null space (degenerate problem)
    M = _spectrum_matrices(ev, 2)
    ref_l, ref_V = torch.linalg.eigh(M)
    for dt in [torch.float64, torch.float32]:
        Mb = _bl(M.to(dt))
        v0, v1, _ = _null_eigvecs(Mb)
        lmax = bl.largest_eigenvalue(Mb)
        v0, v1 = v0.t().double(), v1.t().double()
        err0 = torch.minimum((v0 - ref_V[..., 0]).norm(dim=-1), (v0 + ref_V[..., 0]).norm(dim=-1))
        tol = 1e-10 if dt == torch.float64 else 1e-4
        assert err0[:300].max() < tol, dt
        # v1 serves the degeneracy test only: orthogonal to v0, Rayleigh quotient >= l_1, ~0 for a 2-d null space
        rq1 = (v1 * (M @ v1[..., None])[..., 0]).sum(-1)
        tr = ev.sum(-1)
        assert (v0 * v1).sum(-1).abs().max() < tol
        assert (rq1 >= ev[:, 1] - tol * tr).all()
        assert (rq1[300:] < tol * 1e-2 * tr[300:]).all()
        # a lower estimate of the largest eigenvalue, close enough to scale the degeneracy test
        assert (lmax.double() <= ref_l[:, -1] * (1 + 1e-5)).all() and (lmax.double() >= 0.5 * ref_l[:, -1]).all()
        # the test estimates l_max only where the trace bounds leave the decision open: same decisions
        num = torch.logspace(-12, 2, b, dtype=dt)[torch.randperm(b, generator=g)] * tr.to(dt)
        for tol in [1e-8, 1e-2]:
            assert torch.equal(_rank_test(num, Mb, None, tol), num / lmax > tol)
        # the fast path converges for the separated spectra (no fallback needed)
        _, _, _, res = bl.smallest_eigenpairs(Mb, 6 if dt == torch.float64 else 3)
        assert (res[:200] <= 4 * torch.finfo(dt).eps * tr[:200].to(dt)).float().mean() > 0.99


def test_spd_inverse_and_matmul():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(50, 20, 9, generator=g, dtype=torch.float64)
    M = A.transpose(-1, -2) @ A
    torch.testing.assert_close(bl.spd_inverse(_bl(M)), _bl(torch.linalg.inv(M)))
    X = torch.randn(50, 9, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bl.matmul(_bl(M), _bl(X)), _bl(M @ X))
    x = torch.randn(9, 50, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bl.matmul(_bl(M), x), (M @ x.t()[..., None])[..., 0].t())


def test_rank2_and_smallest_singular_value(dtype):
    g = torch.Generator().manual_seed(4)
    F = torch.randn(500, 3, 3, generator=g, dtype=torch.float64)
    F[:100] = F[:100] @ torch.diag(torch.tensor([1.0, 0.5, 1e-6], dtype=torch.float64))  # nearly rank 2
    U, S, Vh = torch.linalg.svd(F)
    ref = U @ torch.diag_embed(S * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)) @ Vh
    Fb = _bl(F.to(dtype))
    lam = bl.smallest_sq_singular_value(Fb)
    got = bl.rank2(Fb).permute(2, 0, 1).double()
    if dtype == torch.float64:
        torch.testing.assert_close(lam, S[:, 2] ** 2, rtol=1e-8, atol=1e-14)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    else:
        gap = (S[:, 1] - S[:, 2]) / S[:, 0]
        err = (got - ref).flatten(-2).norm(dim=-1) / S[:, 0]
        assert (err[gap > 0.01] < 1e-4).all()
    # derivative of the rank-2 projection (float64)
    F0 = F[100:103].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: bl.rank2(x.permute(1, 2, 0)), (F0,), fast_mode=True)


def test_real_cubic_roots():
    g = torch.Generator().manual_seed(5)
    roots = torch.randn(400, 3, generator=g, dtype=torch.float64).mul(3).sort(-1).values
    a = torch.rand(400, generator=g, dtype=torch.float64) + 0.5
    b = -a * roots.sum(-1)
    c = a * (roots[:, 0] * roots[:, 1] + roots[:, 1] * roots[:, 2] + roots[:, 0] * roots[:, 2])
    d = -a * roots.prod(-1)
    z, valid = real_cubic_roots(a, b, c, d)
    assert valid.all()
    torch.testing.assert_close(z.sort(-1).values, roots, rtol=1e-6, atol=1e-8)
    # one real root: (z - 2)(z^2 + 1); a vanishing leading coefficient falls back to the quadratic
    z, valid = real_cubic_roots(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 1.0]), torch.tensor([1.0, -3.0]),
                                torch.tensor([-2.0, 2.0]))
    assert valid.tolist() == [[True, False, False], [True, True, False]]
    torch.testing.assert_close(z[0, 0], torch.tensor(2.0))
    torch.testing.assert_close(z[1, :2].sort().values, torch.tensor([1.0, 2.0]))
    assert math.isfinite(z.abs().max().item())
