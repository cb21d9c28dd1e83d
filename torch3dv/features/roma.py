"""RoMa behind the matcher interface: images in, :class:`~torch3dv.features.types.Matches` out.

The network and its sampling live in :mod:`torch3dv.models.roma` (written here, loading the official checkpoint
keys); this wrapper converts the images (grey is repeated to RGB, uint8 is scaled to [0, 1]), samples
``num_matches`` matches per pair from the dense warp ("number of matches for dense methods"), and packs them,
sorted by certainty, into padded :class:`Matches` that feed ``torch3dv.estimate_*`` directly. The keypoints are
already in the library's pixel convention (see :mod:`torch3dv.models.roma.matcher`). Sampling is random: a
``seed`` makes it reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torch3dv.features.images import check_pair, prepare_images
from torch3dv.features.types import Matches, pack_matches


class RoMa(nn.Module):
    """Dense RoMa matcher with sampled matches.

    Args:
        model: a :class:`torch3dv.models.roma.RomaMatcher` (e.g. ``from_pretrained("roma-outdoor", path)``).
        num_matches: matches sampled per pair (default 5,000; RoMa's official default is 10,000).
        seed: seed of the sampling generator (None: torch's global generator).
    """

    def __init__(self, model: nn.Module, num_matches: int | None = None, seed: int | None = 0) -> None:
        super().__init__()
        self.model = model.eval()
        self.num_matches = 5000 if num_matches is None else int(num_matches)
        if self.num_matches < 1:
            raise ValueError(f"num_matches must be positive, got {num_matches}")
        self.seed = seed

    @torch.no_grad()
    def forward(self, image0: Tensor, image1: Tensor) -> Matches:
        """Args: image0 (B, C0, H0, W0), image1 (B, C1, H1, W1), C = 1 or 3, float in [0, 1] or uint8.
        Returns :class:`Matches` (idx0/idx1 are -1: a dense matcher has no keypoint lists)."""
        check_pair(image0, image1)
        p = next(self.model.parameters())
        x0 = prepare_images(image0, 3, p.dtype, "image0", device=p.device)
        x1 = prepare_images(image1, 3, p.dtype, "image1", device=p.device)
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=p.device).manual_seed(self.seed)
        out = self.model(x0, x1, num_matches=self.num_matches, generator=gen)
        B = x0.shape[0]
        keep = [out.mask[b] & (out.scores[b] > 0) for b in range(B)]
        return pack_matches([out.kpts0[b][keep[b]] for b in range(B)], [out.kpts1[b][keep[b]] for b in range(B)],
                            [out.scores[b][keep[b]].clamp(0, 1) for b in range(B)], None, None, out.kpts0.dtype,
                            x0.device, self.num_matches)
