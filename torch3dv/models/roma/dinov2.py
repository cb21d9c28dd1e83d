"""DINOv2 vision transformer (Oquab et al. 2023) with the official parameter names.

The module tree mirrors the DINOv2 reference so that ``dinov2_vitl14_pretrain.pth`` loads with its own key
names::

    cls_token (1, 1, D)        pos_embed (1, 1 + G*G, D)      mask_token (1, D)
    patch_embed.proj.{weight (D, 3, p, p), bias (D,)}
    blocks.N.norm1.{weight, bias}          blocks.N.attn.qkv.{weight (3D, D), bias (3D,)}
    blocks.N.attn.proj.{weight, bias}      blocks.N.ls1.gamma (D,)
    blocks.N.norm2.{weight, bias}          blocks.N.mlp.fc1.{weight (4D, D), bias}
    blocks.N.mlp.fc2.{weight (D, 4D), bias} blocks.N.ls2.gamma (D,)
    norm.{weight, bias}

``Block`` is also the block of RoMa's coarse transformer decoder, there without qkv bias, without LayerScale
and with LayerNorm eps 1e-5 (the DINOv2 backbone uses eps 1e-6).

Only inference features are implemented (``forward_features`` -> normalised patch tokens); masking, stochastic
depth and nested tensors of the training code are not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from torch3dv.models.roma.config import DinoV2Config


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (softmax(q k^T / sqrt(d_head)) v)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Float[Tensor, "B N D"]) -> Float[Tensor, "B N D"]:
        b, n, d = x.shape
        # qkv features are laid out as (3, heads, head_dim), as in the reference implementation
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma``."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

    Args:
        dim: token width. num_heads: attention heads. mlp_ratio: MLP hidden width over dim.
        qkv_bias: bias in the qkv projection. layerscale_init: None for no LayerScale (identity).
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layerscale_init: float | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()

    def forward(self, x: Float[Tensor, "B N D"]) -> Float[Tensor, "B N D"]:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens, by a stride-p convolution ``proj``."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B N D"]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {(h, w)} must be a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT (one class token, no registers, MLP feed-forward, LayerScale), inference features only."""

    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        d = config.embed_dim
        self.config = config
        self.patch_size = config.patch_size
        grid = config.img_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_ratio, qkv_bias=True,
                  layerscale_init=config.layerscale_init, norm_eps=1e-6)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # unused at inference; kept for the key layout
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int) -> Tensor:
        """Position embedding for an (height, width) image, (1, 1 + num_patches, D).

        The stored G x G patch embedding is resized bicubically (align_corners=False) with the scale factors
        ((height // p + 0.1) / G, (width // p + 0.1) / G), exactly as the DINOv2 code RoMa vendors does; it
        is returned unchanged when the grid already matches and the image is square.
        """
        n = self.pos_embed.shape[1] - 1
        if num_patches == n and height == width:
            return self.pos_embed
        dtype = self.pos_embed.dtype
        pos = self.pos_embed.float()
        g = int(math.sqrt(n))
        d = pos.shape[-1]
        gh, gw = height // self.patch_size, width // self.patch_size
        patch = F.interpolate(
            pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2),
            scale_factor=((gh + 0.1) / g, (gw + 0.1) / g),
            mode="bicubic",
        )
        if patch.shape[-2:] != (gh, gw):
            raise RuntimeError(f"position embedding resized to {tuple(patch.shape[-2:])}, not {(gh, gw)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, d)
        return torch.cat((pos[:, :1], patch), dim=1).to(dtype)

    def forward_features(self, x: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B N D"]:
        """Normalised patch tokens ("x_norm_patchtokens"), row-major over the (H/p, W/p) grid."""
        h, w = x.shape[-2:]
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens.shape[1] - 1, h, w).to(tokens.dtype)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 1:]

    def forward(self, x: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B D h w"]:
        """Patch features as a map (B, D, H // p, W // p)."""
        b, _, h, w = x.shape
        feats = self.forward_features(x)
        return feats.transpose(1, 2).reshape(b, -1, h // self.patch_size, w // self.patch_size)
