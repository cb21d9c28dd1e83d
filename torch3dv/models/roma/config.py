"""Configuration of the RoMa dense matcher (Edstedt et al., CVPR 2024).

``roma_outdoor_config()`` reproduces the architecture that the official ``romatch`` code builds in
``roma_model`` (used by both ``roma_outdoor`` and ``roma_indoor``: the two differ only in their weights), so
that the official checkpoints load with their own key names. ``roma_tiny_config()`` keeps the same structure
with tiny widths and depths, for tests.

Every field is a plain number; nothing here allocates tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DinoV2Config:
    """The frozen ViT backbone (DINOv2 ViT-L/14 in the official model).

    Attributes:
        embed_dim: token width. depth: number of blocks. num_heads: attention heads.
        patch_size: pixels per patch side. img_size: side of the square image the position embedding was
            trained for (518 for DINOv2, giving a 37 x 37 grid); other sizes interpolate it bicubically.
        mlp_ratio: hidden width of the MLP over ``embed_dim``. layerscale_init: initial LayerScale value
            (the official model has LayerScale, so ``ls1.gamma`` / ``ls2.gamma`` exist).
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 14
    img_size: int = 518
    mlp_ratio: float = 4.0
    layerscale_init: float = 1.0


@dataclass(frozen=True)
class VGGConfig:
    """The VGG19-BN feature layers (torchvision ``vgg19_bn().features[:40]``).

    Attributes:
        widths: output channels of the four stages (strides 1, 2, 4, 8 are read before each max-pool).
        convs_per_stage: 3x3 conv + BN + ReLU units per stage; VGG19 has (2, 2, 4, 4) before the fourth pool.
    """

    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    convs_per_stage: tuple[int, int, int, int] = (2, 2, 4, 4)


@dataclass(frozen=True)
class RefinerConfig:
    """One ``ConvRefiner`` (one per scale).

    Attributes:
        feat_dim: channels of the projected features of *each* image at this scale.
        displacement_emb_dim: output channels of the 1x1 conv embedding the displacement.
        local_corr_radius: radius r of the (2r+1)^2 local correlation window, or None for no correlation.
        hidden_blocks: number of hidden conv blocks. kernel_size: depthwise kernel size.
    """

    feat_dim: int
    displacement_emb_dim: int
    local_corr_radius: int | None = None
    hidden_blocks: int = 8
    kernel_size: int = 5

    @property
    def in_dim(self) -> int:
        corr = 0 if self.local_corr_radius is None else (2 * self.local_corr_radius + 1) ** 2
        return 2 * self.feat_dim + self.displacement_emb_dim + corr


