"""Minimal-sample generation for B problems x H hypotheses at once.

Randomness is counter-based: every random number is a hash of (problem seed, round, hypothesis, draw). A
problem's hypotheses therefore depend only on its own seed, never on which other problems share the batch or
on how the batch is chunked, which makes batched results reproducible per problem.

Subsets are drawn uniformly without replacement with Robert Floyd's algorithm, vectorised over problems and
hypotheses (a loop over the k draws only).
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit avalanche hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return x


def _hypothesis_keys(seed: Tensor, round_: int, hyp: Tensor) -> Tensor:
    """32-bit keys (M, H) of (problem seed, round, hypothesis); each draw then costs one more mix."""
    h = _mix32((seed[:, None] & _MASK32) * 0x27D4EB2D + 0x165667B1)
    h = _mix32(h ^ (round_ * 0x3C6EF372 & _MASK32))
    return _mix32(h ^ (hyp[None, :] if hyp.ndim == 1 else hyp))


def _draw(keys: Tensor, draw: int) -> Tensor:
    """Uniforms in [0, 1) (float64 with 32 random bits) for one draw of every key."""
    return _mix32(keys ^ ((draw + 1) * 0x61C88647 & _MASK32)).to(torch.float64) / 4294967296.0


def uniform_hash(seed: Tensor, round_: int, hyp: Tensor, draw: int) -> Tensor:
    """Uniform numbers in [0, 1) from counters.

    Args:
        seed: per-problem seeds (M,) int64.
        round_: round number.
        hyp: hypothesis indices, (H,) shared by all problems or (M, H) per problem, int64.
        draw: which draw within a hypothesis.

    Returns:
        (M, H) float64 uniforms (53-bit precision is not needed; 32 bits are used).
    """
    return _draw(_hypothesis_keys(seed, round_, hyp), draw)


def sample_subsets(
    pool: Tensor, k: int, num_hypotheses: int, seed: Tensor, round_: int, first: Tensor | None = None
) -> Tensor:
    """Uniform k-subsets of {0, ..., pool-1} per problem (Floyd's algorithm).

    Args:
        pool: (M,) int64 pool size per problem; problems with pool < k get clamped draws (callers mark them
            as failures).
        k: subset size.
        num_hypotheses: H subsets per problem.
        seed: (M,) int64 per-problem seeds.
        round_: round counter, so that each round draws new subsets.
        first: optional (M,) int64 index of each problem's first hypothesis: subset ``h`` of problem ``i`` is
            then its hypothesis number ``first[i] + h`` (a per-problem counter, so rounds of any size draw a
            problem's hypotheses in one fixed sequence).

    Returns:
        (M, H, k) int64 ranks in [0, pool).
    """
    M = pool.shape[0]
    device = pool.device
    hyp = torch.arange(num_hypotheses, device=device, dtype=torch.int64)
    if first is not None:
        hyp = first[:, None] + hyp
    n = pool.clamp_min(k)[:, None]  # (M, 1)
    out = torch.empty(M, num_hypotheses, k, dtype=torch.int64, device=device)
    keys = _hypothesis_keys(seed.to(device), round_, hyp)
    for j in range(k):
        i = n - k + j  # (M, 1): draw from [0, i]
        u = _draw(keys, j)
        r = torch.minimum((u * (i + 1).double()).long(), i)
        if j > 0:
            if j <= 8:  # written out: any() over a short last axis is slow on CPU
                dup = out[..., 0] == r
                for q in range(1, j):
                    dup |= out[..., q] == r
            else:
                dup = (out[..., :j] == r[..., None]).any(-1)
            r = torch.where(dup, i.expand_as(r), r)
        out[..., j] = r
    return torch.minimum(out, (pool.clamp_min(1) - 1)[:, None, None])


def valid_first_order(mask: Tensor, scores: Tensor | None = None) -> Tensor:
    """Permutation (M, N) that lists valid points first (by descending ``scores`` when given, else by index).

    Args:
        mask: (M, N) bool validity.
        scores: optional (M, N) match qualities (higher is better) for PROSAC-style sampling.
    """
    if scores is None:
        key = (~mask).to(torch.int64)
        return torch.argsort(key, dim=-1, stable=True)
    key = torch.where(mask, -scores.double(), torch.full_like(scores, float("inf"), dtype=torch.float64))
    return torch.argsort(key, dim=-1, stable=True)


def progressive_pool(n_valid: Tensor, k: int, hypotheses_done: Tensor, growth: int) -> Tensor:
    """PROSAC-style pool size: grows linearly from the k best-ranked points to all valid points.

    After ``growth`` hypotheses the pool is every valid point and sampling is uniform. This is a simplified
    schedule (linear instead of PROSAC's T_n recursion) with the same intent: try the most confident
    correspondences first, then fall back to plain RANSAC.

    Args:
        n_valid: (M,) int64 valid points per problem.
        hypotheses_done: (M,) int64 hypotheses drawn so far.
        growth: number of hypotheses over which the pool grows (0 disables: full pool).
    """
    if growth <= 0:
        return n_valid
    frac = (hypotheses_done.double() + 1.0) / float(growth)
    extra = ((n_valid - k).clamp_min(0).double() * frac.clamp(max=1.0)).ceil().long()
    return torch.minimum(n_valid, k + extra)
