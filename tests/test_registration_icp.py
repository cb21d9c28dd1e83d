import importlib.util
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import data_path
from torch3dv.geometry import axis_angle_to_matrix, quat_xyzw_to_matrix, rotation_error
from torch3dv.io import read_ply
from torch3dv.registration import (
    ICPOptions,
    ICPResult,
    align_principal_axes,
    blob_pair,
    estimate_normals,
    icp,
    to_homogeneous,
)
from torch3dv.registration.icp_solver import robust_weights

METHODS = ["point_to_point", "point_to_plane", "gicp"]
EXTENT = 1.0  # blob_pair clouds are about 1 m across


def _errors(r, sc):
    return rotation_error(r.R, sc.R), (r.t - sc.t).norm(dim=-1) / EXTENT


@pytest.mark.parametrize("method", METHODS)
def test_converges_exactly_from_20deg_10pct(method):
    # noise-free, exact correspondences exist; up to 20 deg and 10% of the extent away
    n = 500 if method == "point_to_point" else 1500  # point-to-point converges linearly: many iterations
    sc = blob_pair(batch=3, num_points=n, max_angle=math.radians(20), max_translation=0.1, seed=1)
    opts = ICPOptions(method=method, max_correspondence_distance=0.5, max_iterations=300,
                      relative_fitness=1e-9, relative_rmse=1e-12)
    r = icp(sc.source, sc.target, options=opts)
    assert isinstance(r, ICPResult) and r.success.all()
    er, et = _errors(r, sc)
    assert er.max() < 1e-4 and et.max() < 1e-4, (er, et)
    assert (r.fitness == 1).all() and (r.inlier_rmse < 1e-4).all()
    torch.testing.assert_close(r.transform, to_homogeneous(r.R, r.t))


@pytest.mark.parametrize("method", ["point_to_plane", "gicp"])
def test_independent_samples_float32(method):
    # different samplings of the surface: the answer is accurate to a fraction of the point spacing
    sc = blob_pair(batch=2, num_points=2500, max_angle=math.radians(15), max_translation=0.05, same_samples=False,
                   seed=2, dtype=torch.float32)
    r = icp(sc.source, sc.target, options=ICPOptions(method=method, max_correspondence_distance=0.2, max_iterations=60))
    er, et = _errors(r, sc)
    assert r.success.all() and er.max() < math.radians(0.5) and et.max() < 5e-3
    assert r.R.dtype == torch.float32


def test_exact_correspondences_one_step():
    # identity correspondences and no robust loss: point-to-point is exact after one Kabsch step
    sc = blob_pair(batch=4, num_points=300, max_angle=0.05, max_translation=0.01, seed=3)
    r = icp(sc.source, sc.target, options=ICPOptions(method="point_to_point", max_correspondence_distance=1.0,
                                                    max_iterations=5))
    er, et = _errors(r, sc)
    assert er.max() < 1e-10 and et.max() < 1e-10


def test_batch_with_masks_equals_single_pairs():
    sc = blob_pair(batch=3, num_points=400, max_angle=0.25, max_translation=0.05, same_samples=False, seed=4)
    counts = [400, 300, 200]
    S, T = sc.source.clone(), sc.target.clone()
    sm = torch.zeros(3, 400, dtype=torch.bool)
    tm = torch.zeros(3, 400, dtype=torch.bool)
    for i, n in enumerate(counts):
        sm[i, :n] = True
        tm[i, : 400 - (i * 70)] = True
    S[~sm] = float("nan")
    T[~tm] = float("inf")
    for method in METHODS:
        opts = ICPOptions(method=method, max_correspondence_distance=0.2, max_iterations=25)
        rb = icp(S, T, source_mask=sm, target_mask=tm, options=opts)
        assert rb.success.all()
        for i in range(3):
            ri = icp(S[i][sm[i]], T[i][tm[i]], options=opts)
            torch.testing.assert_close(rb.R[i], ri.R, atol=1e-9, rtol=0)
            torch.testing.assert_close(rb.t[i], ri.t, atol=1e-9, rtol=0)
            assert rb.num_iterations[i] == ri.num_iterations
            torch.testing.assert_close(rb.fitness[i], ri.fitness)


