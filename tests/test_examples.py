"""The examples run on image files (their no-argument mode runs on rendered data in the README quickstart)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torch3dv.testing.render import render_pair

cv2 = pytest.importorskip("cv2")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _write_pair(tmp_path: Path):
    s = render_pair(batch=1, image_size=(320, 240), seed=0)
    for i, im in enumerate((s.image0, s.image1)):
        rgb = (im[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"im{i}.png"), rgb[..., ::-1])
    np.save(tmp_path / "d0.npy", s.depth0[0].numpy())
    return s


def _k(K: torch.Tensor) -> list[str]:
    return [f"{float(v):.9g}" for v in (K[0, 0, 0], K[0, 1, 1], K[0, 0, 2], K[0, 1, 2])]


def test_find_pose_on_files_recovers_the_metric_pose(tmp_path):
    s = _write_pair(tmp_path)
    cmd = [sys.executable, str(EXAMPLES / "find_pose.py"), "--image0", "im0.png", "--image1", "im1.png",
           "--K0", *_k(s.K0), "--K1", *_k(s.K1), "--depth0", "d0.npy", "--solver", "pnp", "--matcher", "sift"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "success=True" in out.stdout
    t = np.array([float(v) for v in re.search(r"t = \[([^\]]*)\] \(metres\)", out.stdout).group(1).split()])
    assert np.linalg.norm(t - s.t[0].numpy()) < 0.03  # metres; the baseline is ~0.7 m
    assert (tmp_path / "pose.png").exists()
    # a solver that needs depth fails with a clear message when it is missing
    bad = subprocess.run(cmd[:cmd.index("--depth0")] + ["--solver", "procrustes", "--matcher", "sift"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--depth0" in bad.stderr


def test_match_views_on_files(tmp_path):
    _write_pair(tmp_path)
    cmd = [sys.executable, str(EXAMPLES / "match_views.py"), "--image0", "im0.png", "--image1", "im1.png",
           "--matcher", "sift", "--out", "m.png"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    n = int(re.search(r"sift: (\d+) matches", out.stdout).group(1))
    assert n >= 50 and (tmp_path / "m.png").exists()
