"""FPFH point features (Rusu et al., ICRA 2009) and mutual-nearest-neighbour feature matching, batched.

FPFH: for a point p with normal n and a neighbour q with normal m (within ``radius``), the Darboux frame
``u = n, v = (q - p) x u / |.|, w = u x v`` gives three angular features: ``alpha = atan2(w . m, u . m)``,
``phi = v . m`` and ``theta = u . (q - p) / |q - p|``, with the roles of p and q swapped when that makes the
angle between the source normal and the connecting line smaller (so the feature does not depend on which point
is called the source). Each feature is binned into 11 bins; the simplified histogram SPFH(p) concatenates the
three 11-bin histograms, each normalised to sum 100. The fast histogram is

    FPFH(p) = SPFH(p) + (1 / k) sum_q SPFH(q) / |q - p|

re-normalised per 11-bin block to sum 100, so the descriptor has 33 entries. Features are invariant to rigid
motions as long as the normals are oriented consistently (e.g. towards each scan's sensor). No gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.registration.neighbors import NeighborIndex
from torch3dv.registration.pointcloud import clean_points

NUM_BINS = 11


class FeatureMatches(NamedTuple):
    """Source-to-target feature matches.

    Attributes:
        indices: (*B, N) target row matched to each source row (0 where not valid).
        valid: (*B, N) bool, True for a (mutual, if requested) nearest neighbour.
        distances: (*B, N) feature-space Euclidean distances (+inf where not valid).
    """

    indices: Tensor
    valid: Tensor
    distances: Tensor


def _pair_features(p: Tensor, n: Tensor, q: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Darboux-frame features of (p, n) -> (q, m); all (..., 3). Returns alpha, phi, theta, ok."""
    dp = q - p
    dist = dp.norm(dim=-1)
    inv = 1.0 / dist.clamp_min(torch.finfo(p.dtype).tiny)
    a1 = (n * dp).sum(-1) * inv
    a2 = (m * dp).sum(-1) * inv
    swap = a1.abs().clamp(max=1).acos() > a2.abs().clamp(max=1).acos()
    u = torch.where(swap[..., None], m, n)
    other = torch.where(swap[..., None], n, m)
    dp = torch.where(swap[..., None], -dp, dp)
    theta = torch.where(swap, -a2, a1)
    v = torch.cross(dp, u, dim=-1)
    vn = v.norm(dim=-1)
    v = v / vn.clamp_min(torch.finfo(p.dtype).tiny)[..., None]
    w = torch.cross(u, v, dim=-1)
    phi = (v * other).sum(-1)
    alpha = torch.atan2((w * other).sum(-1), (u * other).sum(-1))
    ok = (dist > 0) & (vn > 0)
    return alpha, phi, theta, ok


def _hist(alpha: Tensor, phi: Tensor, theta: Tensor, ok: Tensor) -> Tensor:
    """(B, N, K) features -> (B, N, 33) histograms, each block summing to 100 (0 without neighbours)."""
    nb = NUM_BINS

    def bins(x, lo, hi):
        return torch.floor(nb * (x - lo) / (hi - lo)).clamp(0, nb - 1).long()

    idx = torch.stack([bins(alpha, -math.pi, math.pi), bins(phi, -1.0, 1.0) + nb, bins(theta, -1.0, 1.0) + 2 * nb],
                      -1)  # (B, N, K, 3)
    w = ok.to(alpha.dtype)[..., None].expand_as(idx.to(alpha.dtype))
    H = torch.zeros(*alpha.shape[:-1], 3 * nb, dtype=alpha.dtype, device=alpha.device)
    H.scatter_add_(-1, idx.reshape(*alpha.shape[:-1], -1), w.reshape(*alpha.shape[:-1], -1))
    cnt = ok.sum(-1, keepdim=True).to(alpha.dtype)
    return H * (100.0 / cnt.clamp_min(1))