def test_nested_batch_shape_and_init():
    sc = blob_pair(batch=4, num_points=600, max_angle=0.2, max_translation=0.05, seed=5)
    init = to_homogeneous(sc.R, sc.t)  # start at the answer
    r = icp(sc.source.reshape(2, 2, 600, 3), sc.target.reshape(2, 2, 600, 3), init=init.reshape(2, 2, 4, 4),
            options=ICPOptions(method="point_to_plane", max_correspondence_distance=0.1))
    assert r.R.shape == (2, 2, 3, 3) and r.t.shape == (2, 2, 3) and r.success.shape == (2, 2)
    assert rotation_error(r.R.reshape(4, 3, 3), sc.R).max() < 1e-8


@pytest.mark.parametrize("loss", ["huber", "cauchy", "tukey"])
def test_robust_losses_with_outliers(loss):
    sc = blob_pair(batch=2, num_points=1500, max_angle=0.1, max_translation=0.03, seed=6)
    g = torch.Generator().manual_seed(0)
    T = sc.target.clone()
    out = torch.rand(2, 1500, generator=g) < 0.3  # 30% of the target shifted 4 cm along x: biases least squares
    T[out] += torch.tensor([0.04, 0.0, 0.0], dtype=T.dtype)
    opts = dict(method="point_to_point", max_correspondence_distance=0.3, max_iterations=100)
    r0 = icp(sc.source, T, options=ICPOptions(**opts))
    r = icp(sc.source, T, options=ICPOptions(**opts, loss=loss, loss_scale=0.03))
    et0, et = (r0.t - sc.t).norm(dim=-1), (r.t - sc.t).norm(dim=-1)
    assert r0.success.all() and r.success.all()
    assert et.max() < 2e-3 and rotation_error(r.R, sc.R).max() < math.radians(0.2), (et, et0)


def test_robust_weight_values():
    s = torch.tensor([0.0, 0.25, 1.0, 4.0])
    torch.testing.assert_close(robust_weights(s, "tukey", 1.0), torch.tensor([1.0, 0.5625, 0.0, 0.0]))
    torch.testing.assert_close(robust_weights(s, "huber", 1.0), torch.tensor([1.0, 1.0, 1.0, 0.5]))
    torch.testing.assert_close(robust_weights(s, "cauchy", 1.0), 1 / (1 + s))


def test_multiscale():
    sc = blob_pair(batch=2, num_points=3000, max_angle=math.radians(25), max_translation=0.1, same_samples=False,
                   seed=7)
    opts = ICPOptions(method="point_to_plane", voxel_sizes=(0.08, 0.04, 0.0),
                      max_correspondence_distance=(0.4, 0.1, 0.03), max_iterations=(30, 30, 30))
    r = icp(sc.source, sc.target, options=opts)
    er, et = _errors(r, sc)
    assert r.success.all() and er.max() < math.radians(0.5) and et.max() < 5e-3
    assert (r.num_iterations > 3).all()


def test_bad_inputs():
    sc = blob_pair(batch=6, num_points=200, max_angle=0.1, max_translation=0.02, seed=8)
    S, T = sc.source.clone(), sc.target.clone()
    sm = torch.ones(6, 200, dtype=torch.bool)
    sm[0] = False  # empty source
    S[1, 5] = float("nan")  # NaN in an unmasked point
    sm[2, 1:] = False  # a single point
    S[3] = S[3, :1]  # all points identical
    T[3] = T[3, :1]
    tm = torch.ones(6, 200, dtype=torch.bool)
    tm[4] = False  # empty target
    for method in METHODS:
        r = icp(S, T, source_mask=sm, target_mask=tm, options=ICPOptions(method=method, max_correspondence_distance=0.5))
        assert r.success.tolist() == [False, False, False, False, False, True], method
        for v in (r.R, r.t, r.fitness, r.inlier_rmse):
            assert torch.isfinite(v).all()
        assert rotation_error(r.R[5], sc.R[5]) < 1e-6
    with pytest.raises(ValueError):
        icp(S[:3], T[:4])
    with pytest.raises(ValueError):
        icp(S, T.float())
    with pytest.raises(ValueError):
        icp(S, T, init=torch.eye(4, dtype=S.dtype))
    with pytest.raises(ValueError):
        ICPOptions(method="plane")
    with pytest.raises(ValueError):
        ICPOptions(voxel_sizes=(0.1, 0.0), max_correspondence_distance=(0.1, 0.2, 0.3))


