"""Tests of the batched Levenberg-Marquardt solver and the robust losses."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch3dv.geometry.metrics import rotation_error
from torch3dv.geometry.rotations import random_rotation
from torch3dv.optim.levenberg_marquardt import LMOptions, levenberg_marquardt
from torch3dv.optim.losses import cauchy_loss, get_loss, huber_loss, soft_l1_loss
from torch3dv.optim.manifolds import retract_pose_left, so3_exp


def _exp_problem(B, dtype, g, noise=0.0):
    """y = a exp(b x) + c, with per-problem ground truth of varying difficulty."""
    x = torch.linspace(0, 2, 30, dtype=dtype)
    a = torch.empty(B, dtype=torch.float64).uniform_(0.5, 2.0, generator=g).to(dtype)
    # |b| >= 0.5 keeps a and c identifiable (b = 0 makes a exp(b x) + c degenerate)
    b = torch.empty(B, dtype=torch.float64).uniform_(0.5, 1.5, generator=g)
    b = (b * torch.where(torch.rand(B, generator=g) < 0.5, -1.0, 1.0).double()).to(dtype)
    c = torch.empty(B, dtype=torch.float64).uniform_(-1.0, 1.0, generator=g).to(dtype)
    y = a[:, None] * torch.exp(b[:, None] * x) + c[:, None]
    y = y + noise * torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    return x, y, torch.stack([a, b, c], -1)


def _exp_residual(x, y):
    def fn(p):
        e = torch.exp(p[..., 1:2] * x)
        r = p[..., 0:1] * e + p[..., 2:3] - y
        J = torch.stack([e, p[..., 0:1] * x * e, torch.ones_like(e)], dim=-1)
        return r, J

    return fn


def test_curve_fit_batched_different_speeds(dtype):
    g = torch.Generator().manual_seed(0)
    B = 16
    x, y, truth = _exp_problem(B, dtype, g)
    # starts at increasing distance from the optimum: problems converge after different iteration counts
    offs = torch.linspace(0.0, 1.0, B, dtype=dtype)[:, None] * torch.tensor([0.5, 0.8, 0.5], dtype=dtype)
    p0 = truth + offs
    res = levenberg_marquardt(_exp_residual(x, y), p0, options=LMOptions(max_iterations=100))
    tol = 1e-8 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(res.params, truth, atol=tol, rtol=0)
    assert res.converged.all()
    assert res.iterations[0] <= 1  # started at the optimum
    assert res.iterations.max() > res.iterations.min() + 2  # per-problem stopping
    assert res.params.shape == (B, 3) and res.cost.shape == (B,)


def test_frozen_problems_do_not_change_and_match_single_solves():
    g = torch.Generator().manual_seed(1)
    x, y, truth = _exp_problem(6, torch.float64, g, noise=0.01)
    p0 = truth + 0.3
    opts = LMOptions(max_iterations=50)
    batched = levenberg_marquardt(_exp_residual(x, y), p0, options=opts)
    for i in range(6):
        single = levenberg_marquardt(_exp_residual(x, y[i:i + 1]), p0[i:i + 1], options=opts)
        torch.testing.assert_close(single.params[0], batched.params[i], atol=1e-10, rtol=0)
        assert int(single.iterations[0]) == int(batched.iterations[i])


def test_leading_batch_dims_weights_and_mask():
    g = torch.Generator().manual_seed(2)
    x, y, truth = _exp_problem(6, torch.float64, g, noise=0.02)
    y = y.reshape(2, 3, -1)
    p0 = (truth + 0.2).reshape(2, 3, 3)
    fn = _exp_residual(x, y)
    w = torch.rand(2, 3, 30, generator=g, dtype=torch.float64)
    w[..., ::3] = 0.0
    ref = levenberg_marquardt(fn, p0, weights=w, options=LMOptions(max_iterations=60))
    assert ref.params.shape == (2, 3, 3) and ref.converged.shape == (2, 3)
    # masking the zero-weight rows (and poisoning them with NaN) gives the same optimum
    y_nan = y.clone()
    y_nan[..., ::3] = float("nan")
    mask = w != 0
    out = levenberg_marquardt(_exp_residual(x, y_nan), p0, weights=w, mask=mask, options=LMOptions(max_iterations=60))
    torch.testing.assert_close(out.params, ref.params, atol=1e-10, rtol=0)
    # removing the rows is the same as zero weight
    keep = torch.ones(30, dtype=torch.bool)
    keep[::3] = False
    out2 = levenberg_marquardt(_exp_residual(x[keep], y[..., keep]), p0, weights=w[..., keep],
                               options=LMOptions(max_iterations=60))
    torch.testing.assert_close(out2.params, ref.params, atol=1e-10, rtol=0)


def test_nonfinite_problem_is_isolated():
    g = torch.Generator().manual_seed(3)
    x, y, truth = _exp_problem(4, torch.float64, g)
    y = y.clone()
    y[2, 5] = float("nan")
    res = levenberg_marquardt(_exp_residual(x, y), truth + 0.1, options=LMOptions(max_iterations=50))
    assert not res.converged[2] and math.isinf(float(res.cost[2]))
    torch.testing.assert_close(res.params[2], truth[2] + 0.1)  # untouched
    keep = torch.tensor([0, 1, 3])
    torch.testing.assert_close(res.params[keep], truth[keep], atol=1e-8, rtol=0)
    assert res.converged[keep].all()


def test_rotation_translation_fit_on_manifold(dtype):
    """Rigid alignment Y = R X + t solved with the pose retraction (6-dof manifold step)."""
    g = torch.Generator().manual_seed(4)
    B, N = 8, 12
    R_gt = random_rotation(B, generator=g).to(dtype)
    t_gt = torch.randn(B, 3, generator=g, dtype=torch.float64).to(dtype)
    X = torch.randn(B, N, 3, generator=g, dtype=torch.float64).to(dtype)
    Y = X @ R_gt.transpose(-1, -2) + t_gt[:, None]

    def fn(p):
        R, t = p
        Xc = X @ R.transpose(-1, -2) + t[:, None]
        r = (Xc - Y).reshape(B, -1)
        # d(R X + t) for the left step (omega, rho) is -[Xc]x omega + rho
        from torch3dv.linalg.skew import skew

        J = torch.cat([-skew(Xc), torch.eye(3, dtype=dtype).expand(B, N, 3, 3)], dim=-1).reshape(B, -1, 6)
        return r, J

    R0 = so3_exp(0.5 * torch.randn(B, 3, generator=g, dtype=torch.float64).to(dtype)) @ R_gt
    res = levenberg_marquardt(fn, (R0, t_gt + 0.5), retract_pose_left, LMOptions(max_iterations=50))
    R, t = res.params
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert rotation_error(R, R_gt).max() < tol
    torch.testing.assert_close(t, t_gt, atol=tol * 10, rtol=0)
    assert res.converged.all()


def test_robust_loss_downweights_outliers():
    g = torch.Generator().manual_seed(5)
    B = 4
    x, y_clean, truth = _exp_problem(B, torch.float64, g, noise=0.01)
    y = y_clean.clone()
    y[:, ::7] += 3.0  # gross outliers
    fn = _exp_residual(x, y)
    opts = {"max_iterations": 100}
    clean = levenberg_marquardt(_exp_residual(x, y_clean), truth + 0.1, options=LMOptions(**opts))
    err_clean = (clean.params - truth).abs().amax(-1)
    plain = levenberg_marquardt(fn, truth + 0.1, options=LMOptions(**opts))
    err_plain = (plain.params - truth).abs().amax(-1)
    for loss in ("huber", "cauchy", "soft_l1"):
        rob = levenberg_marquardt(fn, truth + 0.1, options=LMOptions(loss=loss, loss_scale=0.05, **opts))
        err = (rob.params - truth).abs().amax(-1)
        assert (err < 0.3 * err_plain).all(), loss
        if loss == "cauchy":  # redescending influence: about as good as without the outliers
            assert (err < 3.0 * err_clean + 1e-3).all(), loss


@pytest.mark.parametrize("fn", [huber_loss, cauchy_loss, soft_l1_loss])
def test_loss_derivatives(fn):
    s = torch.linspace(0.01, 9.0, 50, dtype=torch.float64).requires_grad_()
    rho, drho = fn(s, 1.3)
    (grad,) = torch.autograd.grad(rho.sum(), s)
    torch.testing.assert_close(grad, drho.detach())
    small = torch.tensor([1e-6], dtype=torch.float64)
    torch.testing.assert_close(fn(small, 1.3)[0], small, rtol=1e-5, atol=0)


def test_bad_options_raise():
    with pytest.raises(ValueError):
        get_loss("tukey")
    with pytest.raises(ValueError):
        get_loss("huber", -1.0)
    x = torch.linspace(0, 1, 5, dtype=torch.float64)
    y = torch.zeros(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError):
        levenberg_marquardt(_exp_residual(x, y), torch.zeros(2, 3, dtype=torch.float64),
                            options=LMOptions(grad_mode="magic"))
    with pytest.raises(ValueError):
        levenberg_marquardt(lambda p: (torch.zeros(2, 5), torch.zeros(2, 4, 3)), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        levenberg_marquardt(_exp_residual(x, y), torch.zeros(2, 3, dtype=torch.float64),
                            mask=torch.ones(2, 5))  # not bool


def test_implicit_gradient_linear_least_squares_gradcheck():
    """Residuals linear in the parameters (noisy polynomial fit): the implicit gradient is exact."""
    g = torch.Generator().manual_seed(6)
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)
    A = torch.stack([torch.ones_like(x), x, x * x], dim=-1)
    y = torch.randn(2, 6, generator=g, dtype=torch.float64).requires_grad_()
    w = (torch.rand(2, 6, generator=g, dtype=torch.float64) + 0.5).requires_grad_()

    def solve(y, w):
        fn = lambda p: ((A @ p[..., None])[..., 0] - y, A.expand(2, 6, 3))
        return levenberg_marquardt(fn, torch.zeros(2, 3, dtype=torch.float64), weights=w,
                                   options=LMOptions(max_iterations=30)).params

    assert torch.autograd.gradcheck(solve, (y, w))
    # and it equals the closed-form weighted least-squares solution
    p = solve(y, w)
    W = w.detach()
    ref = torch.linalg.solve(A.T @ (W[..., None] * A), (A.T @ (W * y.detach())[..., None]))[..., 0]
    torch.testing.assert_close(p.detach(), ref, atol=1e-10, rtol=0)


def test_implicit_gradient_nonlinear_zero_residual_gradcheck():
    """A nonlinear fit whose residuals vanish at the optimum: the implicit gradient is exact."""
    x = torch.linspace(0, 1.5, 8, dtype=torch.float64)
    truth = torch.tensor([[1.3, -0.7, 0.2], [0.8, 0.9, -0.4]], dtype=torch.float64)
    y = (truth[:, 0:1] * torch.exp(truth[:, 1:2] * x) + truth[:, 2:3]).requires_grad_()

    def solve(y):
        return levenberg_marquardt(_exp_residual(x, y), truth.detach() + 0.2,
                                   options=LMOptions(max_iterations=60)).params

    assert torch.autograd.gradcheck(solve, (y,))


def test_unrolled_and_none_grad_modes():
    x = torch.linspace(0, 1.5, 8, dtype=torch.float64)
    truth = torch.tensor([[1.3, -0.7, 0.2]], dtype=torch.float64)
    y = (truth[:, 0:1] * torch.exp(truth[:, 1:2] * x) + truth[:, 2:3]).requires_grad_()
    outs = {}
    for mode in ("implicit", "unrolled", "none"):
        res = levenberg_marquardt(_exp_residual(x, y), truth + 0.1, options=LMOptions(max_iterations=40,
                                                                                     grad_mode=mode))
        outs[mode] = res.params
    assert not outs["none"].requires_grad
    g_imp = torch.autograd.grad(outs["implicit"].sum(), y)[0]
    g_unr = torch.autograd.grad(outs["unrolled"].sum(), y)[0]
    torch.testing.assert_close(g_imp, g_unr, atol=1e-6, rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_property_converges_to_truth_from_random_start(seed):
    g = torch.Generator().manual_seed(seed)
    x, y, truth = _exp_problem(3, torch.float64, g)
    p0 = truth + 0.3 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    res = levenberg_marquardt(_exp_residual(x, y), p0, options=LMOptions(max_iterations=200))
    ok = res.converged & (res.cost < 1e-12)
    # LM is a local method: every problem that reaches zero cost must be at the truth (identifiable model)
    torch.testing.assert_close(res.params[ok], truth[ok], atol=1e-6, rtol=0)
    assert ok.any()
