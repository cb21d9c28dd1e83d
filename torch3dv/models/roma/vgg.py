"""VGG19-BN feature layers, with torchvision's index layout (``layers.N``), for RoMa's fine features.

RoMa keeps ``torchvision.models.vgg19_bn().features[:40]`` in an ``nn.ModuleList`` called ``layers``; each
3x3 convolution is followed by BatchNorm and ReLU (three indices), each stage by a 2x2 max-pool (one index).
For the default widths the parameterised indices are::

    conv: 0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36      (weight (C_out, C_in, 3, 3), bias)
    bn:   1, 4, 8, 11, 15, 18, 21, 24, 28, 31, 34, 37      (weight, bias, running_mean, running_var,
                                                             num_batches_tracked)

The features at strides 1, 2, 4 and 8 are read *before* each of the four max-pools (64, 128, 256 and 512
channels); the output of the last pool is not used. No torchvision is needed.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from torch3dv.models.roma.config import VGGConfig


class VGG19BN(nn.Module):
    """VGG19-BN ``features[:40]``; ``forward`` returns {stride: feature map} for strides 1, 2, 4, 8."""

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for width, n in zip(config.widths, config.convs_per_stage):
            for _ in range(n):
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                c_in = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Float[Tensor, "B 3 H W"]) -> dict[int, Tensor]:
        feats: dict[int, Tensor] = {}
        stride = 1
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.MaxPool2d):
                feats[stride] = x
                stride *= 2
                if i == len(self.layers) - 1:  # the last pool's output is never used
                    break
            x = layer(x)
        return feats
