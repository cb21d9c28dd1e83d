"""Typed, batched results of feature extraction and matching (padded tensors plus masks).

Pixels follow the README conventions: the centre of the top-left pixel is (0, 0). Every wrapper converts its
backend's keypoints to that frame exactly once (kornia's DISK, ALIKED and SIFT already use it; the frames of LoFTR
and EfficientLoFTR are shifted by half a pixel and are converted in :mod:`torch3dv.features.matchers` and
:mod:`torch3dv.features.efficientloftr`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LocalFeatures(NamedTuple):
    """Keypoints and descriptors of a batch of images, padded to the largest count.

    Attributes:
        keypoints: (B, N, 2) pixels (x = column, y = row); zeros in padding.
        descriptors: (B, N, D); zeros in padding.
        scores: (B, N) detection scores (backend-specific scale, higher is better); zeros in padding.
        mask: (B, N) bool, False for padding.
        image_size: (B, 2) long, (width, height) of the images the keypoints live in.
    """

    keypoints: Tensor
    descriptors: Tensor
    scores: Tensor
    mask: Tensor
    image_size: Tensor


class Matches(NamedTuple):
    """Correspondences between image 0 and image 1 of each pair, padded; feed them to ``torch3dv.estimate_*``
    as ``x1=kpts0, x2=kpts1, mask=mask, scores=scores``.

    Attributes:
        kpts0, kpts1: (B, M, 2) matched pixels in image 0 and image 1; zeros in padding (finite).
        scores: (B, M) match confidence in [0, 1], higher is better; sorted descending per pair; 0 in padding.
        mask: (B, M) bool, False for padding. M >= 1 even when no pair has a match.
        idx0, idx1: (B, M) long indices of the matched keypoints in each image's :class:`LocalFeatures`
            (-1 in padding, and everywhere for dense matchers, which have no keypoint lists).
        num_matches: (B,) long, the number of True entries of ``mask``.
    """

    kpts0: Tensor
    kpts1: Tensor
    scores: Tensor
    mask: Tensor
    idx0: Tensor
    idx1: Tensor
    num_matches: Tensor


def pad_features(items: list[tuple[Tensor, Tensor, Tensor]], image_size: tuple[int, int], desc_dim: int,
                 dtype: torch.dtype, device: torch.device) -> LocalFeatures:
    """Packs per-image (keypoints (n, 2), descriptors (n, D), scores (n,)) into :class:`LocalFeatures`."""
    B = len(items)
    N = max([1] + [int(k.shape[0]) for k, _, _ in items])
    kp = torch.zeros(B, N, 2, dtype=dtype, device=device)
    de = torch.zeros(B, N, desc_dim, dtype=dtype, device=device)
    sc = torch.zeros(B, N, dtype=dtype, device=device)
    mk = torch.zeros(B, N, dtype=torch.bool, device=device)
    for b, (k, d, s) in enumerate(items):
        n = int(k.shape[0])
        kp[b, :n] = k.to(dtype)
        de[b, :n] = d.to(dtype)
        sc[b, :n] = s.to(dtype)
        mk[b, :n] = True
    size = torch.tensor(image_size, dtype=torch.long, device=device).expand(B, 2).clone()
    return LocalFeatures(kp, de, sc, mk, size)


def pack_matches(kpts0: list[Tensor], kpts1: list[Tensor], scores: list[Tensor], idx0: list[Tensor] | None,
                 idx1: list[Tensor] | None, dtype: torch.dtype, device: torch.device,
                 max_matches: int | None = None) -> Matches:
    """Packs per-pair matched points (m_b, 2) and scores (m_b,) into padded :class:`Matches`, sorted by score
    (descending) and truncated to ``max_matches`` per pair when given."""
    B = len(kpts0)
    rows = []
    for b in range(B):
        order = torch.argsort(scores[b], descending=True, stable=True)
        if max_matches is not None:
            order = order[:max_matches]
        rows.append(order)
    M = max([1] + [int(r.numel()) for r in rows])
    k0 = torch.zeros(B, M, 2, dtype=dtype, device=device)
    k1 = torch.zeros(B, M, 2, dtype=dtype, device=device)
    sc = torch.zeros(B, M, dtype=dtype, device=device)
    mk = torch.zeros(B, M, dtype=torch.bool, device=device)
    i0 = torch.full((B, M), -1, dtype=torch.long, device=device)
    i1 = torch.full((B, M), -1, dtype=torch.long, device=device)
    for b, order in enumerate(rows):
        m = int(order.numel())
        k0[b, :m] = kpts0[b][order].to(dtype)
        k1[b, :m] = kpts1[b][order].to(dtype)
        sc[b, :m] = scores[b][order].to(dtype)
        mk[b, :m] = True
        if idx0 is not None and idx1 is not None:
            i0[b, :m] = idx0[b][order]
            i1[b, :m] = idx1[b][order]
    return Matches(k0, k1, sc, mk, i0, i1, mk.sum(-1))