def test_gradcheck_point_to_point_and_plane():
    sc = blob_pair(batch=1, num_points=10, max_angle=0.05, max_translation=0.01, seed=9)
    X = sc.source.clone().requires_grad_(True)
    # point-to-point: the final weighted Kabsch is the exact fixed point, so noisy data are fine
    Y = (sc.target + 1e-3 * torch.randn(sc.target.shape, generator=torch.Generator().manual_seed(1),
                                        dtype=torch.float64)).requires_grad_(True)
    opts = ICPOptions(method="point_to_point", max_correspondence_distance=1.0, max_iterations=8,
                      relative_fitness=0.0, relative_rmse=0.0)

    def f(x, y):
        r = icp(x, y, options=opts)
        return r.R, r.t

    assert torch.autograd.gradcheck(f, (X, Y), eps=1e-6, atol=1e-5)
    # arbitrary fixed unit normals (radial ones would make rotations about the centroid unobservable)
    Nrm = torch.nn.functional.normalize(torch.randn(sc.target.shape, generator=torch.Generator().manual_seed(2),
                                                    dtype=torch.float64), dim=-1).requires_grad_(True)
    opts_pl = ICPOptions(method="point_to_plane", max_correspondence_distance=1.0, max_iterations=12,
                         relative_fitness=0.0, relative_rmse=0.0)

    def g(x, y, n):
        r = icp(x, y, target_normals=n, options=opts_pl)
        return r.R, r.t

    # point-to-plane: the Gauss-Newton step gives the exact implicit derivative where the residuals vanish
    Y0 = sc.target.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(g, (X, Y0, Nrm), eps=1e-6, atol=1e-5)


def _exact_pose_fn(opts, **kw):
    def f(x, y):
        r = icp(x, y, options=opts, **kw)
        return r.R, r.t

    return f


def test_gradcheck_gicp():
    # plane-to-plane: the final Gauss-Newton step (covariances constant) is the exact implicit derivative where
    # the residuals vanish at the optimum: noise-free, exact correspondences
    sc = blob_pair(batch=1, num_points=12, max_angle=0.05, max_translation=0.01, seed=9)
    X = sc.source.clone().requires_grad_(True)
    Y = sc.target.clone().requires_grad_(True)
    opts = ICPOptions(method="gicp", max_correspondence_distance=1.0, max_iterations=12, num_neighbors=6,
                      relative_fitness=0.0, relative_rmse=0.0)
    assert torch.autograd.gradcheck(_exact_pose_fn(opts), (X, Y), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(("method", "loss"), [("point_to_point", "cauchy"), ("point_to_plane", "tukey")])
def test_gradcheck_robust_loss_and_estimated_normals(method, loss):
    # IRLS weights and normals estimated inside are constants of the final step; at a zero-residual optimum
    # neither changes the derivative
    sc = blob_pair(batch=1, num_points=12, max_angle=0.05, max_translation=0.01, seed=13)
    X = sc.source.clone().requires_grad_(True)
    Y = sc.target.clone().requires_grad_(True)
    opts = ICPOptions(method=method, max_correspondence_distance=1.0, max_iterations=12, num_neighbors=6, loss=loss,
                      loss_scale=0.05, relative_fitness=0.0, relative_rmse=0.0)
    assert torch.autograd.gradcheck(_exact_pose_fn(opts), (X, Y), eps=1e-6, atol=1e-5)


def test_gradcheck_batched_masked_multiscale():
    # a padded batch (NaN padding) and two scales: the derivative is that of the full-resolution fixed point and
    # the padding gets a zero gradient
    sc = blob_pair(batch=2, num_points=10, max_angle=0.05, max_translation=0.01, seed=3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    X, Y = sc.source.clone(), sc.target.clone()
    X[1, 8:] = float("nan")
    X.requires_grad_(True)
    opts = ICPOptions(method="gicp", voxel_sizes=(0.05, 0.0), max_correspondence_distance=1.0,
                      max_iterations=(3, 10), num_neighbors=5, relative_fitness=0.0, relative_rmse=0.0)

    def f(x):
        r = icp(x, Y, source_mask=mask, target_mask=mask, options=opts)
        return r.R, r.t

    assert torch.autograd.gradcheck(f, (X,), eps=1e-6, atol=1e-5)
    R, t = f(X)
    (R.sum() + t.sum()).backward()
    assert torch.isfinite(X.grad).all() and (X.grad[1, 8:] == 0).all() and X.grad[:, :8].abs().sum() > 0


def test_gradient_flows_to_points_float32():
    sc = blob_pair(batch=2, num_points=500, max_angle=0.1, max_translation=0.02, seed=10, dtype=torch.float32)
    X = sc.source.clone().requires_grad_(True)
    r = icp(X, sc.target, options=ICPOptions(method="gicp", max_correspondence_distance=0.2))
    (r.t.sum() + r.R.sum()).backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), angle=st.floats(0.0, math.radians(15)), shift=st.floats(0.0, 0.08))