def fpfh(
    points: Tensor,
    normals: Tensor,
    radius: float,
    mask: Tensor | None = None,
    max_neighbors: int = 100,
    index: NeighborIndex | None = None,
) -> Tensor:
    """Fast point feature histograms (33-D), batched.

    Args:
        points: (*B, N, 3) points, metres.
        normals: (*B, N, 3) unit normals, consistently oriented (e.g. :func:`estimate_normals`).
        radius: neighbourhood radius, metres (typically 5x the voxel size).
        mask: optional (*B, N) bool.
        max_neighbors: at most this many (closest) neighbours per point.
        index: optional prebuilt :class:`NeighborIndex` over ``points``.

    Returns:
        (*B, N, 33) descriptors (zeros for masked points and points without neighbours). No gradient.
    """
    cl = clean_points(points, mask)
    if normals.shape != points.shape:
        raise ValueError(f"normals must have the shape of points {tuple(points.shape)}, got {tuple(normals.shape)}")
    lead, N = points.shape[:-2], points.shape[-2]
    with torch.no_grad():
        P = cl.points.reshape(-1, N, 3)
        Nn = torch.where(cl.mask[..., None], normals, torch.zeros_like(normals)).reshape(-1, N, 3)
        m = cl.mask.reshape(-1, N)
        B = P.shape[0]
        idx = index if index is not None else NeighborIndex(cl.points, cl.mask)
        nb = idx.knn(cl.points, max_neighbors + 1, cl.mask, max_distance=radius)
        I, V, D = nb.indices.reshape(B, N, -1), nb.valid.reshape(B, N, -1), nb.distances.reshape(B, N, -1)
        K = I.shape[-1]
        flat = I.reshape(B, -1, 1)
        Q = torch.gather(P, 1, flat.expand(-1, -1, 3)).reshape(B, N, K, 3)
        Mq = torch.gather(Nn, 1, flat.expand(-1, -1, 3)).reshape(B, N, K, 3)
        self_ = I == torch.arange(N, device=P.device)[None, :, None]
        V = V & ~self_ & (D > 0)
        alpha, phi, theta, ok = _pair_features(P[:, :, None].expand_as(Q), Nn[:, :, None].expand_as(Q), Q, Mq)
        ok = ok & V
        spfh = _hist(alpha, phi, theta, ok)  # (B, N, 33)
        wgt = torch.where(ok, 1.0 / D.clamp_min(torch.finfo(P.dtype).tiny), torch.zeros_like(D))
        nbh = torch.gather(spfh, 1, I.reshape(B, -1, 1).expand(-1, -1, 3 * NUM_BINS)).reshape(B, N, K, -1)
        cnt = ok.sum(-1, keepdim=True).clamp_min(1).to(P.dtype)
        F = spfh + (wgt[..., None] * nbh).sum(2) / cnt
        blocks = F.reshape(B, N, 3, NUM_BINS)
        s = blocks.sum(-1, keepdim=True)
        F = (blocks * (100.0 / s.clamp_min(torch.finfo(P.dtype).tiny))).reshape(B, N, -1)
        F = torch.where((m & (ok.sum(-1) > 0))[..., None], F, torch.zeros_like(F))
    return F.reshape(*lead, N, 3 * NUM_BINS)


def match_features(
    source_features: Tensor,
    target_features: Tensor,
    source_mask: Tensor | None = None,
    target_mask: Tensor | None = None,
    mutual: bool = True,
    chunk_elements: int = 1 << 22,
) -> FeatureMatches:
    """Nearest-neighbour matching in feature space, optionally keeping only mutual nearest neighbours.

    Args:
        source_features: (*B, N, F) descriptors.
        target_features: (*B, M, F) descriptors.
        source_mask, target_mask: optional bool masks (*B, N), (*B, M).
        mutual: keep a match only if the source row is also the target row's nearest neighbour.
        chunk_elements: memory bound on the distance block.

    Returns:
        :class:`FeatureMatches` (*B, N).
    """
    if source_features.shape[:-2] != target_features.shape[:-2] or \
            source_features.shape[-1] != target_features.shape[-1]:
        raise ValueError(f"features must be (*B, N, F) and (*B, M, F), got {tuple(source_features.shape)} and "
                         f"{tuple(target_features.shape)}")
    lead, N, M, Fd = source_features.shape[:-2], source_features.shape[-2], target_features.shape[-2], \
        source_features.shape[-1]
    dev, dtype = source_features.device, source_features.dtype
    S = source_features.detach().reshape(-1, N, Fd)
    T = target_features.detach().reshape(-1, M, Fd)
    B = S.shape[0]
    sm = torch.ones(B, N, dtype=torch.bool, device=dev) if source_mask is None else source_mask.reshape(B, N)
    tm = torch.ones(B, M, dtype=torch.bool, device=dev) if target_mask is None else target_mask.reshape(B, M)
    inf = torch.tensor(math.inf, dtype=dtype, device=dev)
    best_t = torch.full((B, N), math.inf, dtype=dtype, device=dev)
    arg_t = torch.zeros(B, N, dtype=torch.long, device=dev)
    best_s = torch.full((B, M), math.inf, dtype=dtype, device=dev)
    arg_s = torch.zeros(B, M, dtype=torch.long, device=dev)
    if N > 0 and M > 0:
        tn = (T * T).sum(-1)[:, None, :]
        step = max(1, chunk_elements // max(B * M, 1))
        for s in range(0, N, step):
            Sc = S[:, s:s + step]
            d2 = torch.baddbmm(tn, Sc, T.transpose(1, 2), alpha=-2.0) + (Sc * Sc).sum(-1, keepdim=True)
            d2 = d2.clamp_min(0)
            d2 = torch.where(sm[:, s:s + step, None] & tm[:, None, :], d2, inf)
            v, a = d2.min(-1)
            best_t[:, s:s + step], arg_t[:, s:s + step] = v, a
            vc, ac = d2.min(1)
            upd = vc < best_s
            best_s = torch.where(upd, vc, best_s)
            arg_s = torch.where(upd, ac + s, arg_s)
    valid = torch.isfinite(best_t) & sm
    if mutual:
        back = torch.gather(arg_s, 1, arg_t)
        valid = valid & (back == torch.arange(N, device=dev)[None])
    idx = torch.where(valid, arg_t, torch.zeros_like(arg_t))
    dist = torch.where(valid, best_t.sqrt(), inf)
    return FeatureMatches(idx.reshape(*lead, N), valid.reshape(*lead, N), dist.reshape(*lead, N))
