"""Batched real roots of cubic polynomials in closed form.

The roots are found without autograd (Cardano's formula when the discriminant says one real root, Viete's
trigonometric form when there are three), polished by two Newton iterations, and then one more Newton step is
taken *with* autograd from the detached root: ``z = z0 - p(z0) / p'(z0)``. Its value is ``z0`` (to rounding) and
its derivative with respect to the coefficients is exactly the implicit-function-theorem derivative
``dz = -(dp)(z0) / p'(z0)``. At a double root ``p'(z0) = 0`` and the derivative does not exist; the denominator is
then clamped (sign kept) so gradients stay finite but are meaningless for that root.

The work is done with the root index as the *first* dimension (:func:`real_cubic_roots_first`), so that every
operation runs over the long batch dimensions (see :mod:`torch3dv.linalg.batch_last`);
:func:`real_cubic_roots` puts it last.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _eval(a: Tensor, b: Tensor, c: Tensor, d: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """p(z) and p'(z) (Horner) for coefficients (...) broadcast against roots (3, ...)."""
    p = ((a * z + b) * z + c) * z + d
    dp = (3 * a * z + 2 * b) * z + c
    return p, dp


def _cbrt(x: Tensor) -> Tensor:
    return torch.sign(x) * x.abs().pow(1.0 / 3.0)


@torch.no_grad()
def _roots_nograd(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    dtype = a.dtype
    scale = torch.maximum(torch.maximum(a.abs(), b.abs()), torch.maximum(c.abs(), d.abs()))
    tiny = torch.finfo(dtype).eps * 1e2
    cubic = a.abs() > tiny * scale
    safe_a = torch.where(cubic, a, torch.ones_like(a))
    p, q, r = b / safe_a, c / safe_a, d / safe_a
    P = q - p * p / 3
    Q = 2 * p ** 3 / 27 - p * q / 3 + r
    disc = (Q / 2) ** 2 + (P / 3) ** 3
    one = disc > 0
    # one real root (Cardano, with the cancellation-free choice of the cube root)
    sq = torch.sqrt(disc.clamp_min(0))
    A = -torch.sign(Q) * _cbrt(Q.abs() / 2 + sq)
    A = torch.where(Q == 0, _cbrt(sq), A)
    nz = A != 0
    B = torch.where(nz, -P / (3 * torch.where(nz, A, torch.ones_like(A))), torch.zeros_like(A))
    y1 = A + B
    # three real roots (Viete)
    Pn = torch.clamp(P, max=0.0)
    m = 2 * torch.sqrt(-Pn / 3)
    denom = torch.where(m != 0, Pn * m, -torch.ones_like(m))
    theta = torch.acos((3 * Q / denom).clamp(-1.0, 1.0)) / 3
    y3 = torch.stack([m * torch.cos(theta - 2 * math.pi * k / 3) for k in range(3)], 0)
    y = torch.where(one, y1, y3)
    z = y - p / 3
    false = torch.zeros_like(one)
    valid_c = torch.stack([torch.ones_like(one), ~one, ~one], 0)
    # quadratic / linear fallback when the leading coefficient vanishes
    quad = b.abs() > tiny * scale
    qd = c * c - 4 * b * d
    sqd = torch.sqrt(qd.clamp_min(0))
    # numerically stable quadratic roots
    s = -0.5 * (c + torch.where(c >= 0, sqd, -sqd))
    safe_s = torch.where(s != 0, s, torch.ones_like(s))
    safe_b = torch.where(quad, b, torch.ones_like(b))
    r1 = s / safe_b
    r2 = torch.where(s != 0, d / safe_s, torch.zeros_like(s))
    lin_ok = c.abs() > tiny * scale
    r_lin = -d / torch.where(lin_ok, c, torch.ones_like(c))
    zq = torch.where(quad, torch.stack([r1, r2, r1], 0), r_lin)
    valid_q = torch.where(quad, torch.stack([qd >= 0, qd >= 0, false], 0), torch.stack([lin_ok, false, false], 0))
    z = torch.where(cubic, z, zq)
    valid = torch.where(cubic, valid_c, valid_q)
    # Newton polishing
    for _ in range(2):
        pz, dpz = _eval(a, b, c, d, z)
        nz = dpz != 0
        z_new = z - torch.where(nz, pz / torch.where(nz, dpz, torch.ones_like(dpz)), torch.zeros_like(pz))
        z = torch.where((z_new - z).abs() <= 1e-2 * (1 + z.abs()), z_new, z)  # NaN/inf fail the test
    valid = valid & torch.isfinite(z) & (torch.isfinite(scale) & (scale > 0))
    z = torch.where(valid, z, torch.zeros_like(z))
    return z, valid


def real_cubic_roots_first(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Like :func:`real_cubic_roots` with the root index first: roots and valid (3, ...)."""
    a, b, c, d = torch.broadcast_tensors(a, b, c, d)
    z0, valid = _roots_nograd(a.detach(), b.detach(), c.detach(), d.detach())
    if not (a.requires_grad or b.requires_grad or c.requires_grad or d.requires_grad):
        return z0, valid
    pz, dpz = _eval(a, b, c, d, z0)
    tiny = torch.finfo(a.dtype).tiny ** 0.5
    den = torch.where(dpz.detach().abs() > tiny, dpz, torch.where(dpz.detach() < 0, -tiny, tiny).to(dpz.dtype))
    z = z0 - pz / den
    # the value stays the polished root; only the gradient comes from the Newton step
    z = z0 + (z - z.detach())
    z = torch.where(valid, z, torch.zeros_like(z))
    return z, valid


def real_cubic_roots(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Real roots of ``a z^3 + b z^2 + c z + d = 0``, batched and differentiable.

    Args:
        a, b, c, d: coefficients, any broadcastable shapes (...,), float32/float64. When ``a`` is negligible
            against the other coefficients the polynomial is solved as a quadratic (or linear) one.

    Returns:
        ``(roots, valid)``: roots (..., 3) (invalid slots hold 0), valid (..., 3) bool. A double root may
        appear twice. Gradients w.r.t. the coefficients follow the implicit-function theorem (module doc).
    """
    z, valid = real_cubic_roots_first(a, b, c, d)
    return z.movedim(0, -1), valid.movedim(0, -1)
