"""RoMa's Gaussian-process match encoder (from DKM): the GP posterior mean of a Fourier embedding of the
coordinates of image B, regressed from the features of image A.

With cosine kernel ``k(a, b) = exp((cos(a, b) - 1) / T)`` between feature vectors, and ``f(y)`` the embedding
``cos(8 pi (W p_y + b))`` of each grid coordinate ``p_y`` of image B (``pos_conv``: a 1x1 conv 2 -> gp_dim),
the posterior mean at the features of A is

    mu_x = K_xy (K_yy + sigma^2 I)^-1 f(y).

Parameters: ``pos_conv.weight (gp_dim, 2, 1, 1)``, ``pos_conv.bias (gp_dim,)`` (the temperature is fixed,
the official model has no covariance output). Runs in float32 at least (the official code casts to float).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn


def grid_coordinates(b: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised coordinates of the pixel centres of an (h, w) grid, (b, 2, h, w) with (x, y) channels.

    RoMa's grids are ``linspace(-1 + 1/n, 1 - 1/n, n)``: the image spans [-1, 1] edge to edge
    (``grid_sample(align_corners=False)`` semantics) and pixel k has centre ``-1 + (2k + 1) / n``.
    """
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy))[None].expand(b, 2, h, w)


def cosine_kernel(x: Tensor, y: Tensor, temperature: float, eps: float = 1e-6) -> Tensor:
    """exp((cos(x_n, y_m) - 1) / T) for x (B, N, D), y (B, M, D) -> (B, N, M)."""
    c = torch.einsum("bnd,bmd->bnm", x, y) / (x.norm(dim=-1)[..., None] * y.norm(dim=-1)[:, None] + eps)
    return ((c - 1.0) / temperature).exp()


class GP(nn.Module):
    """Gaussian-process posterior mean of the Fourier-embedded target coordinates."""

    def __init__(self, gp_dim: int, temperature: float = 0.2, sigma_noise: float = 0.1) -> None:
        super().__init__()
        self.pos_conv = nn.Conv2d(2, gp_dim, 1, 1)
        self.temperature = temperature
        self.sigma_noise = sigma_noise

    def forward(
        self, x: Float[Tensor, "B C h1 w1"], y: Float[Tensor, "B C h2 w2"]
    ) -> Float[Tensor, "B D h1 w1"]:
        b, _, h1, w1 = x.shape
        h2, w2 = y.shape[-2:]
        dtype = torch.promote_types(x.dtype, torch.float32)
        coords = grid_coordinates(b, h2, w2, y.device, dtype)
        f = torch.cos(8 * math.pi * self.pos_conv(coords.to(self.pos_conv.weight.dtype))).to(dtype)
        xs = x.to(dtype).flatten(2).transpose(1, 2)
        ys = y.to(dtype).flatten(2).transpose(1, 2)
        f = f.flatten(2).transpose(1, 2)
        k_xy = cosine_kernel(xs, ys, self.temperature)
        k_yy = cosine_kernel(ys, ys, self.temperature)
        eye = torch.eye(h2 * w2, device=y.device, dtype=dtype)
        # K_yy^-1 f, then K_xy (.), in the official order of operations (explicit inverse)
        mu = k_xy @ (torch.linalg.inv(k_yy + self.sigma_noise * eye) @ f)
        return mu.transpose(1, 2).reshape(b, -1, h1, w1)
