import importlib.util
import math
import sys

import pytest
import torch

from torch3dv.geometry import axis_angle_to_matrix
from torch3dv.registration import (
    NeighborIndex,
    estimate_normals,
    knn,
    pad_point_clouds,
    radius_search,
    unpad_point_clouds,
    voxel_downsample,
)
from torch3dv.registration import neighbors as nbmod
from torch3dv.registration.neighbors import NearestTracker

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
FAST = ["grid"] + (["kdtree"] if HAS_SCIPY else [])  # every fast method is checked against brute force
needs_scipy = pytest.mark.skipif(not HAS_SCIPY, reason="needs scipy (torch3dv[fast])")


def _cloud(B, N, seed, planar=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(B, N, 3, generator=g, dtype=dtype)
    if planar:
        P[..., 2] *= 0.02  # a thin slab: a surface-like density, the grid's normal case
    return P, g


def _naive_knn(q, P, k):
    """Obvious reference: full distance matrix and sort, one cloud at a time."""
    d = torch.cdist(q.double(), P.double())
    v, i = torch.sort(d, dim=-1)
    return v[..., :k], i[..., :k]


def _assert_same(a, b, tol=1e-6):
    """Same valid set and distances; indices equal except between (numerically) tied points."""
    assert torch.equal(a.valid, b.valid)
    da, db = a.distances[a.valid], b.distances[b.valid]
    torch.testing.assert_close(da, db, atol=tol, rtol=0)
    diff = (a.indices != b.indices) & a.valid
    assert int(diff.sum()) <= max(1, int(a.valid.sum()) // 1000)


@pytest.mark.parametrize("k", [1, 8])
@pytest.mark.parametrize("max_distance", [None, 0.03])
def test_fast_methods_equal_brute(k, max_distance):
    P, g = _cloud(3, 3000, 0)
    q = torch.rand(3, 2000, 3, generator=g)
    q[..., 2] *= 0.05
    pm = torch.rand(3, 3000, generator=g) > 0.2
    qm = torch.rand(3, 2000, generator=g) > 0.1
    P[~pm] = float("nan")  # padding may hold NaN
    a = knn(q, P, k, qm, pm, max_distance, method="brute")
    for method in FAST:
        b = knn(q, P, k, qm, pm, max_distance, method=method)
        _assert_same(a, b)
        assert b.indices.dtype == torch.long and b.distances.dtype == q.dtype
    assert not a.valid[~qm].any()
    assert a.indices.shape == (3, 2000, k)
    # brute force against the obvious reference (one cloud)
    v, i = _naive_knn(q[0, qm[0]], P[0, pm[0]], k)
    sel = torch.nonzero(pm[0])[:, 0]
    exp_d = v if max_distance is None else torch.where(v <= max_distance, v, torch.full_like(v, math.inf))
    torch.testing.assert_close(a.distances[0, qm[0]].double(), exp_d, atol=1e-6, rtol=0)
    ok = torch.isfinite(exp_d)
    assert ((a.indices[0, qm[0]] == sel[i]) | ~ok).float().mean() > 0.999


def test_grid_hint_and_far_queries():
    P, g = _cloud(2, 2500, 1)
    q = torch.rand(2, 800, 3, generator=g) * 3 - 1  # many queries far outside the cloud
    idx = NeighborIndex(P, method="grid")
    a = idx.knn(q, 1)
    hint = torch.randint(0, 2500, (2, 800), generator=g)
    b = idx.knn(q, 1, hint=hint)
    c = knn(q, P, 1, method="brute")
    _assert_same(a, c)
    _assert_same(b, c)
    if HAS_SCIPY:
        _assert_same(knn(q, P, 1, method="kdtree"), c)


@needs_scipy
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("candidates", [1, 2, 4])
def test_tracker_equals_fresh_search(dtype, candidates):
    # queries moving by shrinking rigid motions (as in ICP): the cached candidates give the exact answer
    P, g = _cloud(2, 2000, 4, dtype=dtype)
    pm = torch.rand(2, 2000, generator=g) > 0.1
    q0 = torch.rand(2, 1000, 3, generator=g, dtype=dtype)
    q0[..., 2] *= 0.05
    qm = torch.rand(2, 1000, generator=g) > 0.1
    index = NeighborIndex(P, pm, method="kdtree")
    tracker = NearestTracker(index, 0.03, candidates=candidates)
    for it in range(10):
        R = axis_angle_to_matrix(0.02 / (1 + it) * torch.randn(3, generator=g, dtype=dtype))
        q = q0 @ R.T + 0.003 / (1 + it) * torch.randn(3, generator=g, dtype=dtype)
        idx, valid = tracker(q, qm)
        ref = knn(q, P, 1, qm, pm, max_distance=0.03, method="brute")
        assert torch.equal(valid, ref.valid[..., 0])
        assert ((idx != ref.indices[..., 0]) & valid).sum() <= 1  # ties
        assert not idx[~valid].any()
    if candidates == 4:
        assert tracker.searched < 0.5 * 10 * int(qm.sum())  # most queries were answered from the cache


def test_method_selection_and_optional_scipy(monkeypatch):
    P = torch.rand(1, 50, 3)
    assert NeighborIndex(P, method="brute").method == "brute"
    assert NeighborIndex(P).method == ("kdtree" if HAS_SCIPY else "brute")
    with pytest.raises(ValueError):
        NeighborIndex(P, method="octree")
    # without scipy: auto falls back to the pure-torch methods, an explicit "kdtree" says which extra to install
    monkeypatch.setattr(nbmod, "_HAS_SCIPY", False)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.spatial", None)
    assert NeighborIndex(P).method == "brute" and NeighborIndex(torch.rand(1, 3000, 3)).method == "grid"
    r = knn(P[:, :5], P, 2)
    assert (r.distances[..., 0] == 0).all()
    with pytest.raises(ImportError, match="fast"):
        knn(P[:, :5], P, 2, method="kdtree")



def test_radius_search_is_capped_hybrid():
    P, g = _cloud(2, 2000, 2, dtype=torch.float64)
    r = radius_search(P, P, 0.05, 16)
    d = ((P[:, :, None] - P[:, None]) ** 2).sum(-1).sqrt()
    inside = (d <= 0.05).sum(-1)
    assert (r.valid.sum(-1) != inside.clamp_max(16)).sum() <= 2  # only exact-boundary rounding may differ
    assert (r.distances[r.valid] <= 0.05 + 1e-7).all()
    assert (r.distances[..., 0] == 0).all()  # a point is its own nearest neighbour
    rb = radius_search(P, P, 0.05, 16, method="brute")
    _assert_same(r, rb)


def test_knn_bad_input():
    P = torch.rand(2, 10, 3)
    with pytest.raises(ValueError):
        knn(torch.rand(3, 5, 3), P, 1)
    with pytest.raises(ValueError):
        knn(torch.rand(2, 5, 3), P, 0)
    with pytest.raises(ValueError):
        knn(torch.rand(2, 5, 3, dtype=torch.float64), P, 1)
    with pytest.raises(ValueError):
        knn(torch.rand(2, 5, 2), P, 1)
    # fewer points than k: the rest is invalid, not an error
    r = knn(torch.rand(2, 5, 3), P, 12)
    assert r.valid.sum(-1).eq(10).all() and torch.isinf(r.distances[..., 10:]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normals_plane_and_sphere(dtype):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1, 2000, 2, generator=g, dtype=dtype)
    plane = torch.cat([xy, torch.full_like(xy[..., :1], -1.0)], -1)  # z = -1, viewpoint (origin) above
    n = estimate_normals(plane, k=12)
    torch.testing.assert_close(n, torch.tensor([0, 0, 1.0], dtype=dtype).expand_as(n), atol=1e-5, rtol=0)
    u = torch.randn(1, 5000, 3, generator=g, dtype=dtype)
    u = u / u.norm(dim=-1, keepdim=True)
    sph = 2.0 * u + torch.tensor([0, 0, 10.0], dtype=dtype)
    vp = torch.tensor([0, 0, 10.0], dtype=dtype)  # viewpoint at the centre: normals point inwards
    ns = estimate_normals(sph, k=15, viewpoint=vp)
    cos = (ns * -u).sum(-1)
    assert cos.min() > 0.99
    assert (ns.norm(dim=-1) - 1).abs().max() < 1e-5


def test_normals_degenerate_are_zero():
    P = torch.zeros(1, 10, 3)
    P[0, :2] = torch.tensor([[1.0, 0, 0], [2.0, 0, 0]])
    n = estimate_normals(P, mask=torch.tensor([[True] * 2 + [False] * 8]), k=5)
    assert torch.isfinite(n).all() and (n == 0).all()


def test_voxel_downsample_means_and_batch():
    pts = torch.tensor([[[0.01, 0.01, 0.01], [0.03, 0.03, 0.03], [0.15, 0.0, 0.0], [9, 9, 9]]])
    mask = torch.tensor([[True, True, True, False]])
    d = voxel_downsample(pts, 0.1, mask)
    got = sorted(map(tuple, d.points[d.mask].tolist()))
    exp = [(0.02, 0.02, 0.02), (0.15, 0.0, 0.0)]
    assert torch.allclose(torch.tensor(got), torch.tensor(exp))
    # a batch equals clouds downsampled one by one
    P, _ = _cloud(3, 500, 3, planar=False)
    db = voxel_downsample(P, 0.2)
    for i in range(3):
        di = voxel_downsample(P[i], 0.2)
        a = db.points[i][db.mask[i]]
        assert a.shape == di.points[di.mask].shape
        torch.testing.assert_close(a, di.points[di.mask])


def test_pad_unpad():
    clouds = [torch.rand(n, 3) for n in (3, 7, 1)]
    p = pad_point_clouds(clouds)
    assert p.points.shape == (3, 7, 3) and p.mask.sum().item() == 11
    for a, b in zip(unpad_point_clouds(*p), clouds):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        pad_point_clouds([])
