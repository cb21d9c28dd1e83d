"""RoMa's convolutional warp refiners (one per scale) and the local correlation they use.

A ``ConvRefiner`` looks at the features of A, the features of B sampled at the current warp, an embedding of
the displacement ``warp - grid`` and (at strides 16, 8, 4) the correlation of A's feature with B's features on
a (2r+1)^2 window around the warp; it predicts a displacement (2 channels, in units that the decoder scales)
and a certainty logit increment (1 channel). Parameter names (official)::

    block1.0 (depthwise kxk conv, groups=in_dim)  block1.1 (BatchNorm)  block1.3 (1x1 conv)
    hidden_blocks.N.{0,1,3}                        out_conv (1x1 conv -> 3)   disp_emb (1x1 conv 2 -> E)

All sampling uses ``grid_sample(align_corners=False)`` on RoMa's normalised coordinates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from torch3dv.models.roma.config import RefinerConfig
from torch3dv.models.roma.gp import grid_coordinates


def local_correlation(
    feat0: Float[Tensor, "B C H W"],
    feat1: Float[Tensor, "B C H1 W1"],
    warp: Float[Tensor, "B 2 H W"],
    radius: int,
) -> Float[Tensor, "B K H W"]:
    """Correlation of ``feat0`` with ``feat1`` sampled on a (2r+1)^2 window around ``warp``.

    The window steps by 2/H (rows) and 2/W (columns) in normalised coordinates of feat1, i.e. one pixel of
    feat0's grid; channel k = i (2r+1) + j holds the offset (dx_j, dy_i), rows i and columns j increasing.
    Each correlation is sum_c feat0_c * feat1_c / sqrt(C); samples outside feat1 are zero. As in the official
    model (``disable_local_corr_grad``), no gradient flows into the sampled window.
    """
    b, c, h, w = feat0.shape
    n = 2 * radius + 1
    dy = torch.linspace(-2 * radius / h, 2 * radius / h, n, device=feat0.device, dtype=warp.dtype)
    dx = torch.linspace(-2 * radius / w, 2 * radius / w, n, device=feat0.device, dtype=warp.dtype)
    oy, ox = torch.meshgrid(dy, dx, indexing="ij")
    offsets = torch.stack((ox, oy), dim=-1).reshape(1, 1, 1, n * n, 2)
    with torch.no_grad():
        coords = (warp.permute(0, 2, 3, 1)[:, :, :, None] + offsets).reshape(b, h, w * n * n, 2)
        window = F.grid_sample(feat1, coords.to(feat1.dtype), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        window = window.reshape(b, c, h, w, n * n)
    return (feat0[..., None] / c**0.5 * window).sum(dim=1).permute(0, 3, 1, 2)


def _block(in_dim: int, out_dim: int, kernel_size: int, bn_momentum: float) -> nn.Sequential:
    """Depthwise kxk conv -> BN -> ReLU -> 1x1 conv (indices 0, 1, 2, 3)."""
    if out_dim % in_dim:
        raise ValueError("depthwise block needs out_dim divisible by in_dim")
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, 1, kernel_size // 2, groups=in_dim),
        nn.BatchNorm2d(out_dim, momentum=bn_momentum),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_dim, out_dim, 1, 1, 0),
    )


class ConvRefiner(nn.Module):
    """One scale's refiner; hidden width = input width (as in every official refiner)."""

    def __init__(self, config: RefinerConfig, bn_momentum: float = 0.01) -> None:
        super().__init__()
        d = config.in_dim
        self.radius = config.local_corr_radius
        self.block1 = _block(d, d, config.kernel_size, bn_momentum)
        self.hidden_blocks = nn.Sequential(
            *[_block(d, d, config.kernel_size, bn_momentum) for _ in range(config.hidden_blocks)]
        )
        self.out_conv = nn.Conv2d(d, 3, 1, 1, 0)
        self.disp_emb = nn.Conv2d(2, config.displacement_emb_dim, 1, 1, 0)

    def forward(
        self,
        x: Float[Tensor, "B C H W"],
        y: Float[Tensor, "B C H1 W1"],
        flow: Float[Tensor, "B 2 H W"],
        scale_factor: float = 1.0,
    ) -> tuple[Float[Tensor, "B 2 H W"], Float[Tensor, "B 1 H W"]]:
        """Returns (displacement, certainty logit increment).

        Args:
            x: features of A. y: features of B. flow: current warp A -> B, normalised coordinates of B.
            scale_factor: sqrt of the pixel-count ratio of this pass to the coarse pass (1 for the coarse
                pass); scales the displacement before its embedding.
        """
        b, _, h, w = x.shape
        x_hat = F.grid_sample(y, flow.permute(0, 2, 3, 1).to(y.dtype), mode="bilinear", align_corners=False)
        displacement = flow - grid_coordinates(b, h, w, x.device, flow.dtype)
        emb = self.disp_emb((40 / 32 * scale_factor * displacement).to(x.dtype))
        parts = [x, x_hat, emb]
        if self.radius:
            parts.append(local_correlation(x, y, flow, self.radius).to(x.dtype))
        d = self.hidden_blocks(self.block1(torch.cat(parts, dim=1)))
        out = self.out_conv(d)
        return out[:, :-1], out[:, -1:]
