"""RoMa dense matcher: images in, a dense warp with certainty, and sampled pixel matches out.

Coordinates. RoMa's warps use normalised coordinates in which the image spans [-1, 1] from edge to edge
(``grid_sample(align_corners=False)``): the centre of pixel k of an n-pixel side is ``-1 + (2k + 1) / n``.
:func:`to_pixel_coordinates` converts them, once, to the library convention (README, Conventions: the centre
of the top-left pixel is (0, 0)): ``u = (x + 1) W / 2 - 1/2``, ``v = (y + 1) H / 2 - 1/2``. (The official
``to_pixel_coordinates`` returns ``(x + 1) W / 2`` instead, i.e. pixel centres at half-integers.)

Resolution. Both images are resized (bicubic, antialiased, clamped to [0, 1]; the official code resizes PIL
images bicubically) to ``config.coarse_res`` for the coarse pass and, when ``config.upsample_preds``, to
``config.upsample_res`` for a second, refinement-only pass; the returned warp has the final pass's resolution,
not the input's. Sampled keypoints are scaled back to each input image's own size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from torch3dv.models.roma.config import RomaConfig
from torch3dv.models.roma.decoder import Decoder
from torch3dv.models.roma.encoder import CNNandDinov2
from torch3dv.models.roma.gp import grid_coordinates

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RomaMatches(NamedTuple):
    """Matches sampled from a RoMa warp.

    Attributes:
        kpts0: (B, N, 2) pixels in image 0 (README convention). kpts1: (B, N, 2) pixels in image 1.
        scores: (B, N) certainty in [0, 1] of each match (before the sampling threshold).
        mask: (B, N) False marks padding (fewer than N matches with non-zero certainty).
    """

    kpts0: Tensor
    kpts1: Tensor
    scores: Tensor
    mask: Tensor


def to_pixel_coordinates(coords: Float[Tensor, "*B 2"], height: int, width: int) -> Float[Tensor, "*B 2"]:
    """RoMa normalised coordinates (x, y) -> pixels (u, v) with the top-left pixel centre at (0, 0).

    Args:
        coords: (..., 2) normalised coordinates, the image spanning [-1, 1] edge to edge
            (align_corners=False).
        height, width: image size in pixels.
    """
    u = (coords[..., 0] + 1) * (width / 2) - 0.5
    v = (coords[..., 1] + 1) * (height / 2) - 0.5
    return torch.stack((u, v), dim=-1)


def to_normalized_coordinates(
    pixels: Float[Tensor, "*B 2"], height: int, width: int
) -> Float[Tensor, "*B 2"]:
    """Inverse of :func:`to_pixel_coordinates`."""
    x = (pixels[..., 0] + 0.5) * (2 / width) - 1
    y = (pixels[..., 1] + 0.5) * (2 / height) - 1
    return torch.stack((x, y), dim=-1)


def _check_images(image0: Tensor, image1: Tensor) -> None:
    for name, im in (("image0", image0), ("image1", image1)):
        if not isinstance(im, Tensor) or im.ndim != 4 or im.shape[1] != 3:
            shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
            raise ValueError(f"{name} must have shape (B, 3, H, W), got {shape}")
        if not im.is_floating_point():
            raise ValueError(f"{name} must be a float tensor with values in [0, 1], got {im.dtype}")
    if image0.shape[0] != image1.shape[0]:
        raise ValueError(f"image0 and image1 have batch sizes {image0.shape[0]} and {image1.shape[0]}")
    if image0.device != image1.device:
        raise ValueError(f"image0 is on {image0.device} but image1 is on {image1.device}")


def _weighted_topk_sample(
    weights: Tensor, k: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """k indices per row drawn without replacement with probability proportional to ``weights`` (B, N).

    Uses exponential keys (the Gumbel-top-k trick): the k largest ``log w - log E``, E ~ Exp(1), are
    distributed as k successive draws of ``torch.multinomial(w, k, replacement=False)``. Zero weights are
    never drawn while a positive one remains; rows with fewer than k positive weights return them padded
    with ``valid=False``.
    """
    u = torch.rand(weights.shape, device=weights.device, dtype=weights.dtype, generator=generator)
    exp = -torch.log(u.clamp_min(torch.finfo(weights.dtype).tiny))
    keys = torch.log(weights) - torch.log(exp)
    idx = keys.topk(k, dim=1).indices
    return idx, torch.gather(weights, 1, idx) > 0


def _kde(x: Tensor, valid: Tensor, std: float, max_elems: int = 1 << 24) -> Tensor:
    """Gaussian kernel density sum_j exp(-|x_i - x_j|^2 / (2 std^2)) over valid j, for x (B, N, d)."""
    b, n, _ = x.shape
    chunk = max(1, max_elems // max(1, b * n))
    w = valid.to(x.dtype)[:, None, :]
    out = []
    for i in range(0, n, chunk):
        d2 = torch.cdist(x[:, i:i + chunk], x).square()
        out.append(((-d2 / (2 * std**2)).exp() * w).sum(-1))
    return torch.cat(out, dim=1)


class RomaMatcher(nn.Module):
    """RoMa (Edstedt et al., CVPR 2024) with the official module layout (``encoder.*``, ``decoder.*``).

    * ``model(image0, image1, num_matches)`` (``forward``): images -> :class:`RomaMatches`, the official
      ``match`` + ``sample`` pipeline.
    * :meth:`match`: images -> dense warp and certainty. :meth:`sample`: warp -> pixel matches.
    * :meth:`dense`: the raw network on normalised, resized images -> per-scale warps and certainty logits.

    The model is built in eval mode; BatchNorm layers use their running statistics only in eval mode.
    Gradient mode is the caller's (wrap inference in ``torch.no_grad()``; DINOv2 weights are frozen).
    """

    def __init__(self, config: RomaConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CNNandDinov2(config)
        self.decoder = Decoder(config)

    # ------------------------------------------------------------------ raw network
    def dense(
        self,
        im_A: Float[Tensor, "B 3 H W"],
        im_B: Float[Tensor, "B 3 H W"],
        bidirectional: bool = False,
        upsample: bool = False,
        flow: Tensor | None = None,
        certainty: Tensor | None = None,
        scale_factor: float = 1.0,
    ) -> dict[int, dict[str, Tensor]]:
        """The network on ImageNet-normalised images of equal size.

        Args:
            im_A, im_B: (B, 3, H, W) normalised images (H, W multiples of 14 unless ``upsample``).
            bidirectional: also predict B -> A; outputs then have batch 2B (A -> B first, as the official
                ``forward_symmetric``).
            upsample: refinement pass (no ViT, scales 8..1) starting from ``flow``/``certainty``.
            flow, certainty: (B or 2B, 2 / 1, h, w) from a previous pass (its stride-1 output).
            scale_factor: sqrt(pixels of this pass / pixels of the coarse pass).

        Returns:
            {stride: {"flow": (B', 2, h_s, w_s) normalised coordinates in the other image,
                      "certainty": (B', 1, h_s, w_s) logits}}.
        """
        b = im_A.shape[0]
        feats = self.encoder(torch.cat((im_A, im_B)), upsample=upsample)
        f_a = {s: f[:b] for s, f in feats.items()}
        f_b = {s: f[b:] for s, f in feats.items()}
        if bidirectional:
            f1, f2 = feats, {s: torch.cat((f_b[s], f_a[s])) for s in feats}
        else:
            f1, f2 = f_a, f_b
        return self.decoder(f1, f2, flow=flow, certainty=certainty, scale_factor=scale_factor)

    # ------------------------------------------------------------------ inference
    @staticmethod
    def _prepare(image: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)
            image = image.clamp(0, 1)
        mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype)[:, None, None]
        return (image - mean) / std

    def match(
        self,
        image0: Float[Tensor, "B 3 H0 W0"],
        image1: Float[Tensor, "B 3 H1 W1"],
        bidirectional: bool = False,
    ) -> tuple[Float[Tensor, "B H Wo 4"], Float[Tensor, "B H Wo"]]:
        """Dense warp image0 -> image1 and its certainty.

        Args:
            image0, image1: (B, 3, H, W) RGB in [0, 1]; sizes may differ (both are resized, see module doc).
            bidirectional: also return the warp image1 -> image0, concatenated along the width as in the
                official ``match`` with ``symmetric=True``.

        Returns:
            warp: (B, H, W, 4) with (x0, y0, x1, y1) RoMa normalised coordinates (pixel (i, j) of the output
                grid of image 0 -> its match in image 1), clamped to [-1, 1]; with ``bidirectional``
                (B, H, 2W, 4), the right half holding (x0, y0, x1, y1) for the grid of image 1.
                (H, W) = ``config.upsample_res`` if ``config.upsample_preds`` else ``config.coarse_res``.
            certainty: (B, H, W) (or (B, H, 2W)) in [0, 1]; 0 where the raw warp left [-1, 1].
        """
        _check_images(image0, image1)
        cfg = self.config
        b = image0.shape[0]
        hs, ws = cfg.coarse_res
        coarse = self.dense(self._prepare(image0, (hs, ws)), self._prepare(image1, (hs, ws)), bidirectional)
        final, (ho, wo) = coarse, (hs, ws)
        if cfg.upsample_preds:
            ho, wo = cfg.upsample_res
            final = self.dense(
                self._prepare(image0, (ho, wo)), self._prepare(image1, (ho, wo)), bidirectional,
                upsample=True,
                flow=coarse[1]["flow"], certainty=coarse[1]["certainty"],
                scale_factor=math.sqrt(ho * wo / (hs * ws)),
            )
        flow, logits = final[1]["flow"], final[1]["certainty"]
        if cfg.attenuate_cert:
            # official: certainty -= 0.5 * c16 * (c16 < 0), c16 the coarse-pass stride-16 logits, upsampled
            low = F.interpolate(coarse[16]["certainty"], size=(ho, wo), mode="bilinear", align_corners=False)
            logits = logits - 0.5 * low * (low < 0)
        certainty = logits.sigmoid()[:, 0]
        flow = flow.permute(0, 2, 3, 1)
        certainty = certainty.masked_fill((flow.abs() > 1).any(dim=-1), 0.0)
        flow = flow.clamp(-1, 1)
        grid = grid_coordinates(b, ho, wo, flow.device, flow.dtype).permute(0, 2, 3, 1)
        if not bidirectional:
            return torch.cat((grid, flow), dim=-1), certainty
        a_to_b, b_to_a = flow[:b], flow[b:]
        warp = torch.cat((torch.cat((grid, a_to_b), -1), torch.cat((b_to_a, grid), -1)), dim=2)
        return warp, torch.cat((certainty[:b], certainty[b:]), dim=2)

    def sample(
        self,
        warp: Float[Tensor, "B H W 4"],
        certainty: Float[Tensor, "B H W"],
        num: int = 10_000,
        image0_size: tuple[int, int] | None = None,
        image1_size: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> RomaMatches:
        """Samples ``num`` matches per image pair from a dense warp (official "threshold_balanced" mode).

        Certainties above ``config.sample_thresh`` count as 1; 4 * num candidates are drawn without
        replacement proportionally to that; each candidate gets the Gaussian kernel density (std 0.1 in the
        4D normalised match space) of the candidates, and ``num`` of them are drawn without replacement with
        probability proportional to 1 / (1 + density) (1e-7 where the density is below 10), which spreads
        the matches over the image. Each row of the batch is sampled independently.

        Args:
            warp: (B, H, W, 4) normalised (x0, y0, x1, y1) from :meth:`match` (either layout).
            certainty: (B, H, W) in [0, 1].
            num: matches per pair.
            image0_size, image1_size: (height, width) in pixels of the images the keypoints refer to; default
                the warp's (H, W) (pass them for a bidirectional warp, whose width is 2W).
            generator: random generator for reproducible sampling.

        Returns:
            :class:`RomaMatches` with kpts0, kpts1 (B, num, 2) pixels (README convention), scores (B, num)
            the certainties, and mask (B, num) (False where fewer than num matches had non-zero certainty).
        """
        if warp.ndim != 4 or warp.shape[-1] != 4:
            raise ValueError(f"warp must have shape (B, H, W, 4), got {tuple(warp.shape)}")
        if certainty.shape != warp.shape[:-1]:
            raise ValueError(
                f"certainty must have shape {tuple(warp.shape[:-1])}, got {tuple(certainty.shape)}"
            )
        if num < 1:
            raise ValueError(f"num must be positive, got {num}")
        b = warp.shape[0]
        size0 = image0_size or (warp.shape[1], warp.shape[2])
        size1 = image1_size or (warp.shape[1], warp.shape[2])
        matches = warp.reshape(b, -1, 4)
        cert = certainty.reshape(b, -1)
        n = cert.shape[1]
        weights = torch.where(cert > self.config.sample_thresh, torch.ones_like(cert), cert)
        k1 = min(4 * num, n)
        idx1, valid1 = _weighted_topk_sample(weights, k1, generator)
        cand = torch.gather(matches, 1, idx1[..., None].expand(-1, -1, 4))
        cand_cert = torch.gather(cert, 1, idx1)
        density = _kde(cand, valid1, std=0.1)
        p = torch.where(density < 10, torch.full_like(density, 1e-7), 1 / (density + 1))
        p = torch.where(valid1, p, torch.zeros_like(p))
        k2 = min(num, k1)
        idx2, valid2 = _weighted_topk_sample(p, k2, generator)
        out = torch.gather(cand, 1, idx2[..., None].expand(-1, -1, 4))
        scores = torch.gather(cand_cert, 1, idx2)
        if k2 < num:  # fewer grid points than requested matches: pad
            pad = num - k2
            out = F.pad(out, (0, 0, 0, pad))
            scores = F.pad(scores, (0, pad))
            valid2 = F.pad(valid2, (0, pad), value=False)
        kpts0 = to_pixel_coordinates(out[..., :2], *size0)
        kpts1 = to_pixel_coordinates(out[..., 2:], *size1)
        return RomaMatches(kpts0, kpts1, scores, valid2)

    def forward(
        self,
        image0: Float[Tensor, "B 3 H0 W0"],
        image1: Float[Tensor, "B 3 H1 W1"],
        num_matches: int = 10_000,
        generator: torch.Generator | None = None,
    ) -> RomaMatches:
        """Images -> sampled matches in pixels of each input image (official ``match`` + ``sample``).

        With ``config.symmetric`` (official) the warp is predicted in both directions and matches are
        sampled from both.
        """
        warp, certainty = self.match(image0, image1, bidirectional=self.config.symmetric)
        return self.sample(
            warp, certainty, num_matches,
            image0_size=tuple(image0.shape[-2:]), image1_size=tuple(image1.shape[-2:]), generator=generator,
        )


def build_roma(config: RomaConfig) -> RomaMatcher:
    """Builds a RoMa matcher (random weights, eval mode) for ``config``; load weights with
    :func:`torch3dv.models.roma.load_roma_checkpoint`."""
    return RomaMatcher(config).eval()


__all__ = ["RomaMatcher", "RomaMatches", "build_roma", "to_normalized_coordinates", "to_pixel_coordinates"]
