"""The batch-first least-squares path (N >= MOMENTS_BF_MIN rows) of the 8-point F / E solvers and the DLT.

It must give what the batch-last path gives (same maths, different data layout and reduction order), keep the
degeneracy test exact where the normal matrix cannot decide it, fail problems locally, and be differentiable.
"""

import pytest
import torch

import torch3dv.solvers.essential as es
import torch3dv.solvers.fundamental as fm
import torch3dv.solvers.homography as hm
from torch3dv.camera.pinhole import unproject_pinhole
from torch3dv.solvers.essential import essential_8point
from torch3dv.solvers.fundamental import MOMENTS_BF_MIN, fundamental_8point
from torch3dv.solvers.homography import homography_dlt
from torch3dv.testing import two_view_scene

N = 64
assert N >= MOMENTS_BF_MIN


def _batch_last_only(monkeypatch):
    for mod in (fm, hm, es):
        monkeypatch.setattr(mod, "MOMENTS_BF_MIN", 10**9)


def _inputs(dtype, planar):
    """6 noisy problems with weights, padding holding NaN in problem 1 and a NaN in a used row of problem 3
    (each test makes problem 4 degenerate in its own way)."""
    s = two_view_scene(6, N, noise_px=0.5, seed=41, planar=planar, dtype=dtype)
    x1, x2 = s.x1.clone(), s.x2.clone()
    mask = torch.ones(6, N, dtype=torch.bool)
    mask[1, 40:] = False
    x1[1, 40:] = float("nan")
    w = torch.rand(6, N, generator=torch.Generator().manual_seed(0), dtype=dtype) + 0.1
    x1[3, 7] = float("nan")
    return s, x1, x2, mask, w


def _close(A, B, tol):
    sgn = torch.sign((A * B).sum((-1, -2)))[..., None, None]
    return (A - B * sgn).abs().max() <= tol


@pytest.mark.parametrize("kind", ["F", "E", "H"])
def test_batch_first_equals_batch_last(kind, dtype, monkeypatch):
    s, x1, x2, mask, w = _inputs(dtype, planar=(kind == "H"))
    if kind == "F":
        planar = two_view_scene(1, N, seed=42, planar=True, dtype=dtype)
        x1[4], x2[4] = planar.x1[0], planar.x2[0]  # noise-free plane: 3-dimensional null space
        run = lambda: fundamental_8point(x1, x2, weights=w, mask=mask)  # noqa: E731
        expect = [True, True, True, False, dtype == torch.float32, True]
    elif kind == "E":
        planar = two_view_scene(1, N, seed=42, planar=True, dtype=dtype)
        x1[4], x2[4] = planar.x1[0], planar.x2[0]
        s.K1[4], s.K2[4] = planar.K1[0], planar.K2[0]
        y1 = unproject_pinhole(x1, s.K1)[..., :2]
        y2 = unproject_pinhole(x2, s.K2)[..., :2]
        run = lambda: essential_8point(y1, y2, weights=w, mask=mask)  # noqa: E731
        expect = [True, True, True, False, dtype == torch.float32, True]
    else:
        mask[4, 3:] = False  # three points: too few for a homography
        run = lambda: homography_dlt(x1, x2, weights=w, mask=mask)  # noqa: E731
        expect = [True, True, True, False, False, True]
    got = run()
    _batch_last_only(monkeypatch)
    ref = run()
    ok = got.success
    assert torch.equal(ok, ref.success)
    # float32 may or may not resolve the noise-free plane; float64 must reject it
    if dtype == torch.float64:
        assert ok.tolist() == expect
    else:
        assert ok[[0, 1, 2, 5]].all() and not ok[3]
    M = got[0]
    R = ref[0]
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    assert _close(M[ok], R[ok], tol)
    assert torch.isfinite(M).all()


def test_degeneracy_test_recomputes_from_points():
    # the normal matrix alone cannot resolve |A v1|^2 / l_max ~ 1e-20; the points can: a noise-free plane
    # fails, the same plane with 1e-6 px noise passes (ratio ~1e-16 > 1e-18)
    p = two_view_scene(2, N, seed=43, planar=True)
    x2 = p.x2.clone()
    x2[1] += 1e-6 * torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=x2.dtype)
    r = fundamental_8point(p.x1, x2)
    assert r.success.tolist() == [False, True]


@pytest.mark.parametrize("kind", ["F", "E", "H"])
def test_gradcheck_batch_first(kind):
    s = two_view_scene(2, 40, noise_px=0.5, seed=44, planar=(kind == "H"))
    w = torch.rand(2, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    if kind == "E":
        a, b = unproject_pinhole(s.x1, s.K1)[..., :2], unproject_pinhole(s.x2, s.K2)[..., :2]
        fn = lambda x, y, ww: essential_8point(x, y, weights=ww).E  # noqa: E731
    elif kind == "F":
        a, b = s.x1, s.x2
        fn = lambda x, y, ww: fundamental_8point(x, y, weights=ww).F  # noqa: E731
    else:
        a, b = s.x1, s.x2
        fn = lambda x, y, ww: homography_dlt(x, y, weights=ww).H  # noqa: E731
    args = (a.clone().requires_grad_(), b.clone().requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
