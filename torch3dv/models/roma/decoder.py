"""RoMa's coarse transformer decoder and the coarse-to-fine decoder that drives the refiners.

Coarse match (stride 16, the ViT grid): tokens ``[GP posterior, projected A feature]`` (width
gp_dim + feat_dim) go through transformer blocks and a linear layer ``to_out`` to cls_res^2 anchor logits
plus one certainty logit. The warp is the probability-weighted mean of the most likely anchor and its four
neighbours (``cls_to_flow_refine``). Parameter names (official)::

    embedding_decoder.blocks.N.{norm1, attn.qkv (no bias), attn.proj, norm2, mlp.fc1, mlp.fc2}
    embedding_decoder.to_out.{weight (cls_res^2 + 1, D), bias}
    gps.16.pos_conv       proj.S.0 (1x1 conv), proj.S.1 (BatchNorm)     conv_refiner.S.*

Fine: at strides 16, 8, 4, 2, 1 the refiner of that scale adds ``S * delta / (4 * (W, H))`` to the warp (H, W
of the stride-1 grid) and its logit to the certainty; warp and certainty are then bilinearly upsampled
(align_corners=False) to the next scale and detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch3dv.models.roma.config import RomaConfig
from torch3dv.models.roma.dinov2 import Block
from torch3dv.models.roma.gp import GP, grid_coordinates
from torch3dv.models.roma.refiners import ConvRefiner

SCALES = (16, 8, 4, 2, 1)
REFINE_INIT = 4


class TransformerDecoder(nn.Module):
    """Coarse decoder: (GP posterior, features) -> (anchor logits (B, R^2, h, w), certainty (B, 1, h, w))."""

    def __init__(self, dim: int, num_blocks: int, num_heads: int, cls_res: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=False, layerscale_init=None, norm_eps=1e-5)
              for _ in range(num_blocks)]
        )
        self.to_out = nn.Linear(dim, cls_res**2 + 1)

    def forward(self, gp_posterior: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat((gp_posterior.to(features.dtype), features), dim=1)
        b, _, h, w = x.shape
        out = self.to_out(self.blocks(x.flatten(2).transpose(1, 2)))
        out = out.transpose(1, 2).reshape(b, -1, h, w)
        return out[:, :-1], out[:, -1:]


@torch.no_grad()
def cls_to_flow_refine(logits: Tensor) -> Tensor:
    """Anchor logits (B, R^2, h, w) -> warp (B, 2, h, w), normalised coordinates.

    Anchors are the centres ``-1 + (2k + 1) / R`` of an R x R grid, index i * R + j for row i, column j.
    The warp is the softmax-weighted mean of the argmax anchor m and the anchors m - 1, m + 1, m - R, m + R
    (indices clamped to [0, R^2 - 1]; as in the official code, m +- 1 is not wrapped at row ends).
    """
    c = logits.shape[1]
    r = round(c**0.5)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    anchors = grid_coordinates(1, r, r, logits.device, dtype)[0].reshape(2, c)  # (2, R^2), (x, y)
    prob = logits.to(dtype).softmax(dim=1)
    mode = prob.argmax(dim=1, keepdim=True)
    index = torch.cat((mode - 1, mode, mode + 1, mode - r, mode + r), dim=1).clamp(0, c - 1)  # (B, 5, h, w)
    p = torch.gather(prob, 1, index)  # (B, 5, h, w)
    g = anchors[:, index]  # (2, B, 5, h, w)
    return ((p[None] * g).sum(dim=2) / p.sum(dim=1)[None]).permute(1, 0, 2, 3)


class Decoder(nn.Module):
    """Coarse-to-fine decoder; official attribute names (embedding_decoder, gps, proj, conv_refiner)."""

    def __init__(self, config: RomaConfig) -> None:
        super().__init__()
        self.embedding_decoder = TransformerDecoder(
            config.decoder_dim, config.decoder_blocks, config.decoder_heads, config.cls_res
        )
        self.gps = nn.ModuleDict({"16": GP(config.gp_dim, config.gp_temperature, config.gp_sigma_noise)})
        self.proj = nn.ModuleDict(
            {str(s): nn.Sequential(nn.Conv2d(config.proj_in[s], config.proj_out[s], 1, 1),
                                   nn.BatchNorm2d(config.proj_out[s])) for s in SCALES}
        )
        self.conv_refiner = nn.ModuleDict({str(s): ConvRefiner(config.refiners[s]) for s in SCALES})

    def forward(
        self,
        f1: dict[int, Tensor],
        f2: dict[int, Tensor],
        flow: Tensor | None = None,
        certainty: Tensor | None = None,
        scale_factor: float = 1.0,
    ) -> dict[int, dict[str, Tensor]]:
        """Runs the scales present in ``f1``.

        Args:
            f1, f2: {stride: (B, C, h, w)} backbone features of A and B. With stride 16 present (coarse pass)
                the coarse decoder starts; otherwise (refinement pass at a higher resolution) ``flow`` and
                ``certainty`` from a previous pass are resized to the coarsest grid and refined.
            flow: (B, 2, h', w') warp A -> B in normalised coordinates. certainty: (B, 1, h', w') logits.
            scale_factor: see :class:`ConvRefiner`.

        Returns:
            {stride: {"flow": (B, 2, h, w), "certainty": (B, 1, h, w)}} for every scale run.
        """
        scales = [s for s in SCALES if s in f1]
        sizes = {s: f1[s].shape[-2:] for s in scales}
        h, w = sizes[1]
        if 16 not in scales:
            if flow is None or certainty is None:
                raise ValueError("a pass without stride-16 features needs flow and certainty")
            flow = F.interpolate(flow, size=sizes[scales[0]], mode="bilinear", align_corners=False)
            certainty = F.interpolate(certainty, size=sizes[scales[0]], mode="bilinear", align_corners=False)
        out: dict[int, dict[str, Tensor]] = {}
        for i, s in enumerate(scales):
            x, y = self.proj[str(s)](f1[s]), self.proj[str(s)](f2[s])
            if s == 16:
                gp_posterior = self.gps["16"](x, y)
                logits, certainty = self.embedding_decoder(gp_posterior, x)
                flow = cls_to_flow_refine(logits).to(x.dtype)
            assert flow is not None and certainty is not None
            delta, delta_cert = self.conv_refiner[str(s)](x, y, flow, scale_factor=scale_factor)
            scale_xy = torch.tensor([s / (REFINE_INIT * w), s / (REFINE_INIT * h)], device=x.device)
            flow = flow + delta * scale_xy.to(delta.dtype)[None, :, None, None]
            certainty = certainty + delta_cert
            out[s] = {"flow": flow, "certainty": certainty}
            if s != 1:
                nxt = sizes[scales[i + 1]]
                flow = F.interpolate(flow, size=nxt, mode="bilinear", align_corners=False).detach()
                certainty = F.interpolate(certainty, size=nxt, mode="bilinear", align_corners=False).detach()
        return out