@dataclass(frozen=True)
class RomaConfig:
    """Full RoMa configuration.

    Attributes:
        dinov2, vgg: backbone configurations.
        proj_in: input channels of the 1x1 projection at each scale (the backbone's channels).
        proj_out: projected channels at each scale (the refiner ``feat_dim``; at scale 16 it is also the
            coarse decoder's feature width).
        gp_dim: width of the Gaussian-process posterior (Fourier basis of the target coordinates).
        gp_temperature: temperature T of the cosine kernel exp((cos - 1) / T). gp_sigma_noise: diagonal
            noise added to K_yy before inversion.
        decoder_blocks, decoder_heads: transformer blocks of the coarse decoder (width gp_dim + proj_out[16]).
        cls_res: the coarse decoder classifies into a cls_res x cls_res grid of anchors (plus certainty).
        refiners: one ``RefinerConfig`` per scale.
        coarse_res: (H, W) to which both images are resized for the coarse pass; multiples of the patch size.
        upsample_preds: run the second (refinement-only) pass at ``upsample_res``.
        upsample_res: (H, W) of the second pass and of the returned warp when ``upsample_preds``.
        symmetric: ``__call__`` predicts both directions and samples from both (as the official ``match``).
        attenuate_cert: the official certainty attenuation with the coarse certainty.
        sample_thresh: certainties above this count as 1 when sampling matches.
    """

    dinov2: DinoV2Config = field(default_factory=DinoV2Config)
    vgg: VGGConfig = field(default_factory=VGGConfig)
    proj_in: dict[int, int] = field(default_factory=lambda: {16: 1024, 8: 512, 4: 256, 2: 128, 1: 64})
    proj_out: dict[int, int] = field(default_factory=lambda: {16: 512, 8: 512, 4: 256, 2: 64, 1: 9})
    gp_dim: int = 512
    gp_temperature: float = 0.2
    gp_sigma_noise: float = 0.1
    decoder_blocks: int = 5
    decoder_heads: int = 8
    cls_res: int = 64
    refiners: dict[int, RefinerConfig] = field(
        default_factory=lambda: {
            16: RefinerConfig(feat_dim=512, displacement_emb_dim=128, local_corr_radius=7),
            8: RefinerConfig(feat_dim=512, displacement_emb_dim=64, local_corr_radius=3),
            4: RefinerConfig(feat_dim=256, displacement_emb_dim=32, local_corr_radius=2),
            2: RefinerConfig(feat_dim=64, displacement_emb_dim=16),
            1: RefinerConfig(feat_dim=9, displacement_emb_dim=6),
        }
    )
    coarse_res: tuple[int, int] = (560, 560)
    upsample_preds: bool = True
    upsample_res: tuple[int, int] = (864, 864)
    symmetric: bool = True
    attenuate_cert: bool = True
    sample_thresh: float = 0.05

    def __post_init__(self) -> None:
        p = self.dinov2.patch_size
        if self.coarse_res[0] % p or self.coarse_res[1] % p:
            raise ValueError(f"coarse_res {self.coarse_res} must be multiples of the patch size {p}")
        if set(self.proj_in) != {16, 8, 4, 2, 1} or set(self.proj_out) != set(self.proj_in):
            raise ValueError("proj_in / proj_out must have the scales 16, 8, 4, 2, 1")
        if set(self.refiners) != set(self.proj_in):
            raise ValueError("refiners must have the scales 16, 8, 4, 2, 1")
        for s, r in self.refiners.items():
            if r.feat_dim != self.proj_out[s]:
                raise ValueError(f"refiner {s}: feat_dim {r.feat_dim} != proj_out[{s}] {self.proj_out[s]}")
        if self.proj_in[16] != self.dinov2.embed_dim:
            raise ValueError("proj_in[16] must equal dinov2.embed_dim")
        vgg_in = dict(zip((1, 2, 4, 8), self.vgg.widths))
        for s in (1, 2, 4, 8):
            if self.proj_in[s] != vgg_in[s]:
                raise ValueError(f"proj_in[{s}] must equal the VGG width at stride {s} ({vgg_in[s]})")
        if (self.gp_dim + self.proj_out[16]) % self.decoder_heads:
            raise ValueError("gp_dim + proj_out[16] must be divisible by decoder_heads")

    @property
    def decoder_dim(self) -> int:
        return self.gp_dim + self.proj_out[16]


def roma_outdoor_config(
    coarse_res: int | tuple[int, int] = 560, upsample_res: int | tuple[int, int] = 864
) -> RomaConfig:
    """The official RoMa architecture and inference settings (``romatch.roma_outdoor`` defaults).

    Args:
        coarse_res: side (or (H, W)) of the coarse pass; multiples of 14. Official default 560.
        upsample_res: side (or (H, W)) of the refinement pass and of the output warp. Official default 864.
    """
    c = coarse_res if isinstance(coarse_res, tuple) else (coarse_res, coarse_res)
    u = upsample_res if isinstance(upsample_res, tuple) else (upsample_res, upsample_res)
    return RomaConfig(coarse_res=c, upsample_res=u)


def roma_indoor_config(
    coarse_res: int | tuple[int, int] = 560, upsample_res: int | tuple[int, int] = 864
) -> RomaConfig:
    """Same architecture and defaults as :func:`roma_outdoor_config` (the indoor model differs in weights)."""
    return roma_outdoor_config(coarse_res, upsample_res)


def roma_tiny_config() -> RomaConfig:
    """A tiny RoMa with the official structure (all modules, all scales), for tests: ~0.1 M parameters.

    Coarse pass at 56 x 56 (a 4 x 4 ViT grid), refinement pass at 64 x 64.
    """
    return RomaConfig(
        dinov2=DinoV2Config(embed_dim=32, depth=2, num_heads=2, patch_size=14, img_size=56),
        vgg=VGGConfig(widths=(8, 16, 16, 32), convs_per_stage=(2, 2, 4, 4)),
        proj_in={16: 32, 8: 32, 4: 16, 2: 16, 1: 8},
        proj_out={16: 16, 8: 16, 4: 8, 2: 8, 1: 3},
        gp_dim=16,
        decoder_blocks=1,
        decoder_heads=2,
        cls_res=8,
        refiners={
            16: RefinerConfig(feat_dim=16, displacement_emb_dim=8, local_corr_radius=2, hidden_blocks=1),
            8: RefinerConfig(feat_dim=16, displacement_emb_dim=8, local_corr_radius=1, hidden_blocks=1),
            4: RefinerConfig(feat_dim=8, displacement_emb_dim=4, local_corr_radius=1, hidden_blocks=1),
            2: RefinerConfig(feat_dim=8, displacement_emb_dim=4, hidden_blocks=1),
            1: RefinerConfig(feat_dim=3, displacement_emb_dim=2, hidden_blocks=1),
        },
        coarse_res=(56, 56),
        upsample_preds=True,
        upsample_res=(64, 64),
    )
