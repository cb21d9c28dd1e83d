"""Cross-product matrices."""

from __future__ import annotations

import torch
from torch import Tensor


def skew(v: Tensor) -> Tensor:
    """Cross-product matrix [v]x with [v]x @ u = v x u.

    Args:
        v: vectors, shape (..., 3).

    Returns:
        (..., 3, 3) skew-symmetric matrices.
    """
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def unskew(S: Tensor) -> Tensor:
    """Inverse of :func:`skew` (uses the antisymmetric part): (..., 3, 3) -> (..., 3)."""
    return 0.5 * torch.stack(
        [S[..., 2, 1] - S[..., 1, 2], S[..., 0, 2] - S[..., 2, 0], S[..., 1, 0] - S[..., 0, 1]], dim=-1
    )
