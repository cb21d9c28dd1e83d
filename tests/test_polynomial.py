"""Batched real roots (torch3dv.linalg.polynomial): the one-Sturm-sequence-per-polynomial isolation in both charts,
against numpy's companion-matrix roots as the slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torch3dv.linalg.polynomial import real_roots, real_roots_homogeneous, real_roots_list


def _coefficients(real: list[np.ndarray], cplx: list[np.ndarray], degree: int) -> torch.Tensor:
    """Ascending coefficients (R, degree + 1) of monic polynomials with the given real roots and complex pairs,
    zero-padded (a missing leading coefficient puts a root at infinity)."""
    rows = []
    for r, c in zip(real, cplx):
        co = np.real(np.poly(np.concatenate([r, c, c.conj()])))[::-1]
        rows.append(np.concatenate([co, np.zeros(degree + 1 - len(co))]))
    return torch.tensor(np.array(rows))


def _angles(uv: torch.Tensor) -> torch.Tensor:
    """Projective points (u, v) as angles modulo pi (infinity at pi / 2)."""
    return torch.atan2(uv[..., 0], uv[..., 1]).remainder(math.pi)


def _angle_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a - b).remainder(math.pi)
    return torch.minimum(d, math.pi - d)


def _check_list(c: torch.Tensor, want: list[np.ndarray], tol: float) -> None:
    """Every expected root found once (count and position), slots distinct and dense."""
    n = c.shape[0]
    prob, slot, uv = real_roots_list(c)
    count = torch.bincount(prob, minlength=n)
    assert count.tolist() == [len(w) for w in want]
    assert torch.equal(torch.bincount(prob * 16 + slot, minlength=16 * n).reshape(n, 16).sum(-1), count)
    assert (slot < count[prob]).all()
    ang = _angles(uv)
    for i, w in enumerate(want):
        got = ang[prob == i]
        exp = torch.atan(torch.tensor(w, dtype=torch.float64))
        d = _angle_dist(got[:, None], exp[None]).amin(0)  # each expected root has a found one nearby ...
        assert d.max() < tol, (i, d.max())
        d = _angle_dist(got[:, None], exp[None]).amin(1)  # ... and each found root an expected one
        assert d.max() < tol, (i, d.max())


def test_home_chart_w_with_close_pairs_near_zero_and_infinity():
    """|c_0| > |c_m| makes the chart w = 1/z the home chart: the counts of the z chart then come from the reversed
    sequence, including the cells next to z = 0 (and next to w = 0 on both sides: roots of large |z|)."""
    g = np.random.default_rng(0)
    real, cplx = [], []
    for _ in range(60):
        # close pairs around z = 0 and near infinity (|w| ~ 1e-3, 1e-5 apart: above the finest cell, ~1e-6)
        small = np.array([1e-3, 1.4e-3, -2e-3]) * (1 + 0.1 * g.random())
        large = np.array([1e3, 1.01e3, -2e3, 5e3]) * (1 + 0.1 * g.random())
        real.append(np.concatenate([small, large]))
        cplx.append(np.array([0.3 + 0.7j]))
    c = _coefficients(real, cplx, 9)
    assert (c[:, 0].abs() > c[:, -1].abs()).all()  # home chart w
    _check_list(c, real, 1e-9)
    # the same roots mirrored (z -> 1 / z): home chart z, the close pairs now in the reversed chart w
    c_mirror = c.flip(-1)
    _check_list(c_mirror, [1.0 / r for r in real], 1e-9)


def test_roots_on_both_sides_of_infinity_and_at_infinity():
    real = [np.array([3e4, -3e4, 0.5, 4.0]), np.array([7e3, 6.9e3, -0.25, 1.5, -40.0, 80.0]),
            np.array([2.0, -9e5])]
    cplx = [np.array([1 + 1j]), np.array([]), np.array([0.1 + 2j, -1 + 0.5j])]
    c = _coefficients(real, cplx, 6)
    _check_list(c, real, 1e-9)
    # a zero leading coefficient: a simple root at infinity (the home chart is then w). (A root exactly on a grid
    # point, as this one, with another root in a fine cell next to it, here |z| > ~32, is a known blind spot of the
    # sign tests: the other root is missed and the exact one reported twice.)
    real = [np.array([20.0, -15.0, 0.5, 4.0]), np.array([25.0, 24.0, -0.25, 1.5, -20.0, 8.0]),
            np.array([2.0, -29.0])]
    c_inf = _coefficients(real, cplx, 7)
    prob, _, uv = real_roots_list(c_inf)
    want = [np.concatenate([[np.inf], r]) for r in real]
    count = torch.bincount(prob, minlength=3)
    assert count.tolist() == [len(w) for w in want]
    ang = _angles(uv)
    for i, w in enumerate(want):
        exp = torch.tensor([math.pi / 2 if np.isinf(x) else math.atan(x) for x in w], dtype=torch.float64)
        assert _angle_dist(ang[prob == i][:, None], exp[None]).amin(0).max() < 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_random_polynomials_match_numpy(seed):
    """Random degree-10 polynomials with coefficients spread over several orders of magnitude (both home charts,
    roots anywhere on the line): the real roots of numpy's companion matrix, where well separated."""
    g = torch.Generator().manual_seed(seed)
    n = 500
    c = torch.randn(n, 11, generator=g, dtype=torch.float64) * 10.0 ** (3 * torch.rand(n, 11, generator=g,
                                                                                          dtype=torch.float64))
    prob, _, uv = real_roots_list(c)
    ang = _angles(uv)
    checked = 0
    for i in range(n):
        r = np.roots(c[i].numpy()[::-1])
        real = np.real(r[np.abs(np.imag(r)) < 1e-7 * np.maximum(1.0, np.abs(r))])
        exp = torch.tensor(np.arctan(real), dtype=torch.float64).remainder(math.pi)
        if len(exp) > 1 and _angle_dist(exp[:, None], exp[None]).fill_diagonal_(9.0).min() < 1e-4:
            continue  # (near-)multiple roots: ill-conditioned, not compared
        got = ang[prob == i]
        assert got.numel() == exp.numel(), i
        if exp.numel():
            assert _angle_dist(got[:, None], exp[None]).amin(0).max() < 1e-8, i
        checked += 1
    assert checked > 0.9 * n


