"""OpenCV radial-tangential ("plumb bob") lens distortion: k1, k2, p1, p2, k3.

The model acts on normalised image coordinates (x, y) = (X / Z, Y / Z) of a camera-frame point (OpenCV axes,
see the README's "Conventions"), with r^2 = x^2 + y^2::

    radial = 1 + k1 r^2 + k2 r^4 + k3 r^6
    x_d = x radial + 2 p1 x y + p2 (r^2 + 2 x^2)
    y_d = y radial + p1 (r^2 + 2 y^2) + 2 p2 x y

and pixels are ``K @ (x_d, y_d, 1)``. Coefficients come in OpenCV order ``(k1, k2, p1, p2, k3)``, shape
(*B, 5), or (*B, 4) meaning k3 = 0; they broadcast over the N points and over batch dims.

Undistortion (the inverse map) is solved per point by Newton's method with the analytic 2x2 Jacobian
(OpenCV's ``undistortPoints`` uses a fixed-point scheme instead, which converges linearly and can stall for
strong distortion). It starts from the radial-only first-order inverse ``x_d / radial(|x_d|)``, and an
iterate that lands beyond a fold of the model (det J <= 0) or on its mirrored sheet (negative radial factor)
is pulled half-way back towards the last iterate on the physical sheet (the centre at first), so Newton
cannot run off to a non-physical root. Iterations stop once every step is below ``0.1 sqrt(eps)`` (about 3-4
for realistic lenses); the final Newton step below then brings the error to rounding level.

Gradients (implicit function theorem): the iterations run under ``torch.no_grad``; the solution ``x*`` is then
refined by one Newton step with gradients, ``x = x* - J(x*)^-1 (distort(x*, dist) - x_d)`` with ``J``
detached. At convergence the residual vanishes, so the value is unchanged and the gradient is exactly
``dx/dx_d = J^-1`` and ``dx/d dist = -J^-1 d distort / d dist``, i.e. the implicit-function-theorem gradient,
with no back-propagation through the loop.

Failure handling: steps are finite (NaN/inf steps are zeroed) and iterates stay bounded, so NaN-free input
never produces NaN/inf. A non-finite input point gives a NaN output row and no gradient (it is replaced by
zeros internally, so it never poisons the gradient of shared K or coefficients); NaN coefficients give NaN in
the points they apply to. ``return_converged=True`` additionally reports per point whether the last Newton
step was below the tolerance on the physical sheet (det J > 0 and the radial profile r (1 + k1 r^2 + ...)
increasing up to the root, tested at a few radii). Points whose distorted radius exceeds the maximum the
model reaches (beyond its fold: no physical preimage) get ``converged=False``.
"""

from __future__ import annotations

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
from torch3dv.linalg.homogeneous import from_homogeneous

__all__ = [
    "distort_radtan",
    "undistort_radtan",
    "project_radtan",
    "unproject_radtan",
    "undistort_pixels_radtan",
    "radtan_jacobian",
]

_DIST_SPEC = "(*B, 5) = (k1, k2, p1, p2, k3) or (*B, 4)"
_DIST_SIZES = (4, 5)
# iterates are kept inside |x| <= max(_BOUND, 2 |x_d|) so that no NaN-free input overflows
_BOUND = 1e3