def test_property_random_rigid_motions(seed, angle, shift):
    sc = blob_pair(batch=1, num_points=800, max_angle=angle, max_translation=shift, seed=seed)
    r = icp(sc.source, sc.target, options=ICPOptions(method="point_to_plane", max_correspondence_distance=0.5,
                                                    max_iterations=60, relative_fitness=1e-9, relative_rmse=1e-12))
    er, et = _errors(r, sc)
    assert r.success.all() and er.max() < 1e-6 and et.max() < 1e-6
    # the inverse problem gives the inverse transform
    ri = icp(sc.target, sc.source, options=ICPOptions(method="point_to_plane", max_correspondence_distance=0.5,
                                                     max_iterations=60, relative_fitness=1e-9, relative_rmse=1e-12))
    torch.testing.assert_close(ri.R, r.R.transpose(-1, -2), atol=1e-6, rtol=0)


def test_principal_axes_then_icp():
    # a large rotation (beyond ICP's basin): principal axes + ICP recovers it on a complete, anisotropic shape
    sc = blob_pair(batch=3, num_points=3000, max_angle=math.pi, max_translation=0.5, seed=11)
    pa = align_principal_axes(sc.source, sc.target)
    assert pa.success.all()
    assert rotation_error(pa.R, sc.R).max() < math.radians(20)
    r = icp(sc.source, sc.target, init=to_homogeneous(pa.R, pa.t),
            options=ICPOptions(method="point_to_plane", max_correspondence_distance=0.3, max_iterations=60))
    assert rotation_error(r.R, sc.R).max() < 1e-5
    # isotropic shape: axes undetermined -> success False, finite outputs
    u = torch.nn.functional.normalize(torch.randn(1, 4000, 3, dtype=torch.float64), dim=-1)
    iso = torch.cat([u, -u], 1)
    pi = align_principal_axes(iso, iso)
    assert torch.isfinite(pi.R).all()


@pytest.mark.parametrize("method", ["point_to_point", "point_to_plane"])
def test_neighbor_methods_give_the_same_icp(method):
    # the k-d tree (cached candidates), the grid and brute force find the same correspondences
    sc = blob_pair(batch=2, num_points=400, max_angle=0.2, max_translation=0.05, same_samples=False, seed=12)
    res = [icp(sc.source, sc.target, options=ICPOptions(method=method, max_correspondence_distance=0.1,
                                                         max_iterations=20, neighbor_method=m))
           for m in ("brute", "grid") + (("kdtree",) if importlib.util.find_spec("scipy") else ())]
    for r in res[1:]:
        torch.testing.assert_close(r.R, res[0].R, atol=1e-9, rtol=0)
        torch.testing.assert_close(r.t, res[0].t, atol=1e-9, rtol=0)
        assert torch.equal(r.num_iterations, res[0].num_iterations) and torch.equal(r.fitness, res[0].fitness)


