"""Batched descriptor matching: mutual nearest neighbours with Lowe's ratio test, on padded features."""

from __future__ import annotations

import torch
from torch import Tensor


def match_nearest_neighbors(
    desc0: Tensor,
    desc1: Tensor,
    mask0: Tensor | None = None,
    mask1: Tensor | None = None,
    ratio: float | None = 0.8,
    mutual: bool = True,
    max_distance: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Nearest-neighbour matches from image 0 to image 1, for a batch of padded descriptor sets.

    Args:
        desc0, desc1: (B, N0, D), (B, N1, D) descriptors (L2 distances are used).
        mask0, mask1: (B, N0), (B, N1) bool, False for padding.
        ratio: keep a match when d(nearest) <= ratio * d(second nearest) in image 1, which needs at least
            two candidates (None: no ratio test).
        mutual: also require image 0's point to be the nearest neighbour of its match in image 1.
        max_distance: keep only matches with d(nearest) <= max_distance.

    Returns:
        (matches0 (B, N0) long index into image 1 or -1, scores0 (B, N0) in [0, 1]: 1 - distance ratio with
        the ratio test, else 1 - d / 2 for unit descriptors; 0 where unmatched).
    """
    if desc0.ndim != 3 or desc1.ndim != 3 or desc0.shape[0] != desc1.shape[0] or desc0.shape[2] != desc1.shape[2]:
        raise ValueError(f"desc0, desc1 must be (B, N0, D), (B, N1, D), got {tuple(desc0.shape)}, "
                         f"{tuple(desc1.shape)}")
    B, N0, _ = desc0.shape
    N1 = desc1.shape[1]
    dev = desc0.device
    m0 = torch.ones(B, N0, dtype=torch.bool, device=dev) if mask0 is None else mask0
    m1 = torch.ones(B, N1, dtype=torch.bool, device=dev) if mask1 is None else mask1
    if N0 == 0 or N1 == 0:
        return (torch.full((B, N0), -1, dtype=torch.long, device=dev), torch.zeros(B, N0, dtype=desc0.dtype,
                                                                                    device=dev))
    d = torch.cdist(desc0, desc1)
    inf = torch.tensor(torch.inf, dtype=d.dtype, device=dev)
    d = torch.where(m0[:, :, None] & m1[:, None, :], d, inf)
    k = min(2, N1)
    top = d.topk(k, dim=-1, largest=False)
    nn01 = top.indices[..., 0]
    d1 = top.values[..., 0]
    valid = m0 & torch.isfinite(d1)
    if ratio is not None:
        d2 = top.values[..., 1] if k == 2 else torch.full_like(d1, torch.inf)
        # the test needs a second candidate: a lone candidate (second distance inf) is refused (ratio 1);
        # a ratio of two zeros (duplicates) counts as 1 too
        r = torch.where(torch.isfinite(d2), d1 / d2.clamp_min(torch.finfo(d.dtype).tiny), torch.ones_like(d1))
        r = torch.where((d1 == 0) & (d2 == 0), torch.ones_like(r), r)
        valid = valid & (r <= ratio)
        score = 1 - r
    else:
        score = (1 - d1 / 2).clamp(0, 1)
    if mutual:
        nn10 = d.argmin(dim=1)  # (B, N1)
        back = nn10.gather(1, nn01)
        valid = valid & (back == torch.arange(N0, device=dev)[None])
    if max_distance is not None:
        valid = valid & (d1 <= max_distance)
    matches0 = torch.where(valid, nn01, torch.full_like(nn01, -1))
    scores0 = torch.where(valid, score, torch.zeros_like(score))
    return matches0, scores0
