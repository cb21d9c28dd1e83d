"""Correspondence-free initial alignment by principal axes (centroids + PCA frames).

Each cloud gets a frame: its centroid and the eigenvectors of its covariance. Aligning the frames aligns the
clouds up to the sign of each axis; the four proper sign choices (det +1) are all tried and the one with the
smallest nearest-neighbour RMSE (on a subsample of the source, matches capped at a distance) is kept.

This is much weaker than feature-based global registration: it needs the two clouds to cover the same part of
the object (the centroid and the axes of a partial scan move with the overlap), and the axes are undefined
when two covariance eigenvalues are (nearly) equal (a sphere, a cube, a disc). Use it to initialise ICP on
complete, anisotropic shapes; use :func:`torch3dv.registration.global_registration` otherwise.
No gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.registration.neighbors import NeighborIndex
from torch3dv.registration.pointcloud import clean_points, masked_mean

_SIGNS = ((1, 1, 1), (-1, -1, 1), (-1, 1, -1), (1, -1, -1))


class PrincipalAxesResult(NamedTuple):
    """``target_from_source`` guess: R (*B, 3, 3), t (*B, 3); rmse (*B,) nearest-neighbour RMSE of the chosen
    candidate (metres, on the subsample, capped matches); success (*B,) False for empty/NaN clouds or axes
    that are undetermined (repeated covariance eigenvalues)."""

    R: Tensor
    t: Tensor
    rmse: Tensor
    success: Tensor


def _frame(P: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mu = masked_mean(P, m)
    w = m.to(P.dtype)
    D = (P - mu[:, None]) * w[..., None]
    C = D.transpose(1, 2) @ D / w.sum(-1).clamp_min(1)[:, None, None]
    ev, V = torch.linalg.eigh(C)
    V = V * torch.where(torch.linalg.det(V) < 0, -1.0, 1.0).to(P.dtype)[:, None, None]
    return mu, V, ev


def align_principal_axes(
    source: Tensor,
    target: Tensor,
    source_mask: Tensor | None = None,
    target_mask: Tensor | None = None,
    num_samples: int = 2000,
    max_distance: float | None = None,
) -> PrincipalAxesResult:
    """Initial ``target_from_source`` from centroids and principal axes (weak; see the module docstring).

    Args:
        source: (*B, N, 3) points, metres.
        target: (*B, M, 3) points, metres.
        source_mask, target_mask: optional bool masks.
        num_samples: source points used to score the four sign candidates.
        max_distance: cap (metres) on a match distance in the score (default: 10% of the target extent).

    Returns:
        :class:`PrincipalAxesResult`.
    """
    cs = clean_points(source, source_mask, "source")
    ct = clean_points(target, target_mask, "target")
    if source.shape[:-2] != target.shape[:-2]:
        raise ValueError("source and target must share the batch shape *B")
    lead = source.shape[:-2]
    N, M = source.shape[-2], target.shape[-2]
    with torch.no_grad():
        S, sm = cs.points.reshape(-1, N, 3), cs.mask.reshape(-1, N)
        T, tm = ct.points.reshape(-1, M, 3), ct.mask.reshape(-1, M)
        B, dtype, dev = S.shape[0], S.dtype, S.device
        mus, Vs, evs = _frame(S, sm)
        mut, Vt, evt = _frame(T, tm)
        gen = torch.Generator(device="cpu").manual_seed(0)
        sel = torch.randperm(N, generator=gen)[:num_samples].to(dev) if N > num_samples else torch.arange(N, device=dev)
        Ss, sms = S[:, sel], sm[:, sel]
        ext = (torch.where(tm[..., None], T, mut[:, None]).amax(1) - torch.where(tm[..., None], T, mut[:, None]).amin(1))
        cap = max_distance if max_distance is not None else None
        capt = (0.1 * ext.norm(dim=-1)).clamp_min(torch.finfo(dtype).tiny) if cap is None else None
        signs = torch.tensor(_SIGNS, dtype=dtype, device=dev)  # (4, 3)
        Rc = (Vt[:, None] * signs[None, :, None, :]) @ Vs.transpose(1, 2)[:, None]  # (B, 4, 3, 3)
        tc = mut[:, None] - (Rc @ mus[:, None, :, None])[..., 0]
        Xc = Ss[:, None] @ Rc.transpose(-1, -2) + tc[:, :, None]  # (B, 4, n, 3)
        n = Xc.shape[2]
        index = NeighborIndex(T[:, None].expand(B, 4, M, 3).reshape(B * 4, M, 3),
                              tm[:, None].expand(B, 4, M).reshape(B * 4, M))
        nb = index.knn(Xc.reshape(B * 4, n, 3), 1, sms[:, None].expand(B, 4, n).reshape(B * 4, n))
        d = nb.distances[..., 0].reshape(B, 4, n)
        capv = torch.full((B,), float(cap), dtype=dtype, device=dev) if cap is not None else capt
        d = torch.minimum(d, capv[:, None, None])
        w = sms[:, None].to(dtype)
        rmse = torch.sqrt((d * d * w).sum(-1) / w.sum(-1).clamp_min(1))  # (B, 4)
        best = rmse.argmin(-1)
        R = Rc[torch.arange(B, device=dev), best]
        t = tc[torch.arange(B, device=dev), best]
        eps = 1e-6

        def distinct(ev):
            top = ev[:, -1].clamp_min(torch.finfo(dtype).tiny)
            return ((ev[:, 1] - ev[:, 0]) / top > eps) & ((ev[:, 2] - ev[:, 1]) / top > eps)

        ok = (cs.finite & ct.finite).reshape(-1) & (sm.sum(-1) >= 3) & (tm.sum(-1) >= 3) & distinct(evs) & distinct(evt)
        eye = torch.eye(3, dtype=dtype, device=dev).expand(B, 3, 3)
        R = torch.where(ok[:, None, None], R, eye)
        t = torch.where(ok[:, None], t, torch.zeros_like(t))
        r = torch.where(ok, rmse[torch.arange(B, device=dev), best], torch.zeros_like(best, dtype=dtype))
    return PrincipalAxesResult(R.reshape(*lead, 3, 3), t.reshape(*lead, 3), r.reshape(lead), ok.reshape(lead))
