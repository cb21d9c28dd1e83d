import math

import numpy as np
import pytest
import torch

from conftest import data_path
from torch3dv.geometry import quat_xyzw_to_matrix, rotation_error
from torch3dv import RansacOptions
from torch3dv.io import read_ply
from torch3dv.registration import (
    ICPOptions,
    RegistrationOptions,
    blob_pair,
    estimate_normals,
    fpfh,
    global_registration,
    icp,
    match_features,
    register,
)


def test_fpfh_is_rigid_invariant():
    sc = blob_pair(batch=1, num_points=3000, max_angle=math.pi, max_translation=0.5, seed=0)
    # orient normals outwards in both frames (the blob's centre is the origin of the source frame)
    ns = estimate_normals(sc.source, k=15, viewpoint=torch.zeros(3, dtype=sc.source.dtype))
    nt = estimate_normals(sc.target, k=15, viewpoint=sc.t[0])
    Fs, Ft = fpfh(sc.source, -ns, 0.15), fpfh(sc.target, -nt, 0.15)
    assert Fs.shape == (1, 3000, 33)
    torch.testing.assert_close(Fs.reshape(-1, 3, 11).sum(-1), torch.full((3000, 3), 100.0, dtype=Fs.dtype))
    # identical up to rounding at bin edges: no entry moves by more than 1% of its block's mass (100)
    assert (Fs - Ft).abs().max() < 1.0 and (Fs - Ft).abs().mean() < 0.01
    m = match_features(Fs, Ft)
    ok = m.valid
    assert ok.float().mean() > 0.5
    assert (m.indices[ok] == torch.arange(3000)[None].expand_as(ok)[ok]).float().mean() > 0.95


def test_match_features_mutual():
    S = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.9, 0.0]]])
    T = torch.tensor([[[0.0, 0.1], [1.0, 0.1]]])
    m = match_features(S, T)
    assert m.valid.tolist() == [[True, True, False]] and m.indices[0, :2].tolist() == [0, 1]
    m1 = match_features(S, T, mutual=False)
    assert m1.valid.all() and m1.indices[0, 2] == 1
    with pytest.raises(ValueError):
        match_features(S, T[..., :1])


def test_global_registration_synthetic_batch():
    sc = blob_pair(batch=3, num_points=4000, max_angle=math.pi, max_translation=0.5, same_samples=False, seed=1,
                   dtype=torch.float32)
    o = RegistrationOptions(voxel_size=0.04)
    r = register(sc.source, sc.target, options=o)
    assert r.success.all()
    assert rotation_error(r.R, sc.R).max() < math.radians(1.0)
    assert (r.t - sc.t).norm(dim=-1).max() < 0.01


def test_register_bad_inputs():
    sc = blob_pair(batch=2, num_points=500, seed=2)
    S = sc.source.clone()
    S[1, 3] = float("nan")
    # only the failure flag and finite outputs are checked: a short RANSAC is enough
    fast = RansacOptions(min_iterations=64, max_iterations=2000, hypotheses_per_round=128)
    r = register(S, sc.target, options=RegistrationOptions(voxel_size=0.08, ransac=fast))
    assert not r.success[1] and torch.isfinite(r.R).all() and torch.isfinite(r.t).all()
    with pytest.raises(ValueError):
        register(S, sc.target[:1])
    with pytest.raises(ValueError):
        RegistrationOptions(voxel_size=0.0)


def _bunny_pose(name):
    """Pose of a scan in bun.conf: X_world = R(q') X + t with q' = (qx, qy, qz, -qw) (see SOURCE.txt)."""
    conf = data_path("stanford_bunny_range_scans", "data", "bun.conf").read_text().splitlines()
    for line in conf:
        tok = line.split()
        if tok and tok[0] == "bmesh" and tok[1] == name:
            tx, ty, tz, qx, qy, qz, qw = map(float, tok[2:9])
            R = quat_xyzw_to_matrix(torch.tensor([qx, qy, qz, -qw], dtype=torch.float64))
            return R, torch.tensor([tx, ty, tz], dtype=torch.float64)
    raise KeyError(name)


@pytest.mark.realdata
@pytest.mark.slow
def test_bunny_bun045_to_bun000():
    d = data_path("stanford_bunny_range_scans", "data")
    X = read_ply(d / "bun045.ply").points
    Y = read_ply(d / "bun000.ply").points
    R1, t1 = _bunny_pose("bun045.ply")
    R0, t0 = _bunny_pose("bun000.ply")
    R_gt = R0.T @ R1  # bun000_from_bun045
    t_gt = R0.T @ (t1 - t0)
    # coarse-to-fine point-to-plane ICP from the identity (34 degrees away)
    opts = ICPOptions(method="point_to_plane", voxel_sizes=(0.01, 0.005, 0.0),
                      max_correspondence_distance=(0.05, 0.02, 0.005), max_iterations=(30, 30, 30))
    r = icp(X, Y, options=opts)
    assert r.success
    assert math.degrees(rotation_error(r.R.double(), R_gt)) < 1.0
    assert (r.t.double() - t_gt).norm() < 1e-3
    assert r.fitness > 0.9


@pytest.mark.realdata
@pytest.mark.slow
def test_3dmatch_pair_global():
    d = data_path("geotransformer_3dmatch_demo_pair", "demo")
    S = torch.from_numpy(np.load(d / "src.npy")).float()
    T = torch.from_numpy(np.load(d / "ref.npy")).float()
    G = torch.from_numpy(np.load(d / "gt.npy")).double()
    g = global_registration(S, T, options=RegistrationOptions(voxel_size=0.05))
    assert g.success
    assert math.degrees(rotation_error(g.R.double(), G[:3, :3])) < 5.0
    assert (g.t.double() - G[:3, 3]).norm() < 0.10
