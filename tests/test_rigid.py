import numpy as np
import pytest
import roma
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch3dv.geometry import (
    compose_rigid,
    compose_sim,
    random_rotation,
    rotation_error,
    transform_points,
    transform_points_sim,
)
from torch3dv.linalg.sym_eig4 import extreme_eigenpair4, sym_adjugate4
from torch3dv.solvers.rigid import RigidResult, kabsch, rigid_residuals, umeyama
from torch3dv.testing import rigid_scene


def _numpy_umeyama(X, Y, w=None, with_scale=True):
    """Slow, obvious reference: weighted Umeyama via numpy SVD with the det sign fix."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    w = np.ones(len(X)) if w is None else np.asarray(w, np.float64)
    w = w / w.sum()
    mx, my = w @ X, w @ Y
    dx, dy = X - mx, Y - my
    Sigma = (w[:, None] * dy).T @ dx
    U, D, Vt = np.linalg.svd(Sigma)
    Dm = np.diag([1.0, 1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt))])
    R = U @ Dm @ Vt
    s = np.trace(np.diag(D) @ Dm) / (w @ (dx * dx).sum(1)) if with_scale else 1.0
    return R, my - s * R @ mx, s


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("method", ["closed_form", "eigh"])
def test_exact_recovery(dtype, with_scale, method):
    sc = rigid_scene(batch=200, num_points=20, with_scale=with_scale, seed=1, dtype=dtype)
    fn = umeyama if with_scale else kabsch
    r = fn(sc.X, sc.Y, method=method)
    assert isinstance(r, RigidResult)
    assert r.R.dtype == dtype and r.s.shape == (200,) and r.success.all()
    tol = 1e-6 if dtype == torch.float64 else 2e-4
    assert rotation_error(r.R, sc.R).max() < tol
    assert ((r.t - sc.t).norm(dim=-1) / sc.t.norm(dim=-1).clamp_min(1)).max() < tol
    assert ((r.s - sc.s).abs() / sc.s).max() < tol
    torch.testing.assert_close(torch.linalg.det(r.R), torch.ones(200, dtype=dtype), atol=tol, rtol=0)
    if not with_scale:
        assert (r.s == 1).all()
        # umeyama without scale is kabsch
        r2 = umeyama(sc.X, sc.Y, with_scale=False, method=method)
        torch.testing.assert_close(r2.R, r.R)


def test_batched_dims_match_flat():
    sc = rigid_scene(batch=6, num_points=15, noise=0.01, with_scale=True, seed=2)
    flat = umeyama(sc.X, sc.Y)
    nested = umeyama(sc.X.reshape(2, 3, 15, 3), sc.Y.reshape(2, 3, 15, 3))
    assert nested.R.shape == (2, 3, 3, 3) and nested.t.shape == (2, 3, 3) and nested.s.shape == (2, 3)
    assert nested.success.shape == (2, 3)
    torch.testing.assert_close(nested.R.reshape(6, 3, 3), flat.R)
    torch.testing.assert_close(nested.s.reshape(6), flat.s)
    # a single unbatched problem keeps its (absence of) batch dims
    single = kabsch(sc.X[0], sc.Y[0])
    assert single.R.shape == (3, 3) and single.success.shape == ()


def test_mask_with_nan_padding_equals_unpadded(dtype):
    sc = rigid_scene(batch=4, num_points=12, noise=0.02, with_scale=True, seed=3, dtype=dtype)
    pad = 5
    Xp = torch.cat([sc.X, torch.full((4, pad, 3), float("nan"), dtype=dtype)], dim=1)
    Yp = torch.cat([sc.Y, torch.full((4, pad, 3), float("nan"), dtype=dtype)], dim=1)
    mask = torch.zeros(4, 12 + pad, dtype=torch.bool)
    mask[:, :12] = True
    ref = umeyama(sc.X, sc.Y)
    got = umeyama(Xp, Yp, mask=mask)
    assert got.success.all()
    torch.testing.assert_close(got.R, ref.R)
    torch.testing.assert_close(got.t, ref.t)
    torch.testing.assert_close(got.s, ref.s)


def test_zero_weights_equal_removal():
    sc = rigid_scene(batch=3, num_points=20, noise=0.05, with_scale=True, seed=4)
    w = torch.rand(3, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    w[:, 12:] = 0
    Y = sc.Y.clone()
    Y[:, 12:] += 100.0  # far outliers, removed by their zero weight
    got = umeyama(sc.X, Y, weights=w)
    ref = umeyama(sc.X[:, :12], sc.Y[:, :12], weights=w[:, :12])
    torch.testing.assert_close(got.R, ref.R)
    torch.testing.assert_close(got.t, ref.t)
    torch.testing.assert_close(got.s, ref.s)


def test_weighted_matches_numpy_reference():
    g = torch.Generator().manual_seed(5)
    sc = rigid_scene(batch=8, num_points=30, noise=0.05, with_scale=True, seed=5)
    w = torch.rand(8, 30, dtype=torch.float64, generator=g) + 0.05
    for with_scale in (False, True):
        r = umeyama(sc.X, sc.Y, weights=w, with_scale=with_scale)
        for b in range(8):
            R, t, s = _numpy_umeyama(sc.X[b], sc.Y[b], w[b], with_scale)
            np.testing.assert_allclose(r.R[b].numpy(), R, atol=1e-10)
            np.testing.assert_allclose(r.t[b].numpy(), t, atol=1e-10)
            np.testing.assert_allclose(float(r.s[b]), s, atol=1e-10)


def test_noisy_matches_roma(dtype):
    sc = rigid_scene(batch=64, num_points=40, noise=0.05, with_scale=True, seed=6, dtype=dtype)
    r = umeyama(sc.X, sc.Y)
    R, t, s = roma.rigid_points_registration(sc.X.double(), sc.Y.double(), compute_scaling=True)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert rotation_error(r.R.double(), R).max() < tol
    assert (r.t.double() - t).abs().max() < 10 * tol
    assert (r.s.double() - s).abs().max() < 10 * tol
    rk = kabsch(sc.X, sc.Y)
    Rk, _ = roma.rigid_points_registration(sc.X.double(), sc.Y.double())
    assert rotation_error(rk.R.double(), Rk).max() < tol


def test_reflection_gives_proper_rotation():
    g = torch.Generator().manual_seed(7)
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    # planar set (z = 0) mirrored through a plane: still exactly reachable by a rotation
    Xp = torch.rand(10, 3, dtype=torch.float64, generator=g) * 2 - 1
    Xp[:, 2] = 0
    Q = random_rotation(generator=g)
    Yp = Xp @ (Q @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))).T
    r = kabsch(Xp, Yp)
    assert r.success and abs(float(torch.linalg.det(r.R)) - 1) < 1e-12
    assert rigid_residuals(r.R, r.t, Xp, Yp).max() < 1e-10
    # a non-planar set mirrored: best proper rotation, identical to the sign-corrected SVD solution
    X = torch.rand(10, 3, dtype=torch.float64, generator=g) * 2 - 1
    Y = X @ (Q @ mirror).T
    r = kabsch(X, Y)
    assert r.success and abs(float(torch.linalg.det(r.R)) - 1) < 1e-12
    R_ref, t_ref, _ = _numpy_umeyama(X, Y, with_scale=False)
    np.testing.assert_allclose(r.R.numpy(), R_ref, atol=1e-10)
    np.testing.assert_allclose(r.t.numpy(), t_ref, atol=1e-10)


def test_degenerate_problems_fail_alone(dtype):
    sc = rigid_scene(batch=6, num_points=8, with_scale=True, seed=8, dtype=dtype)
    X, Y = sc.X.clone(), sc.Y.clone()
    line = torch.linspace(-1, 1, 8, dtype=dtype)[:, None] * torch.tensor([1.0, 2.0, -0.5], dtype=dtype)
    X[1] = line  # collinear source
    X[2] = 0.3  # coincident source
    Y[3, 2] = float("nan")  # NaN in an unmasked row
    mask = torch.ones(6, 8, dtype=torch.bool)
    mask[4, 2:] = False  # only 2 points left
    w = torch.ones(6, 8, dtype=dtype)
    w[5] = 0  # no weight at all
    r = umeyama(X, Y, weights=w, mask=mask)
    assert r.success.tolist() == [True, False, False, False, False, False]
    for f in (r.R, r.t, r.s):
        assert torch.isfinite(f).all()
    torch.testing.assert_close(r.R[1:], torch.eye(3, dtype=dtype).expand(5, 3, 3))
    ok = umeyama(sc.X[:1], sc.Y[:1])
    torch.testing.assert_close(r.R[0], ok.R[0])
    torch.testing.assert_close(r.s[0], ok.s[0])
    # collinear *target* makes the rotation undetermined too
    assert not kabsch(sc.X[0], line).success


def test_input_errors():
    X = torch.randn(4, 10, 3)
    with pytest.raises(ValueError):
        kabsch(X, torch.randn(4, 10, 2))
    with pytest.raises(ValueError):
        kabsch(X, torch.randn(4, 9, 3))
    with pytest.raises(ValueError):
        kabsch(X, X.double())
    with pytest.raises(ValueError):
        kabsch(X.int(), X.int())
    with pytest.raises(ValueError):
        kabsch(X, X, mask=torch.ones(4, 10))  # not bool
    with pytest.raises(ValueError):
        umeyama(X, X, weights=torch.ones(4, 11))
    with pytest.raises(ValueError):
        kabsch(X, X.to("meta"))
    with pytest.raises(ValueError):
        rigid_residuals(torch.eye(3), torch.zeros(3), X, X)  # batch mismatch


def test_rigid_residuals():
    sc = rigid_scene(batch=2, num_points=5, with_scale=True, seed=9)
    res = rigid_residuals(sc.R, sc.t, sc.X, sc.Y, sc.s)
    assert res.shape == (2, 5) and res.max() < 1e-12
    Y = sc.Y.clone()
    Y[1, 3, 0] += 0.25
    res = rigid_residuals(sc.R, sc.t, sc.X, Y, sc.s)
    assert abs(float(res[1, 3]) - 0.25) < 1e-12
    # without s: residual of the rigid part only
    r0 = rigid_residuals(sc.R, sc.t, sc.X, transform_points(sc.R, sc.t, sc.X))
    assert r0.max() < 1e-12


@pytest.mark.parametrize("with_scale", [False, True])
def test_gradcheck(with_scale):
    sc = rigid_scene(batch=2, num_points=6, noise=0.05, with_scale=True, seed=10)
    X = sc.X.clone().requires_grad_(True)
    Y = sc.Y.clone().requires_grad_(True)
    w = torch.rand(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    w.requires_grad_(True)

    def f(X, Y, w):
        r = umeyama(X, Y, weights=w, with_scale=with_scale)
        return r.R, r.t, r.s

    assert torch.autograd.gradcheck(f, (X, Y, w), atol=1e-6, rtol=1e-5)


def test_gradient_finite_for_isotropic_cloud():
    # octahedron: all singular values of the cross-covariance coincide, torch.linalg.svd's backward gives NaN;
    # the rotation is unique and our gradient is finite and matches finite differences
    X = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    R0 = random_rotation(generator=torch.Generator().manual_seed(3))
    Y = (X @ R0.T + torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)).requires_grad_(True)
    Xg = X.clone().requires_grad_(True)
    r = kabsch(Xg, Y)
    assert r.success
    gX, gY = torch.autograd.grad((r.R * torch.arange(9.0, dtype=torch.float64).reshape(3, 3)).sum(), (Xg, Y))
    assert torch.isfinite(gX).all() and torch.isfinite(gY).all()
    assert torch.autograd.gradcheck(lambda X, Y: kabsch(X, Y).R, (Xg, Y), atol=1e-6, rtol=1e-5)


def test_closed_form_eigensolver_matches_eigh():
    g = torch.Generator().manual_seed(11)
    A = torch.randn(2000, 4, 4, dtype=torch.float64, generator=g)
    A = A + A.mT
    adj, det = sym_adjugate4(A)
    eye = torch.eye(4, dtype=torch.float64).expand(2000, 4, 4)
    torch.testing.assert_close(A @ adj, det[:, None, None] * eye)
    evals, evecs = torch.linalg.eigh(A)
    for largest, k in ((True, 3), (False, 0)):
        r = extreme_eigenpair4(A, largest)
        ref = extreme_eigenpair4(A, largest, method="eigh")
        torch.testing.assert_close(r.value, evals[:, k])
        gap = torch.where(torch.tensor(largest), evals[:, 3] - evals[:, 2], evals[:, 1] - evals[:, 0])
        cos = (r.vector * evecs[..., k]).sum(-1).abs()
        well = gap / A.flatten(-2).norm(dim=-1) > 1e-4  # eigenvector is only defined up to ~eps/gap
        assert (1 - cos[well]).max() < 1e-12
        torch.testing.assert_close(r.gap[well], ref.gap[well], rtol=1e-6, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_property_recovers_random_motion(seed, with_scale):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(3, 30, (), generator=g))
    X = torch.randn(n, 3, dtype=torch.float64, generator=g) * 2
    R = random_rotation(generator=g)
    t = torch.randn(3, dtype=torch.float64, generator=g) * 3
    s = torch.rand((), dtype=torch.float64, generator=g) * 3 + 0.1
    if not with_scale:
        s = torch.ones((), dtype=torch.float64)
    r = umeyama(X, transform_points_sim(s, R, t, X), with_scale=with_scale)
    assert r.success
    assert float(rotation_error(r.R, R)) < 1e-8
    assert float((r.t - t).norm()) < 1e-8 * (1 + float(t.norm()))
    assert abs(float(r.s - s)) < 1e-8 * float(s)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_property_equivariance(seed):
    """T(A X, B Y) = B o T(X, Y) o A^-1 for similarities A (on the source) and B (on the target)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(12, 3, dtype=torch.float64, generator=g)
    Y = torch.randn(12, 3, dtype=torch.float64, generator=g)  # pure noise: the fit is far from exact
    w = torch.rand(12, dtype=torch.float64, generator=g) + 0.1
    RA, RB = random_rotation(2, generator=g).unbind(0)
    tA, tB = (torch.randn(2, 3, dtype=torch.float64, generator=g) * 2).unbind(0)
    sA, sB = (torch.rand(2, dtype=torch.float64, generator=g) + 0.5).unbind(0)
    base = umeyama(X, Y, weights=w)
    moved = umeyama(transform_points_sim(sA, RA, tA, X), transform_points_sim(sB, RB, tB, Y), weights=w)
    assert base.success and moved.success
    # expected: B o base o A^-1
    sAi, RAi, tAi = 1 / sA, RA.T, -(RA.T @ tA) / sA
    s1, R1, t1 = compose_sim(base.s, base.R, base.t, sAi, RAi, tAi)
    s2, R2, t2 = compose_sim(sB, RB, tB, s1, R1, t1)
    assert float(rotation_error(moved.R, R2)) < 1e-8
    torch.testing.assert_close(moved.t, t2, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(moved.s, s2, atol=1e-8, rtol=1e-8)
    # rigid version, rigid A and B
    kb = kabsch(X, Y, weights=w)
    km = kabsch(transform_points(RA, tA, X), transform_points(RB, tB, Y), weights=w)
    Ri, ti = RA.T, -(RA.T @ tA)
    R1, t1 = compose_rigid(kb.R, kb.t, Ri, ti)
    R2, t2 = compose_rigid(RB, tB, R1, t1)
    assert float(rotation_error(km.R, R2)) < 1e-8
    torch.testing.assert_close(km.t, t2, atol=1e-8, rtol=1e-8)
