"""Point cloud containers and helpers: padding a list of clouds, input cleaning, voxel-grid downsampling.

Batched clouds are padded tensors ``points (*B, N, 3)`` with a boolean ``mask (*B, N)`` (False marks padding;
padded rows may hold anything, NaN included), as everywhere in torch3dv (README, "Conventions").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_points, check_tensor


class PaddedPoints(NamedTuple):
    """A batch of point clouds of different sizes.

    Attributes:
        points: (*B, N, 3) points, padding rows hold zeros (or whatever the producer put there).
        mask: (*B, N) bool, True for real points.
    """

    points: Tensor
    mask: Tensor


def pad_point_clouds(clouds: Sequence[Tensor], pad_value: float = 0.0) -> PaddedPoints:
    """Stacks clouds ``(N_i, 3)`` of different sizes into ``(B, max N_i, 3)`` plus a mask.

    Args:
        clouds: a non-empty sequence of (N_i, 3) float tensors on one device, one dtype.
        pad_value: value written into padding rows.

    Returns:
        :class:`PaddedPoints` with ``points (B, N, 3)`` and ``mask (B, N)``.

    Raises:
        ValueError: empty sequence, wrong shapes, mixed dtypes or devices.
    """
    if len(clouds) == 0:
        raise ValueError("pad_point_clouds needs at least one cloud")
    for i, c in enumerate(clouds):
        check_points(c, f"clouds[{i}]", 3)
        if c.ndim != 2:
            raise ValueError(f"clouds[{i}] must have shape (N, 3), got {tuple(c.shape)}")
        if c.dtype != clouds[0].dtype or c.device != clouds[0].device:
            raise ValueError("all clouds must share dtype and device")
    n = max(c.shape[0] for c in clouds)
    ref = clouds[0]
    pts = torch.full((len(clouds), n, 3), pad_value, dtype=ref.dtype, device=ref.device)
    mask = torch.zeros(len(clouds), n, dtype=torch.bool, device=ref.device)
    for i, c in enumerate(clouds):
        pts[i, : c.shape[0]] = c
        mask[i, : c.shape[0]] = True
    return PaddedPoints(pts, mask)


def unpad_point_clouds(points: Tensor, mask: Tensor) -> list[Tensor]:
    """Inverse of :func:`pad_point_clouds` for a flat batch: ``(B, N, 3)`` + mask -> list of ``(N_i, 3)``."""
    return [p[m] for p, m in zip(points.reshape(-1, *points.shape[-2:]), mask.reshape(-1, mask.shape[-1]))]


class CleanPoints(NamedTuple):
    """Validated cloud: ``points (*B, N, 3)`` with unusable rows zeroed, ``mask (*B, N)`` of usable rows,
    ``finite (*B,)`` False where an unmasked row held NaN/inf (that problem must report failure)."""

    points: Tensor
    mask: Tensor
    finite: Tensor


def clean_points(points: Tensor, mask: Tensor | None, name: str = "points") -> CleanPoints:
    """Checks a padded cloud and folds NaN/inf rows into the mask (flagging the problem as not finite).

    Args:
        points: (*B, N, 3) float tensor.
        mask: optional (*B, N) bool.
        name: argument name for error messages.

    Raises:
        ValueError: wrong shape, integer dtype, bad mask.
    """
    check_points(points, name, 3)
    lead = points.shape[:-1]
    if mask is None:
        mask = torch.ones(lead, dtype=torch.bool, device=points.device)
    else:
        check_tensor(mask, f"{name} mask")
        if mask.shape != lead:
            raise ValueError(f"mask of {name} must have shape (*B, N) = {tuple(lead)}, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask of {name} must be a bool tensor, got {mask.dtype}")
        if mask.device != points.device:
            raise ValueError(f"mask of {name} is on {mask.device} but {name} is on {points.device}")
    ok = torch.isfinite(points).all(-1)
    finite = ~(mask & ~ok).any(-1)
    keep = mask & ok
    pts = torch.where(keep[..., None], points, torch.zeros((), dtype=points.dtype, device=points.device))
    return CleanPoints(pts, keep, finite)


def masked_mean(points: Tensor, mask: Tensor) -> Tensor:
    """Mean of the masked rows of ``points (*B, N, d)`` -> ``(*B, d)`` (zeros for an empty cloud)."""
    w = mask.to(points.dtype)
    return (w[..., None] * points).sum(-2) / w.sum(-1, keepdim=True).clamp_min(1)


def voxel_downsample(points: Tensor, voxel_size: float, mask: Tensor | None = None) -> PaddedPoints:
    """Voxel-grid downsampling: one point per occupied voxel, the mean of the points inside it.

    Voxels are axis-aligned cubes of side ``voxel_size`` anchored at the origin of the points' frame (so the
    result does not depend on the other clouds of the batch). Works on a batch at once without a Python loop
    over clouds.

    Args:
        points: (*B, N, 3) points, metres.
        voxel_size: cube side, metres (> 0).
        mask: optional (*B, N) bool; False rows (and NaN rows) are ignored.

    Returns:
        :class:`PaddedPoints` ``(*B, M, 3)`` / ``(*B, M)`` where M is the largest number of occupied voxels
        in the batch; points of a cloud are ordered by voxel key. Differentiable w.r.t. ``points`` (means).

    Raises:
        ValueError: bad shapes or non-positive voxel size.
    """
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    cl = clean_points(points, mask)
    lead = points.shape[:-2]
    n = points.shape[-2]
    P = points.reshape(-1, n, 3)
    m = cl.mask.reshape(-1, n)
    B = P.shape[0]
    dev = points.device
    if B == 0 or n == 0:
        return PaddedPoints(points.new_zeros(*lead, 0, 3), torch.zeros(*lead, 0, dtype=torch.bool, device=dev))
    b_idx, p_idx = torch.nonzero(m, as_tuple=True)
    x = P[b_idx, p_idx]
    cell = torch.floor(x.detach() / voxel_size).long()
    cell = cell - cell.min(0).values if cell.numel() else cell
    dims = (cell.max(0).values + 1) if cell.numel() else torch.ones(3, dtype=torch.long, device=dev)
    key = ((b_idx * dims[0] + cell[:, 0]) * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    ukey, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    sums = torch.zeros(ukey.shape[0], 3, dtype=points.dtype, device=dev).index_add(0, inv, x)
    means = sums / counts[:, None].to(points.dtype)
    vb = ukey // (dims[0] * dims[1] * dims[2])  # batch of each voxel (keys are sorted by batch first)
    per = torch.bincount(vb, minlength=B)
    M = int(per.max()) if per.numel() else 0
    start = torch.cumsum(per, 0) - per
    slot = torch.arange(ukey.shape[0], device=dev) - start[vb]
    out = points.new_zeros(B, M, 3)
    out = out.index_put((vb, slot), means)
    om = torch.zeros(B, M, dtype=torch.bool, device=dev)
    om[vb, slot] = True
    return PaddedPoints(out.reshape(*lead, M, 3), om.reshape(*lead, M))