def _bunny_pair():
    """bun045 and bun000 (~40k points each, float64) and the ground-truth bun000_from_bun045 (bun.conf:
    X_world = R(q') X + t with q' = (qx, qy, qz, -qw))."""
    d = data_path("stanford_bunny_range_scans", "data")
    poses = {}
    for line in (d / "bun.conf").read_text().splitlines():
        tok = line.split()
        if tok and tok[0] == "bmesh":
            tx, ty, tz, qx, qy, qz, qw = map(float, tok[2:9])
            poses[tok[1]] = (quat_xyzw_to_matrix(torch.tensor([qx, qy, qz, -qw], dtype=torch.float64)),
                             torch.tensor([tx, ty, tz], dtype=torch.float64))
    (R1, t1), (R0, t0) = poses["bun045.ply"], poses["bun000.ply"]
    T_gt = to_homogeneous(R0.T @ R1, R0.T @ (t1 - t0))
    X, Y = read_ply(d / "bun045.ply").points.double(), read_ply(d / "bun000.ply").points.double()
    # the benchmark's start: ground truth perturbed by 3.8 degrees and 5.4 mm
    P = to_homogeneous(axis_angle_to_matrix(torch.tensor([0.05, -0.04, 0.03], dtype=torch.float64)),
                       torch.tensor([0.004, -0.003, 0.002], dtype=torch.float64))
    return X, Y, T_gt, P @ T_gt


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("method", ["point_to_point", "point_to_plane"])
def test_bunny_scan_pair_accuracy(method):
    # the benchmark's workload: 30 iterations at 5 mm from a start 3.8 deg / 5.4 mm off (float32, as timed)
    X, Y, T_gt, init = _bunny_pair()
    opts = ICPOptions(method=method, max_correspondence_distance=0.005, max_iterations=30, num_neighbors=30)
    r = icp(X.float(), Y.float(), init=init.float(), options=opts)
    assert r.success and r.fitness > 0.9 and r.inlier_rmse < 1e-3
    assert math.degrees(rotation_error(r.R.double(), T_gt[:3, :3])) < 1.0
    assert (r.t.double() - T_gt[:3, 3]).norm() < 1e-3


@pytest.mark.realdata
@pytest.mark.slow
def test_bunny_same_result_as_open3d():
    # the same algorithm as Open3D's legacy ICP: point-to-point gives its pose after every number of iterations
    # (to rounding); point-to-plane (Open3D steps in Euler angles, torch3dv on the rotation vector) reaches
    # the same fixed point
    o3d = pytest.importorskip("open3d")
    X, Y, _, init = _bunny_pair()
    normals = estimate_normals(Y[None], k=30, radius=0.005)[0]
    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(X.numpy()))
    tgt = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(Y.numpy()))
    tgt.normals = o3d.utility.Vector3dVector(normals.numpy())
    cases = [("point_to_point", reg.TransformationEstimationPointToPoint(), 1, 1e-9),
             ("point_to_point", reg.TransformationEstimationPointToPoint(), 12, 1e-9),
             ("point_to_plane", reg.TransformationEstimationPointToPlane(), 30, 1e-9)]
    for method, est, n, tol in cases:
        ro = reg.registration_icp(src, tgt, 0.005, init.numpy(), est, reg.ICPConvergenceCriteria(0.0, 0.0, n))
        r = icp(X, Y, init=init, target_normals=normals,
                options=ICPOptions(method=method, max_correspondence_distance=0.005, max_iterations=n,
                                   relative_fitness=-1.0, relative_rmse=-1.0))
        assert int(r.num_iterations) == n
        torch.testing.assert_close(r.transform, torch.tensor(ro.transformation), atol=tol, rtol=0)
        assert abs(float(r.fitness) - ro.fitness) < 1e-12 and abs(float(r.inlier_rmse) - ro.inlier_rmse) < 1e-12
