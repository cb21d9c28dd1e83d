"""Kannala-Brandt fisheye distortion as in OpenCV's ``cv2.fisheye`` module: k1, k2, k3, k4.

A camera-frame point X = (X, Y, Z) (OpenCV axes, see the README's "Conventions") makes the angle
``theta = atan2(sqrt(X^2 + Y^2), Z)`` with the optical axis. The lens maps it to the distorted radius::

    theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)
    (x_d, y_d) = theta_d (X, Y) / sqrt(X^2 + Y^2)

and pixels are ``K @ (x_d, y_d, 1)``. For Z > 0 this is exactly ``cv2.fisheye.projectPoints`` (which uses
``atan(r)`` of the normalised radius); using ``atan2`` additionally keeps points at or beyond 90 degrees from
the axis (Z <= 0) meaningful, so lenses with more than 180 degrees field of view work. Normalised
*undistorted* coordinates (X/Z, Y/Z) only exist for theta < 90 degrees; use :func:`unproject_fisheye_bearing`
(unit rays) for wider lenses.

Near the optical axis the ratio ``theta / sqrt(X^2 + Y^2)`` and the inverse ratios ``tan(theta) / theta_d``
and ``sin(theta) / theta_d`` are 0/0 forms; they are evaluated there by their Taylor series (with the
double-``where`` trick for the unused branch), so values *and* gradients are finite and exact at the centre.

Undistortion solves ``theta_d(theta) = |x_d|`` for theta by batched, safeguarded Newton iterations started
at theta = theta_d (as OpenCV does): a bracket [lo, hi] around the first root on the increasing branch of
``theta_d(theta)`` is kept (starting from [0, pi]) and a Newton step that would leave it, or that starts
beyond a fold (theta_d' <= 0), is replaced by bisection. Iterations stop once every step is below
``0.1 sqrt(eps)``. Gradients (implicit function theorem): the
iterations run under ``torch.no_grad``; one Newton step with gradients is then taken from the detached root::

    theta = theta* - (theta_d(theta*; k) - |x_d|) / theta_d'(theta*)      (theta_d' detached)

which leaves the value unchanged at convergence and yields ``dtheta/d|x_d| = 1 / theta_d'`` and
``dtheta/dk = -(d theta_d/dk) / theta_d'``. NaN-free input never produces NaN/inf; NaN input gives NaN only
in the affected points: a non-finite input point is replaced by zeros internally and its output row set to
NaN afterwards, so it never poisons the gradient of shared K or coefficients.
``return_converged=True`` reports per point whether the root was found on the increasing branch of
``theta_d(theta)`` (and below 90 degrees for normalised outputs).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from torch3dv.camera.distortion_common import (
    UndistortResult,
    check_points_camera,
    finish_undistort,
    newton_stop_tolerance,
    restore_nonfinite,
    split_nonfinite,
)
from torch3dv.camera.pinhole import normalized_to_pixels, pixels_to_normalized

__all__ = [
    "distort_fisheye",
    "undistort_fisheye",
    "project_fisheye",
    "unproject_fisheye",
    "unproject_fisheye_bearing",
    "undistort_pixels_fisheye",
]

_DIST_SPEC = "(*B, 4) = (k1, k2, k3, k4)"
_DIST_SIZES = (4,)
# below these squared ratios the 0/0 forms are evaluated by their Taylor series (truncation error ~1e-18)
_SMALL_FWD = 1e-6  # (rho / Z)^2
_SMALL_INV = 1e-10  # theta_d^2
# normalised outputs keep theta below 90 degrees by this margin (tan stays finite)
_HALF_PI_MARGIN = 1e-6


def _coeffs(dist: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(dist[..., i : i + 1] for i in range(4))  # type: ignore[return-value]


def _poly(t2: Tensor, c: tuple[Tensor, ...]) -> Tensor:
    """1 + k1 t^2 + k2 t^4 + k3 t^6 + k4 t^8 as a function of t^2."""
    k1, k2, k3, k4 = c
    return 1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))


def _dpoly(t2: Tensor, c: tuple[Tensor, ...]) -> Tensor:
    """d(theta * poly(theta^2)) / d theta = 1 + 3 k1 t^2 + 5 k2 t^4 + 7 k3 t^6 + 9 k4 t^8."""
    k1, k2, k3, k4 = c
    return 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))


def _distort_xyz(X: Tensor, Y: Tensor, Z: Tensor, c: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """Distorted normalised coordinates of camera-frame points; values and grads are safe on the axis."""
    rho2 = X * X + Y * Y
    with torch.no_grad():
        small = (Z > 0) & (rho2 < _SMALL_FWD * Z * Z)
    one = torch.ones((), dtype=X.dtype, device=X.device)
    # small branch: theta / rho = atan(u) / (u Z) with u = rho / Z, by its series
    z_s = torch.where(small, Z, one)
    u2 = torch.where(small, rho2, torch.zeros_like(rho2)) / (z_s * z_s)
    ratio_small = (1 - u2 * (1.0 / 3 - u2 / 5)) / z_s
    # general branch: atan2 (valid for any Z, also behind the camera); rho is floored so that theta / rho and
    # its derivative stay finite on the backward axis X = Y = 0, Z <= 0
    rho_min = torch.finfo(X.dtype).tiny ** 0.375
    rho = torch.sqrt(torch.where(small, one, torch.clamp(rho2, min=rho_min * rho_min)))
    theta_big = torch.atan2(rho, Z)
    ratio = torch.where(small, ratio_small, theta_big / rho)  # theta / rho
    theta2 = torch.where(small, ratio_small * ratio_small * rho2, theta_big * theta_big)
    s = ratio * _poly(theta2, c)  # theta_d / rho
    return s * X, s * Y


def distort_fisheye(xn: Float[Tensor, "*B N 2"], dist: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B N 2"]:
    """Applies Kannala-Brandt (``cv2.fisheye``) distortion to normalised image coordinates.

    Args:
        xn: undistorted normalised coordinates (X/Z, Y/Z) in the camera frame, (*B, N, 2), unitless.
        dist: coefficients (k1, k2, k3, k4), shape (*B, 4).

    Returns:
        Distorted normalised coordinates (*B, N, 2) (radius theta_d in radians). Differentiable in both
        inputs, also at the optical axis.

    Raises:
        ValueError: wrong shapes, non-float dtypes, mismatched devices/dtypes or non-broadcastable batch dims.
    """
    check_points_camera(xn, "xn", 2, None, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(xn)
    x, y = xc[..., 0], xc[..., 1]
    xd, yd = _distort_xyz(x, y, torch.ones_like(x), _coeffs(dist))
    return restore_nonfinite(torch.stack([xd, yd], dim=-1), bad)


def project_fisheye(
    X_cam: Float[Tensor, "*B N 3"], K: Float[Tensor, "*B 3 3"], dist: Float[Tensor, "*B 4"]
) -> Float[Tensor, "*B N 2"]:
    """Projects camera-frame points through the fisheye model to pixels (``cv2.fisheye.projectPoints``).

    Args:
        X_cam: points in the camera frame (*B, N, 3), OpenCV axes, metres. Points with Z <= 0 are projected by
            their angle to the optical axis (valid for lenses beyond 180 degrees FOV); a point exactly behind
            the centre (X = Y = 0, Z < 0) maps to the principal point.
        K: intrinsics (*B, 3, 3), pixels (a skew entry K[0, 1] = fx * alpha reproduces OpenCV's alpha).
        dist: coefficients (k1, k2, k3, k4), (*B, 4).

    Returns:
        Distorted pixel coordinates (*B, N, 2). Differentiable in all inputs.
    """
    check_points_camera(X_cam, "X_cam", 3, K, dist, _DIST_SIZES, _DIST_SPEC)
    Xc, bad = split_nonfinite(X_cam)
    xd, yd = _distort_xyz(Xc[..., 0], Xc[..., 1], Xc[..., 2], _coeffs(dist))
    return restore_nonfinite(normalized_to_pixels(torch.stack([xd, yd], dim=-1), K), bad)


def _solve_theta(
    xd: Tensor, dist: Tensor, iterations: int, theta_max: float, need_converged: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Shared inverse: returns (theta with IFT grad, theta_d_safe, m = theta_d^2, small mask, converged)."""
    c = _coeffs(dist)
    u, v = xd[..., 0], xd[..., 1]
    m = u * u + v * v  # theta_d^2, broadcast below with the coefficients
    m = m + torch.zeros_like(c[0])
    with torch.no_grad():
        small = m < _SMALL_INV
    one = torch.ones((), dtype=xd.dtype, device=xd.device)
    td = torch.sqrt(torch.where(small, one, m))  # theta_d away from the axis (1 in the series branch)
    with torch.no_grad():
        tdd = td.detach().contiguous()
        ntd = -tdd
        # coefficients materialised at the full (*B, N) shape: keeps every loop op on the fast vectorised path
        k1, k2, k3, k4 = (t.detach().expand(tdd.shape).contiguous() for t in c)
        dc = (3 * k1, 5 * k2, 7 * k3, 9 * k4)
        stop = newton_stop_tolerance(xd.dtype) * (1 + min(float(tdd.amax()), theta_max)) if m.numel() else 0.0
        theta = torch.clamp(tdd, 0.0, theta_max)
        # safeguarded Newton: [lo, hi] brackets the first root on the increasing branch of theta_d(theta)
        # (f < 0 with theta_d' > 0 below it; f > 0, or theta_d' <= 0 beyond a fold, above it); a Newton step
        # that leaves the bracket, or starts where theta_d' <= 0, is replaced by bisection
        lo = torch.zeros_like(theta)
        hi = torch.full_like(theta, theta_max)
        for it in range(iterations + 1):
            t2 = theta * theta
            p = torch.addcmul(k1, t2, torch.addcmul(k2, t2, torch.addcmul(k3, t2, k4)))
            f = torch.addcmul(ntd, theta, torch.addcmul(one, t2, p))  # theta_d(theta) - theta_d
            fp = torch.addcmul(dc[0], t2, torch.addcmul(dc[1], t2, torch.addcmul(dc[2], t2, dc[3])))
            fp = torch.addcmul(one, t2, fp)  # d theta_d / d theta
            step = torch.nan_to_num_(f / fp, 0.0, 0.0, 0.0)
            if it == iterations or m.numel() == 0:
                break
            # masks as 0/1 float blends (much faster than torch.where on CPU)
            below = ((f <= 0) & (fp > 0)).to(theta.dtype)
            lo = torch.addcmul(lo, below, theta - lo)
            hi = torch.addcmul(theta, below, hi - theta)
            cand = theta - step
            newton = ((fp > 0) & (cand >= lo) & (cand <= hi)).to(theta.dtype)
            mid = (lo + hi).mul_(0.5)
            new = torch.nan_to_num_(torch.addcmul(mid, newton, cand - mid), 0.0, 0.0, 0.0)
            if float((new - theta).abs_().amax()) <= stop:
                break
            theta = new
        ok = torch.isfinite(fp) & (fp > 0)
        fp = torch.where(ok, fp, one)
    if torch.is_grad_enabled() and (xd.requires_grad or dist.requires_grad):
        # one Newton step with gradients from the detached root (implicit-function-theorem gradient)
        f = theta * _poly(t2, c) - td
        theta_out = theta - torch.where(ok, f / fp, torch.zeros_like(f))
    else:
        theta_out = theta - torch.where(ok, step, torch.zeros_like(step))
    if not need_converged:
        return theta_out, td, m, small, None
    with torch.no_grad():
        conv = (step.abs() <= newton_stop_tolerance(xd.dtype) * (1 + tdd)) & ok & (theta < theta_max) & ~small
        for i in range(1, 9):  # theta_d(theta) increasing on (0, theta*]: root on the physical branch
            conv = conv & (_dpoly(t2 * (i / 8) ** 2, (k1, k2, k3, k4)) > 0)
        conv = conv | (small & torch.isfinite(m))
    return theta_out, td, m, small, conv


def _undistort(
    xd: Tensor, dist: Tensor, iterations: int, need_converged: bool
) -> tuple[Tensor, Tensor | None]:
    """Core of :func:`undistort_fisheye` on finite points: (normalised points, converged or None)."""
    half_pi = math.pi / 2 - _HALF_PI_MARGIN
    theta, td, m, small, conv = _solve_theta(xd, dist, iterations, math.pi, need_converged)
    if conv is not None:
        conv = conv & (theta.detach() < half_pi)
    theta = torch.clamp(theta, max=half_pi)
    k1 = dist[..., 0:1]
    scale = torch.where(small, 1 + (1.0 / 3 - k1) * m, torch.tan(theta) / td)  # tan(theta) / theta_d
    out = xd * scale[..., None]
    return out, None if conv is None else conv & torch.isfinite(out.detach()).all(-1)


def _bearing(xd: Tensor, dist: Tensor, iterations: int, need_converged: bool) -> tuple[Tensor, Tensor | None]:
    """Unit rays (*B, N, 3) for finite distorted normalised points, and convergence (or None)."""
    theta, td, m, small, conv = _solve_theta(xd, dist, iterations, math.pi, need_converged)
    k1 = dist[..., 0:1]
    s = torch.where(small, 1 - (k1 + 1.0 / 6) * m, torch.sin(theta) / td)  # sin(theta) / theta_d
    cz = torch.where(small, 1 - 0.5 * m, torch.cos(theta))
    out = torch.cat([xd * s[..., None], cz[..., None]], dim=-1)
    return out, None if conv is None else conv & torch.isfinite(out.detach()).all(-1)


def undistort_fisheye(
    xd: Float[Tensor, "*B N 2"],
    dist: Float[Tensor, "*B 4"],
    iterations: int = 20,
    return_converged: bool = False,
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Inverts :func:`distort_fisheye` (Newton on theta), like ``cv2.fisheye.undistortPoints`` without K.

    Args:
        xd: distorted normalised coordinates (*B, N, 2), i.e. ``K^-1`` applied to observed pixels.
        dist: coefficients (k1, k2, k3, k4), (*B, 4).
        iterations: maximum Newton iterations (stops early once all points have settled).
        return_converged: also return per-point convergence.

    Returns:
        Undistorted normalised coordinates (X/Z, Y/Z) (*B, N, 2), or an :class:`UndistortResult`. Rays at or
        beyond 90 degrees have no normalised coordinates: they get ``converged=False`` and finite (large)
        values; use :func:`unproject_fisheye_bearing` for them. Gradients are finite also at the optical axis.
        Non-finite input points give NaN rows (and no gradient).

    Raises:
        ValueError: wrong shapes, non-float dtypes, mismatched devices/dtypes or non-broadcastable batch dims.
    """
    check_points_camera(xd, "xd", 2, None, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(xd)
    out, conv = _undistort(xc, dist, iterations, return_converged)
    return finish_undistort(out, conv, bad, return_converged)


def unproject_fisheye_bearing(
    x_pix: Float[Tensor, "*B N 2"],
    K: Float[Tensor, "*B 3 3"],
    dist: Float[Tensor, "*B 4"],
    iterations: int = 20,
    return_converged: bool = False,
) -> Float[Tensor, "*B N 3"] | UndistortResult:
    """Observed pixels -> unit viewing rays in the camera frame, valid for any angle up to 180 degrees.

    Args:
        x_pix: distorted pixel coordinates (*B, N, 2).
        K: intrinsics (*B, 3, 3).
        dist: coefficients (k1, k2, k3, k4), (*B, 4).
        iterations: maximum Newton iterations.
        return_converged: also return per-point convergence (False where no angle in [0, pi) maps to the
            observed radius on the increasing branch of the model).

    Returns:
        Unit rays (*B, N, 3) (OpenCV axes, Z forward; Z < 0 beyond 90 degrees), or
        :class:`UndistortResult`.
    """
    check_points_camera(x_pix, "x_pix", 2, K, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(x_pix)
    out, conv = _bearing(pixels_to_normalized(xc, K), dist, iterations, return_converged)
    return finish_undistort(out, conv, bad, return_converged)


def unproject_fisheye(
    x_pix: Float[Tensor, "*B N 2"],
    K: Float[Tensor, "*B 3 3"],
    dist: Float[Tensor, "*B 4"],
    iterations: int = 20,
    return_converged: bool = False,
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Observed pixels -> undistorted normalised coordinates (X/Z, Y/Z) (``cv2.fisheye.undistortPoints``).

    Args:
        x_pix: distorted pixel coordinates (*B, N, 2).
        K: intrinsics (*B, 3, 3).
        dist: coefficients (k1, k2, k3, k4), (*B, 4).
        iterations: maximum Newton iterations.
        return_converged: also return per-point convergence, see :func:`undistort_fisheye`.

    Returns:
        Normalised coordinates (*B, N, 2) on the Z = 1 plane (only meaningful below 90 degrees), or an
        :class:`UndistortResult`.
    """
    check_points_camera(x_pix, "x_pix", 2, K, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(x_pix)
    out, conv = _undistort(pixels_to_normalized(xc, K), dist, iterations, return_converged)
    return finish_undistort(out, conv, bad, return_converged)


def undistort_pixels_fisheye(
    x_pix: Float[Tensor, "*B N 2"],
    K: Float[Tensor, "*B 3 3"],
    dist: Float[Tensor, "*B 4"],
    iterations: int = 20,
    return_converged: bool = False,
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Observed pixels -> ideal pinhole pixels with the same K (``cv2.fisheye.undistortPoints(..., P=K)``).

    Args:
        x_pix: distorted pixel coordinates (*B, N, 2).
        K: intrinsics (*B, 3, 3), used both to normalise and to re-project.
        dist: coefficients (k1, k2, k3, k4), (*B, 4).
        iterations: maximum Newton iterations.
        return_converged: also return per-point convergence, see :func:`undistort_fisheye`.

    Returns:
        Undistorted pixel coordinates (*B, N, 2), or an :class:`UndistortResult` holding them.
    """
    check_points_camera(x_pix, "x_pix", 2, K, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(x_pix)
    out, conv = _undistort(pixels_to_normalized(xc, K), dist, iterations, return_converged)
    return finish_undistort(normalized_to_pixels(out, K), conv, bad, return_converged)
