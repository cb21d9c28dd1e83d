"""Input validation shared by every public function.

Two kinds of bad input are distinguished (see README, "Bad input"):

* *Caller errors* (wrong shapes, integer dtypes, tensors on different devices) raise ``ValueError`` with a
  message that names the argument and the expected shape.
* *Data problems inside a batch* (too few valid correspondences, NaN/inf values, degenerate geometry) never
  raise: the affected problem is computed on harmless stand-in values and reported with ``success=False``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(x: Tensor, name: str) -> None:
    check_tensor(x, name)
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a floating point tensor (float32 or float64), got {x.dtype}")


def check_shape(x: Tensor, name: str, tail: tuple[int | None, ...], spec: str) -> None:
    """Checks that ``x`` has at least ``len(tail)`` dims whose trailing sizes match ``tail`` (None = any).

    Args:
        x: the tensor.
        name: argument name used in the message.
        tail: expected trailing sizes.
        spec: human readable shape, e.g. ``"(*B, N, 2)"``.
    """
    check_tensor(x, name)
    if x.ndim < len(tail) or any(t is not None and s != t for s, t in zip(x.shape[x.ndim - len(tail):], tail)):
        raise ValueError(f"{name} must have shape {spec}, got {tuple(x.shape)}")


def check_points(x: Tensor, name: str, dim: int) -> None:
    """``x`` must be a float tensor of shape (*B, N, dim)."""
    check_shape(x, name, (None, dim), f"(*B, N, {dim})")
    check_float(x, name)


def check_same_device_dtype(named: dict[str, Tensor | None]) -> None:
    """All given tensors (None entries are skipped) must share device and, for floats, dtype."""
    items = [(k, v) for k, v in named.items() if v is not None]
    if not items:
        return
    k0, v0 = items[0]
    for k, v in items[1:]:
        if v.device != v0.device:
            raise ValueError(f"{k} is on {v.device} but {k0} is on {v0.device}; move them to the same device")
        if v.is_floating_point() and v0.is_floating_point() and v.dtype != v0.dtype:
            raise ValueError(f"{k} has dtype {v.dtype} but {k0} has dtype {v0.dtype}; use one dtype")


def check_matching_points(named: dict[str, Tensor], dims: dict[str, int]) -> None:
    """Checks correspondence tensors: each (*B, N, d) with identical *B and N."""
    for k, v in named.items():
        check_points(v, k, dims[k])
    check_same_device_dtype(dict(named))
    keys = list(named)
    ref = named[keys[0]].shape[:-1]
    for k in keys[1:]:
        if named[k].shape[:-1] != ref:
            raise ValueError(
                f"{k} has batch/point shape {tuple(named[k].shape[:-1])} but {keys[0]} has {tuple(ref)}; "
                "correspondences must have identical leading shapes (*B, N)"
            )


class Correspondences(NamedTuple):
    """Cleaned correspondences.

    Attributes:
        points: the input point tensors with masked-out or non-finite rows replaced by zeros.
        weights: per-correspondence weights (*B, N), zero where masked out or non-finite.
        finite: (*B,) bool, False where an unmasked correspondence or weight was NaN/inf.
    """

    points: tuple[Tensor, ...]
    weights: Tensor
    finite: Tensor


def prepare_correspondences(
    points: dict[str, Tensor],
    dims: dict[str, int],
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> Correspondences:
    """Validates correspondences and folds ``weights`` and ``mask`` into one weight tensor.

    Args:
        points: named tensors (*B, N, d_k) that correspond row by row.
        dims: the expected last dimension of each.
        weights: optional non-negative weights (*B, N).
        mask: optional bool mask (*B, N); False rows are padding and are ignored entirely (they may hold
            any value, NaN included).

    Returns:
        ``Correspondences`` with zeros in ignored rows, so that NaN padding never reaches arithmetic.
    """
    check_matching_points(points, dims)
    first = next(iter(points.values()))
    lead = first.shape[:-1]
    w = torch.ones(lead, dtype=first.dtype, device=first.device)
    if mask is not None:
        check_tensor(mask, "mask")
        if mask.shape != lead:
            raise ValueError(f"mask must have shape (*B, N) = {tuple(lead)}, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        if mask.device != first.device:
            raise ValueError(f"mask is on {mask.device} but points are on {first.device}")
        w = w * mask.to(w.dtype)
    if weights is not None:
        check_tensor(weights, "weights")
        if weights.shape != lead:
            raise ValueError(f"weights must have shape (*B, N) = {tuple(lead)}, got {tuple(weights.shape)}")
        check_float(weights, "weights")
        check_same_device_dtype({"weights": weights, "points": first})
        w = w * weights
    # fast path: every coordinate and weight finite (one reduction per tensor, one sync): no per-row test needed
    if bool(torch.stack([torch.isfinite(t).all() for t in (w, *points.values())]).all()):
        ones = torch.ones(lead[:-1], dtype=torch.bool, device=w.device)
        if mask is None and weights is None:  # nothing to clean
            return Correspondences(tuple(points.values()), w, ones)
        used = (w != 0)[..., None]
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        return Correspondences(tuple(torch.where(used, v, zero.to(v.dtype)) for v in points.values()), w, ones)
    ok_rows = torch.isfinite(w)
    for v in points.values():
        ok_rows = ok_rows & torch.isfinite(v).all(-1)
    used = w != 0
    # a non-finite row that is actually used poisons only its own problem
    finite = ~(used & ~ok_rows).any(-1)
    keep = ok_rows & used
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    w = torch.where(keep, w, zero)
    cleaned = tuple(torch.where(keep[..., None], v, zero.to(v.dtype)) for v in points.values())
    return Correspondences(cleaned, w, finite)


def check_intrinsics(K: Tensor, name: str = "K") -> None:
    """``K`` must be a float (..., 3, 3) tensor."""
    check_shape(K, name, (3, 3), "(*B, 3, 3)")
    check_float(K, name)


def finite_problems(x: Tensor, event_dims: int) -> Tensor:
    """True per problem where all entries in the last ``event_dims`` dims are finite."""
    f = torch.isfinite(x)
    return f.flatten(-event_dims).all(-1) if event_dims > 0 else f
