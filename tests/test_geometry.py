import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from torch3dv import geometry as G
from torch3dv.linalg import normalize_points, skew, unskew


def test_quaternion_roundtrip_and_order():
    # 90 degrees about z: (w, x, y, z) = (cos 45, 0, 0, sin 45)
    c = math.cos(math.pi / 4)
    R = G.quat_wxyz_to_matrix(torch.tensor([c, 0, 0, c], dtype=torch.float64))
    expected = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(R, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(G.quat_xyzw_to_matrix(torch.tensor([0, 0, c, c], dtype=torch.float64)), expected)
    torch.testing.assert_close(G.matrix_to_quat_wxyz(expected), torch.tensor([c, 0, 0, c], dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_rigid_compose_inverse_properties(seed):
    g = torch.Generator().manual_seed(seed)
    R1, R2 = G.random_rotation(2, generator=g).unbind(0)
    t1, t2 = torch.randn(2, 3, generator=g, dtype=torch.float64).unbind(0)
    X = torch.randn(5, 3, generator=g, dtype=torch.float64)
    R, t = G.compose_rigid(R2, t2, R1, t1)
    torch.testing.assert_close(G.transform_points(R, t, X), G.transform_points(R2, t2, G.transform_points(R1, t1, X)))
    Ri, ti = G.invert_rigid(R, t)
    torch.testing.assert_close(G.transform_points(Ri, ti, G.transform_points(R, t, X)), X)
    T = G.rigid_to_matrix(R, t)
    torch.testing.assert_close(torch.linalg.inv(T), G.rigid_to_matrix(Ri, ti))
    s = torch.tensor(1.7, dtype=torch.float64)
    si, Rsi, tsi = G.invert_sim(s, R, t)
    torch.testing.assert_close(G.transform_points_sim(si, Rsi, tsi, G.transform_points_sim(s, R, t, X)), X)


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-7, math.pi - 1e-7), st.integers(0, 2**31 - 1))
def test_rotation_error_matches_angle(angle, seed):
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm()
    R0 = G.random_rotation(generator=g)
    dR = G.axis_angle_to_matrix(axis * angle)
    err = G.rotation_error(R0, R0 @ dR)
    assert abs(float(err) - angle) < 1e-9 * max(1.0, angle) + 1e-12


def test_translation_direction_error():
    a = torch.tensor([1.0, 0, 0])
    b = torch.tensor([0.0, 1, 0])
    assert abs(float(G.translation_direction_error(a, b)) - math.pi / 2) < 1e-6
    assert float(G.translation_direction_error(a, -a, sign_invariant=True)) < 1e-6
    assert abs(float(G.translation_direction_error(a, -a)) - math.pi) < 1e-6


def test_pose_auc_hand_computed():
    auc = G.pose_auc(torch.tensor([1.0, 2.0, 30.0]), [5.0])
    # recall curve (0,0) (1,1/3) (2,2/3) flat to 5: area 1/6 + 1/2 + 2 = 8/3 over 5
    assert abs(auc[0] - 8 / 15) < 1e-12
    assert G.pose_auc(torch.tensor([float("nan")]), [5.0]) == [0.0]


def test_relative_pose_and_center():
    g = torch.Generator().manual_seed(0)
    R1, R2 = G.random_rotation(2, generator=g).unbind(0)
    t1, t2 = torch.randn(2, 3, generator=g, dtype=torch.float64).unbind(0)
    R, t = G.relative_pose(R1, t1, R2, t2)
    X = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(G.transform_points(R, t, G.transform_points(R1, t1, X)), G.transform_points(R2, t2, X))
    C = G.camera_center(R1, t1)
    torch.testing.assert_close(G.transform_points(R1, t1, C[None]), torch.zeros(1, 3, dtype=torch.float64))


def test_skew_and_normalization():
    v = torch.randn(7, 3, dtype=torch.float64)
    u = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close((skew(v) @ u[..., None])[..., 0], torch.linalg.cross(v, u, dim=-1))
    torch.testing.assert_close(unskew(skew(v)), v)
    x = 100 * torch.randn(3, 20, 2, dtype=torch.float64) + 300
    w = torch.rand(3, 20, dtype=torch.float64)
    xn, T = normalize_points(x, w)
    torch.testing.assert_close((w[..., None] * xn).sum(-2), torch.zeros(3, 2, dtype=torch.float64), atol=1e-9, rtol=0)
    mean_dist = (w * xn.norm(dim=-1)).sum(-1) / w.sum(-1)
    torch.testing.assert_close(mean_dist, torch.full((3,), math.sqrt(2), dtype=torch.float64))
    xh = torch.cat([x, torch.ones_like(x[..., :1])], -1) @ T.transpose(-1, -2)
    torch.testing.assert_close(xh[..., :2], xn)
