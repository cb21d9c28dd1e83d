"""Helpers shared by the lens distortion models (:mod:`~torch3dv.camera.radtan`, :mod:`~.fisheye`).

Holds the typed result of the iterative undistortion (``UndistortResult``), argument checks for distortion
coefficients, and the dtype-dependent tolerances of the Newton iterations.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import (
    check_float,
    check_intrinsics,
    check_points,
    check_same_device_dtype,
    check_tensor,
)


class UndistortResult(NamedTuple):
    """Result of an iterative undistortion called with ``return_converged=True``.

    Attributes:
        points: the undistorted output (*B, N, 2) (or unit rays (*B, N, 3) for bearings); finite wherever the
            input was finite, also where the iteration did not converge.
        converged: (*B, N) bool, True where the Newton iteration reached the tolerance on a valid branch
            of the model (NaN input or NaN coefficients give False).
    """

    points: Tensor
    converged: Tensor


def check_dist(dist: Tensor, name: str, sizes: tuple[int, ...], spec: str) -> None:
    """``dist`` must be a float tensor (*B, k) with k in ``sizes``."""
    check_tensor(dist, name)
    if dist.ndim < 1 or dist.shape[-1] not in sizes:
        raise ValueError(f"{name} must have shape {spec}, got {tuple(dist.shape)}")
    check_float(dist, name)


def check_batch_broadcast(
    points: Tensor, points_name: str, point_dims: int, **others: tuple[Tensor, int]
) -> None:
    """Checks that the batch dims of ``others`` broadcast with the batch dims of ``points``.

    Args:
        points: (*B, N, d) tensor.
        points_name: its name for messages.
        point_dims: number of trailing non-batch dims of ``points`` (2 for (N, d)).
        others: name -> (tensor, number of trailing non-batch dims), e.g. ``K=(K, 2)``, ``dist=(dist, 1)``.
    """
    b = points.shape[: points.ndim - point_dims]
    for name, (t, nd) in others.items():
        try:
            torch.broadcast_shapes(b, t.shape[: t.ndim - nd])
        except RuntimeError:
            raise ValueError(
                f"batch dims of {name} {tuple(t.shape[: t.ndim - nd])} do not broadcast with the batch dims "
                f"of {points_name} {tuple(b)}"
            ) from None


def check_points_camera(
    x: Tensor,
    x_name: str,
    x_dim: int,
    K: Tensor | None,
    dist: Tensor,
    dist_sizes: tuple[int, ...],
    dist_spec: str,
) -> None:
    """Validates points (*B, N, x_dim), optional intrinsics (*B, 3, 3) and coefficients (*B, k) together."""
    check_points(x, x_name, x_dim)
    check_dist(dist, "dist", dist_sizes, dist_spec)
    named = {x_name: x, "dist": dist}
    others = {"dist": (dist, 1)}
    if K is not None:
        check_intrinsics(K)
        named["K"] = K
        others["K"] = (K, 2)
    check_same_device_dtype(named)
    check_batch_broadcast(x, x_name, 2, **others)


def newton_stop_tolerance(dtype: torch.dtype) -> float:
    """Newton step size (relative to 1 + |x|) below which an iteration stops: 0.1 sqrt(eps).

    Newton converges quadratically, so when a step is this small the iterate is that close to the root and
    the one further Newton step that every solver takes at the end (the implicit-function-theorem step)
    leaves an error of about its square, below the rounding level. The same test on that last step decides
    the per-point ``converged`` flag.
    """
    return 0.1 * torch.finfo(dtype).eps ** 0.5


def split_nonfinite(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Replaces points (rows of the last dim) holding NaN/inf by zeros.

    Returns ``(clean, bad)`` with ``bad`` (..., N) bool, or ``(x, None)`` when every entry is finite (checked
    with one cheap reduction; the per-row masks are only built when needed). Computing on ``clean`` and
    restoring NaN with :func:`restore_nonfinite` keeps a bad point from poisoning gradients w.r.t. shared
    parameters (K, dist).
    """
    if bool(torch.isfinite(x.detach().sum())):
        return x, None
    bad = ~torch.isfinite(x).all(-1)
    return torch.where(bad[..., None], torch.zeros((), dtype=x.dtype, device=x.device), x), bad


def restore_nonfinite(out: Tensor, bad: Tensor | None) -> Tensor:
    """Sets the rows of ``out`` (..., N, d) where ``bad`` (..., N) is True to NaN (no gradient flows)."""
    if bad is None:
        return out
    return torch.where(bad[..., None], torch.full((), float("nan"), dtype=out.dtype, device=out.device), out)


def finish_undistort(
    out: Tensor, converged: Tensor | None, bad: Tensor | None, return_converged: bool
) -> Tensor | UndistortResult:
    """Restores NaN rows for non-finite inputs and packs the optional convergence flag."""
    out = restore_nonfinite(out, bad)
    if not return_converged:
        return out
    assert converged is not None
    return UndistortResult(out, converged if bad is None else converged & ~bad)