def _coeffs(dist: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Splits (*B, 4|5) coefficients into five (*B, 1) tensors that broadcast over the N points."""
    k1, k2, p1, p2 = (dist[..., i : i + 1] for i in range(4))
    k3 = dist[..., 4:5] if dist.shape[-1] == 5 else torch.zeros_like(k1)
    return k1, k2, p1, p2, k3


def _distort_xy(x: Tensor, y: Tensor, c: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    k1, k2, p1, p2, k3 = c
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xy2 = 2 * x * y
    return x * radial + p1 * xy2 + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + p2 * xy2


def _jacobian_xy(x: Tensor, y: Tensor, c: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Entries (a, b, d) of the symmetric Jacobian [[a, b], [b, d]] of the distortion at (x, y)."""
    k1, k2, p1, p2, k3 = c
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r^2
    a = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
    b = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
    d = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
    return a, b, d


def distort_radtan(xn: Float[Tensor, "*B N 2"], dist: Float[Tensor, "*B D"]) -> Float[Tensor, "*B N 2"]:
    """Applies radial-tangential distortion to normalised image coordinates.

    Args:
        xn: undistorted normalised coordinates (X/Z, Y/Z) in the camera frame, shape (*B, N, 2), unitless.
        dist: coefficients (k1, k2, p1, p2, k3) in OpenCV order, shape (*B, 5), or (*B, 4) meaning k3 = 0.

    Returns:
        Distorted normalised coordinates (*B, N, 2). Differentiable in ``xn`` and ``dist``.

    Raises:
        ValueError: wrong shapes, non-float dtypes, mismatched devices/dtypes or non-broadcastable batch dims.
    """
    check_points_camera(xn, "xn", 2, None, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(xn)
    xd, yd = _distort_xy(xc[..., 0], xc[..., 1], _coeffs(dist))
    return restore_nonfinite(torch.stack([xd, yd], dim=-1), bad)


def radtan_jacobian(xn: Float[Tensor, "*B N 2"], dist: Float[Tensor, "*B D"]) -> Float[Tensor, "*B N 2 2"]:
    """Analytic Jacobian d distort_radtan(xn) / d xn, shape (*B, N, 2, 2) (it is symmetric).

    Args:
        xn: undistorted normalised coordinates (*B, N, 2).
        dist: coefficients (*B, 5) or (*B, 4), OpenCV order.
    """
    check_points_camera(xn, "xn", 2, None, dist, _DIST_SIZES, _DIST_SPEC)
    a, b, d = _jacobian_xy(xn[..., 0], xn[..., 1], _coeffs(dist))
    return torch.stack([torch.stack([a, b], -1), torch.stack([b, d], -1)], -2)


def _radially_monotone(x: Tensor, y: Tensor, c: tuple[Tensor, ...], samples: int = 8) -> Tensor:
    """True where r (1 + k1 r^2 + k2 r^4 + k3 r^6) is increasing at ``samples`` radii in (0, |(x, y)|].

    A cheap test that a Newton root lies on the invertible (physical) branch of the radial model, before its
    first fold; without it a root beyond the fold (e.g. with a negative radial factor, mirrored through the
    principal point) would count as converged.
    """
    k1, k2, k3 = c[0], c[1], c[4]
    r2 = x * x + y * y
    ok = torch.ones_like(r2, dtype=torch.bool)
    for i in range(1, samples + 1):
        s2 = r2 * (i / samples) ** 2
        ok = ok & (1 + s2 * (3 * k1 + s2 * (5 * k2 + s2 * 7 * k3)) > 0)
    return ok


def _loop_coeffs(c: tuple[Tensor, ...], shape: torch.Size) -> tuple[Tensor, ...]:
    """Coefficient combinations used by the Newton loop, materialised at the full (*B, N) shape.

    Contiguous full-size operands keep every op of the loop on the fast vectorised path (broadcasting a
    (*B, 1) operand along N is several times slower per op on CPU).
    """
    k1, k2, p1, p2, k3 = c
    combos = (k1, k2, k3, p1, p2, 2 * k1, 4 * k2, 6 * k3, 2 * p1, 2 * p2, 6 * p1, 6 * p2)
    return tuple(t.expand(shape).contiguous() for t in combos)


def _residual_jacobian(
    x: Tensor, y: Tensor, nu: Tensor, nv: Tensor, lc: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Residual distort(x, y) + (nu, nv), Jacobian (a, b, d) and the radial factor; fused ops, no grad."""
    k1, k2, k3, p1, p2, k1x2, k2x4, k3x6, p1x2, p2x2, p1x6, p2x6 = lc
    x2, y2, xy = x * x, y * y, x * y
    r2 = x2 + y2
    radial = torch.addcmul(k1, r2, torch.addcmul(k2, r2, k3))
    radial = torch.addcmul(torch.ones((), dtype=x.dtype, device=x.device), r2, radial)
    dr2 = torch.addcmul(k1x2, r2, torch.addcmul(k2x4, r2, k3x6))  # 2 d radial / d r^2
    fx = torch.addcmul(torch.addcmul(torch.addcmul(nu, x, radial), p1x2, xy), p2, torch.add(r2, x2, alpha=2))
    fy = torch.addcmul(torch.addcmul(torch.addcmul(nv, y, radial), p2x2, xy), p1, torch.add(r2, y2, alpha=2))
    a = torch.addcmul(torch.addcmul(torch.addcmul(radial, x2, dr2), p1x2, y), p2x6, x)
    b = torch.addcmul(torch.addcmul(xy * dr2, p1x2, x), p2x2, y)
    d = torch.addcmul(torch.addcmul(torch.addcmul(radial, y2, dr2), p1x6, y), p2x2, x)
    return fx, fy, a, b, d, radial


def _newton_solve(
    u: Tensor, v: Tensor, c: tuple[Tensor, ...], iterations: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Batched Newton iterations for distort(x, y) = (u, v); no gradients.

    Stops when every Newton step is below ``newton_stop_tolerance`` (quadratic convergence: the error is then
    about the square of that; the caller's final step brings it to rounding level) or after ``iterations``
    updates. Returns the last iterate ``(x, y)``, the Jacobian ``(a, b, d)`` and the next Newton step
    ``(sx, sy)`` at it (NaN/inf steps are replaced by zero).
    """
    shape = torch.broadcast_shapes(u.shape, c[0].shape)  # joint batch shape of points and coefficients
    if u.numel() == 0 or c[0].numel() == 0:
        x = u.expand(shape).clone()
        return x, x.clone(), x, x, x, x, x
    lc = _loop_coeffs(c, shape)
    u, v = u.expand(shape).contiguous(), v.expand(shape).contiguous()
    nu, nv = -u, -v
    mag = torch.maximum(u.abs(), v.abs())
    lim = torch.clamp(2 * mag, min=_BOUND)
    stop = newton_stop_tolerance(u.dtype) * (1 + float(mag.amax()))
    big = torch.finfo(u.dtype).max
    # start from the radial-only first-order inverse x_d / radial(|x_d|) (one cheap fixed-point step): for
    # barrel distortion it lies between x_d and the root, for pincushion just below the root; either way it
    # saves about one Newton iteration (a start beyond a fold is repaired by the backtracking below)
    k1, k2, k3 = lc[0], lc[1], lc[2]
    r2 = torch.addcmul(u * u, v, v)
    rad = torch.addcmul(k1, r2, torch.addcmul(k2, r2, k3)).mul_(r2).add_(1).clamp_(min=0.25)
    x, y = u / rad, v / rad
    # backtracking: (xp, yp) is the last accepted iterate (the centre at first, residual |x_d|^2 = rp). An
    # iterate that lands beyond a fold of the model (det J <= 0), on its mirrored sheet (negative radial
    # factor, where Newton heads for a non-physical root) or that does not decrease the residual is pulled
    # half-way back towards it; accepted iterates take a full Newton step. Masks are applied as 0/1 float
    # blends, which are much faster than torch.where on CPU.
    xp, yp = torch.zeros_like(x), torch.zeros_like(y)
    rp = r2
    for it in range(iterations + 1):
        fx, fy, a, b, d, radial = _residual_jacobian(x, y, nu, nv, lc)
        det = torch.addcmul(a * d, b, b, value=-1)
        sx = torch.nan_to_num_(torch.addcmul(d * fx, b, fy, value=-1).div_(det), 0.0, 0.0, 0.0)
        sy = torch.nan_to_num_(torch.addcmul(a * fy, b, fx, value=-1).div_(det), 0.0, 0.0, 0.0)
        if it == iterations:
            break
        res = torch.nan_to_num_(torch.addcmul(fx * fx, fy, fy), big, big, big)
        good = (torch.minimum(torch.minimum(det, radial), rp - res) > 0).to(x.dtype)  # NaN -> 0
        hx, hy = (x - xp).mul_(0.5), (y - yp).mul_(0.5)
        mx = torch.nan_to_num_(torch.addcmul(hx, good, sx - hx), 0.0, 0.0, 0.0)
        my = torch.nan_to_num_(torch.addcmul(hy, good, sy - hy), 0.0, 0.0, 0.0)
        if max(float(mx.abs().amax()), float(my.abs().amax())) <= stop:
            break
        xp = torch.addcmul(xp, good, x - xp)
        yp = torch.addcmul(yp, good, y - yp)
        rp = torch.addcmul(rp, good, res - rp)
        x = torch.clamp(x - mx, -lim, lim)
        y = torch.clamp(y - my, -lim, lim)
    return x, y, a, b, d, sx, sy


def _undistort(
    xd: Tensor, dist: Tensor, iterations: int, need_converged: bool
) -> tuple[Tensor, Tensor | None]:
    """Core of :func:`undistort_radtan` on finite points: (points, converged or None)."""
    c = _coeffs(dist)
    u, v = xd[..., 0], xd[..., 1]
    with torch.no_grad():
        cd = tuple(t.detach() for t in c)
        x0, y0, a, b, d, sx, sy = _newton_solve(u.detach(), v.detach(), cd, iterations)
    if torch.is_grad_enabled() and (xd.requires_grad or dist.requires_grad):
        # one Newton step with gradients from the detached solution: implicit-function-theorem gradient
        with torch.no_grad():
            det = a * d - b * b
            ok = torch.isfinite(det) & (det != 0)
            det = torch.where(ok, det, torch.ones_like(det))
        fx, fy = _distort_xy(x0, y0, c)
        fx, fy = fx - u, fy - v
        gx = (d * fx - b * fy) / det
        gy = (a * fy - b * fx) / det
        with torch.no_grad():
            ok = ok & torch.isfinite(gx) & torch.isfinite(gy)
        zero = torch.zeros((), dtype=xd.dtype, device=xd.device)
        out = torch.stack([x0 - torch.where(ok, gx, zero), y0 - torch.where(ok, gy, zero)], dim=-1)
    else:
        out = torch.empty(x0.shape + (2,), dtype=x0.dtype, device=x0.device)
        torch.sub(x0, sx, out=out[..., 0])
        torch.sub(y0, sy, out=out[..., 1])
    if not need_converged:
        return out, None
    with torch.no_grad():
        step = torch.maximum(sx.abs(), sy.abs())
        scale = 1 + torch.maximum(u.abs(), v.abs())
        det = a * d - b * b
        converged = (step <= newton_stop_tolerance(xd.dtype) * scale) & (det > 0)
        converged = converged & _radially_monotone(x0, y0, cd) & torch.isfinite(out).all(-1)
    return out, converged


def undistort_radtan(
    xd: Float[Tensor, "*B N 2"],
    dist: Float[Tensor, "*B D"],
    iterations: int = 20,
    return_converged: bool = False,
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Inverts :func:`distort_radtan` by batched Newton iterations (analytic 2x2 Jacobian).

    Iterations stop early once every Newton step is below 0.1 sqrt(eps). Gradients w.r.t. ``xd`` and
    ``dist`` are the implicit-function-theorem gradients (see the module docstring); no graph is built through
    the loop.

    Args:
        xd: distorted normalised coordinates (*B, N, 2), i.e. ``K^-1`` applied to observed pixels.
        dist: coefficients (k1, k2, p1, p2, k3) in OpenCV order, (*B, 5), or (*B, 4) meaning k3 = 0.
        iterations: maximum number of Newton iterations (5-8 suffice for realistic lenses in float64).
        return_converged: also return a per-point convergence flag.

    Returns:
        Undistorted normalised coordinates (*B, N, 2); with ``return_converged=True`` an
        :class:`UndistortResult` ``(points, converged (*B, N) bool)``. Points where the iteration failed
        (outside the invertible region of the model) are finite but meaningless and have ``converged=False``.
        Non-finite input points give NaN rows (and no gradient, so they never poison ``dist.grad``).

    Raises:
        ValueError: wrong shapes, non-float dtypes, mismatched devices/dtypes or non-broadcastable batch dims.
    """
    check_points_camera(xd, "xd", 2, None, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(xd)
    out, converged = _undistort(xc, dist, iterations, return_converged)
    return finish_undistort(out, converged, bad, return_converged)


def project_radtan(
    X_cam: Float[Tensor, "*B N 3"],
    K: Float[Tensor, "*B 3 3"],
    dist: Float[Tensor, "*B D"],
    eps: float = 1e-12,
) -> Float[Tensor, "*B N 2"]:
    """Projects camera-frame points through the radial-tangential model to pixels (like
    ``cv2.projectPoints``).

    Args:
        X_cam: points in the camera frame (*B, N, 3), OpenCV axes, metres.
        K: intrinsics (*B, 3, 3), pixels.
        dist: coefficients (*B, 5) or (*B, 4), OpenCV order.
        eps: depths with |Z| < eps are clamped to ±eps (finite output; check cheirality yourself).

    Returns:
        Distorted pixel coordinates (*B, N, 2) (top-left pixel centre is (0, 0)). Differentiable in all
        inputs.
    """
    check_points_camera(X_cam, "X_cam", 3, K, dist, _DIST_SIZES, _DIST_SPEC)
    Xc, bad = split_nonfinite(X_cam)
    xn = from_homogeneous(Xc, eps)
    xd, yd = _distort_xy(xn[..., 0], xn[..., 1], _coeffs(dist))
    return restore_nonfinite(normalized_to_pixels(torch.stack([xd, yd], dim=-1), K), bad)


def unproject_radtan(
    x_pix: Float[Tensor, "*B N 2"],
    K: Float[Tensor, "*B 3 3"],
    dist: Float[Tensor, "*B D"],
    iterations: int = 20,
    return_converged: bool = False,
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Observed pixels -> undistorted normalised coordinates (X/Z, Y/Z) (like ``cv2.undistortPoints`` without
    P).

    Args:
        x_pix: distorted pixel coordinates (*B, N, 2).
        K: intrinsics (*B, 3, 3).
        dist: coefficients (*B, 5) or (*B, 4), OpenCV order.
        iterations: maximum Newton iterations.
        return_converged: also return per-point convergence, see :func:`undistort_radtan`.

    Returns:
        Normalised undistorted coordinates (*B, N, 2) on the Z = 1 plane (or an :class:`UndistortResult`).
    """
    check_points_camera(x_pix, "x_pix", 2, K, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(x_pix)
    out, converged = _undistort(pixels_to_normalized(xc, K), dist, iterations, return_converged)
    return finish_undistort(out, converged, bad, return_converged)


def undistort_pixels_radtan(
    x_pix: Float[Tensor, "*B N 2"],
    K: Float[Tensor, "*B 3 3"],
    dist: Float[Tensor, "*B D"],
    iterations: int = 20,
    return_converged: bool = False,
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Observed pixels -> ideal pinhole pixels with the same K (like ``cv2.undistortPoints(..., P=K)``).

    Args:
        x_pix: distorted pixel coordinates (*B, N, 2).
        K: intrinsics (*B, 3, 3), used both to normalise and to re-project.
        dist: coefficients (*B, 5) or (*B, 4), OpenCV order.
        iterations: maximum Newton iterations.
        return_converged: also return per-point convergence, see :func:`undistort_radtan`.

    Returns:
        Undistorted pixel coordinates (*B, N, 2) (or an :class:`UndistortResult` holding them).
    """
    check_points_camera(x_pix, "x_pix", 2, K, dist, _DIST_SIZES, _DIST_SPEC)
    xc, bad = split_nonfinite(x_pix)
    out, converged = _undistort(pixels_to_normalized(xc, K), dist, iterations, return_converged)
    return finish_undistort(normalized_to_pixels(out, K), converged, bad, return_converged)
