import numpy as np
import pytest
import torch

from conftest import data_path
from torch3dv.io import PlyData, read_ply, write_ply


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip(tmp_path, fmt, dtype):
    g = torch.Generator().manual_seed(0)
    P = torch.randn(57, 3, generator=g, dtype=dtype)
    N = torch.nn.functional.normalize(torch.randn(57, 3, generator=g, dtype=dtype), dim=-1)
    C = torch.randint(0, 256, (57, 3), generator=g, dtype=torch.uint8)
    F = torch.randint(0, 57, (20, 3), generator=g)
    path = tmp_path / f"x_{fmt}.ply"
    write_ply(path, P, normals=N, colors=C, faces=F, format=fmt)
    d = read_ply(path, dtype=dtype)
    assert isinstance(d, PlyData)
    tol = 1e-7 if dtype == torch.float32 else 1e-15
    torch.testing.assert_close(d.points, P, atol=tol, rtol=tol)
    torch.testing.assert_close(d.normals, N, atol=tol, rtol=tol)
    assert torch.equal(d.colors, C) and torch.equal(d.faces, F)


def test_points_only_and_empty(tmp_path):
    P = torch.rand(5, 3)
    write_ply(tmp_path / "a.ply", P, format="ascii")
    d = read_ply(tmp_path / "a.ply")
    assert d.normals is None and d.colors is None and d.faces is None
    torch.testing.assert_close(d.points, P)
    write_ply(tmp_path / "e.ply", torch.zeros(0, 3))
    assert read_ply(tmp_path / "e.ply").points.shape == (0, 3)


def test_crlf_header_and_extra_elements(tmp_path):
    text = ("ply\r\nformat ascii 1.0\r\ncomment crlf\r\nelement vertex 3\r\nproperty float x\r\nproperty float y\r\n"
            "property float z\r\nproperty float confidence\r\nelement range_grid 4\r\n"
            "property list uchar int vertex_indices\r\nelement face 1\r\nproperty list uchar int vertex_indices\r\n"
            "end_header\r\n1 2 3 0.5 \r\n4 5 6 0.5 \r\n7 8 9 1 \r\n1 0\r\n0\r\n1 2\r\n0\r\n4 0 1 2 0\r\n")
    (tmp_path / "c.ply").write_bytes(text.encode())
    d = read_ply(tmp_path / "c.ply")
    torch.testing.assert_close(d.points, torch.arange(1, 10, dtype=torch.float32).reshape(3, 3))
    assert d.faces.tolist() == [[0, 1, 2], [0, 2, 0]]  # quad split into a fan


def test_bad_files(tmp_path):
    (tmp_path / "n.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError):
        read_ply(tmp_path / "n.ply")
    (tmp_path / "t.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                     b"property float z\nend_header\n1 2 3\n")
    with pytest.raises(ValueError):
        read_ply(tmp_path / "t.ply")
    with pytest.raises(ValueError):
        write_ply(tmp_path / "w.ply", torch.zeros(3, 2))


def test_open3d_reads_our_binary(tmp_path):
    o3d = pytest.importorskip("open3d")
    P = torch.rand(100, 3, dtype=torch.float64)
    write_ply(tmp_path / "o.ply", P, normals=torch.nn.functional.normalize(P, dim=-1))
    pc = o3d.io.read_point_cloud(str(tmp_path / "o.ply"))
    np.testing.assert_allclose(np.asarray(pc.points), P.numpy(), atol=1e-12)


@pytest.mark.realdata
def test_stanford_bunny_crlf_scan():
    p = data_path("stanford_bunny_range_scans", "data", "bun045.ply")
    d = read_ply(p)
    assert d.points.shape == (40097, 3) and d.faces is None
    torch.testing.assert_close(d.points[0], torch.tensor([-0.0075, 0.0342091, 0.0703997]))
    z = read_ply(data_path("stanford_bunny_range_scans", "reconstruction", "bun_zipper.ply"))
    assert z.points.shape == (35947, 3) and z.faces.shape == (69451, 3) and int(z.faces.max()) < 35947