def test_degenerate_rows():
    c = torch.tensor([
        [0.0, 0.0, 0.0, 0.0],  # zero: no roots
        [3.0, 0.0, 0.0, 0.0],  # constant: no roots
        [float("nan"), 1.0, 2.0, 1.0],  # not finite: no roots
        [-0.5, 1.0, 0.0, 0.0],  # degree 1 (two roots at infinity, a triple one counted as one or none)
        [2.0, -3.0, 1.0, 0.0],  # (z - 1)(z - 2), one root at infinity
    ], dtype=torch.float64)
    z, valid = real_roots(c)
    assert valid[:3].sum() == 0
    assert valid[3].sum() == 1 and abs(float(z[3][valid[3]][0]) - 0.5) < 1e-14
    assert valid[4].sum() == 2
    torch.testing.assert_close(torch.sort(z[4][valid[4]]).values, torch.tensor([1.0, 2.0], dtype=torch.float64))
    uv, hv = real_roots_homogeneous(c[4:])
    assert hv.sum() == 3  # with the root at infinity (v = 0)
    assert (uv[hv][:, 1] == 0).sum() == 1


def test_double_root_keeps_the_simple_ones():
    """A repeated root makes the Sturm sequence degenerate: the sign changes decide, the simple roots are found
    (the double one, without a sign change, is not reported)."""
    c = _coefficients([np.array([1.0, 1.0, -2.0, 0.3, 40.0])], [np.array([0.2 + 1j])], 7)
    z, valid = real_roots(c)
    got = torch.sort(z[0][valid[0]]).values
    torch.testing.assert_close(got, torch.tensor([-2.0, 0.3, 40.0], dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_float32_and_grid_argument():
    c = _coefficients([np.array([-3.0, -0.5, 0.25, 2.0, 9.0])], [np.array([1 + 1j])], 7)
    z, valid = real_roots(c.float())
    assert z.dtype == torch.float32 and valid.sum() == 5
    torch.testing.assert_close(torch.sort(z[0][valid[0]]).values.double(),
                               torch.tensor([-3.0, -0.5, 0.25, 2.0, 9.0], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    for grid in (2, 4, 16):
        zg, vg = real_roots(c, grid=grid)
        torch.testing.assert_close(torch.sort(zg[0][vg[0]]).values,
                                   torch.tensor([-3.0, -0.5, 0.25, 2.0, 9.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="even"):
        real_roots_list(c, grid=7)
