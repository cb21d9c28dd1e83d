"""RoMa's two backbones: VGG19-BN for strides 1-8 and a frozen DINOv2 for stride "16" (the 14-pixel grid).

Module names follow the official ``CNNandDinov2``: ``cnn`` (the VGG, ``encoder.cnn.layers.N`` in the
checkpoint) and ``dinov2_vitl14``. The official class hides DINOv2 from its state_dict (its weights come from
a separate file); here it is a regular, frozen submodule, so its keys appear as ``encoder.dinov2_vitl14.*``
(see :func:`torch3dv.models.roma.load_roma_checkpoint`).
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from torch3dv.models.roma.config import RomaConfig
from torch3dv.models.roma.dinov2 import DinoVisionTransformer
from torch3dv.models.roma.vgg import VGG19BN


class CNNandDinov2(nn.Module):
    """Feature pyramid {1, 2, 4, 8: VGG maps, 16: DINOv2 patch features (B, D, H // 14, W // 14)}."""

    def __init__(self, config: RomaConfig) -> None:
        super().__init__()
        self.cnn = VGG19BN(config.vgg)
        self.dinov2_vitl14 = DinoVisionTransformer(config.dinov2)
        self.dinov2_vitl14.requires_grad_(False)  # frozen in RoMa; gradients still reach the input image

    def forward(self, x: Float[Tensor, "B 3 H W"], upsample: bool = False) -> dict[int, Tensor]:
        """Normalised images -> features; ``upsample=True`` (refinement pass) skips the ViT."""
        feats = self.cnn(x)
        if not upsample:
            feats[16] = self.dinov2_vitl14(x)
        return feats
