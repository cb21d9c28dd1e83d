"""Shared fixtures: dtypes, devices, and the location of the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA_ROOT = Path(os.environ.get("TORCH3DV_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def data_path(*parts: str) -> Path:
    """Path inside ../shared/data; skips the calling test when it does not exist."""
    p = DATA_ROOT.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
