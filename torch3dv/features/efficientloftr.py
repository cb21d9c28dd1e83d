"""EfficientLoFTR semi-dense matcher on transformers' network: images in, padded :class:`Matches` out.

The backbone, the coarse transformer and the fine feature pyramid are transformers'
``EfficientLoFTRForKeypointMatching`` submodules (``model.efficientloftr``, ``model.refinement_layer``); the
parameter-free matching head (coarse mutual nearest neighbours, two-stage fine refinement) is written here after
the official zju3dv code, because transformers' own head (5.24) does not follow it: its two rows of coarse matches
are indexed by image-1 cell and by image-0 cell respectively, yet the fine stage and the post-processing pair them
entry by entry (so cells that are not matches get refined together); with more than one pair it interleaves the
pairs' match indices; its first fine stage gathers the window offsets along the match axis, so every first-stage
offset is that of window pixel 0; and both images of a pair must have one size. Here:

* pairs are matched as one batch; images are zero-padded at the bottom / right to a common size that is a multiple
  of 32 (coarse stride 8 times the attention aggregation 4), coarse cells in the padding are masked out of the
  dual softmax and the border removal counts from the real image edge, as the official code does with masks;
* the first fine stage scales the features by the full fine channel count (the official code; transformers uses
  the channels of the first slice only);
* keypoints: the network places coarse cell ``(r, c)`` at ``8 * (c, r)`` and adds fine offsets; the official
  models learnt those positions from MegaDepth labels in COLMAP's convention (intrinsics from COLMAP, resizing by
  plain scaling of coordinates, as transformers' post-processing also does), where the centre of the top-left
  pixel is (0.5, 0.5). 0.5 is subtracted here, once, to reach the README frame (as for LoFTR); the padding never
  moves coordinates (it is at the bottom / right) and no resizing happens;
* scores are the coarse dual-softmax confidences, in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch3dv.features.images import check_pair, prepare_images
from torch3dv.features.types import Matches, pack_matches


def size_multiple(config) -> int:
    """Image sizes the network takes: multiples of the coarse stride times the attention aggregation stride."""
    return math.prod(config.stage_stride) * math.lcm(config.q_aggregation_stride, config.kv_aggregation_stride)


def _allowed_cells(h: int, w: int, valid_h: int, valid_w: int, border: int, device: torch.device) -> Tensor:
    """(h * w,) bool: coarse cells inside the real image and at least ``border`` cells from its edges."""
    r = torch.arange(h, device=device)[:, None]
    c = torch.arange(w, device=device)[None, :]
    ok = (r >= border) & (r < valid_h - border) & (c >= border) & (c < valid_w - border)
    return ok.reshape(-1)


def coarse_matches(coarse: Tensor, valid0: tuple[int, int], valid1: tuple[int, int], config,
                   threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours of the dual-softmax confidence between the coarse cells of both images.

    Args:
        coarse: (B, 2, C, h, w) transformed coarse features of image 0 and image 1.
        valid0, valid1: (rows, columns) of coarse cells that lie in each real (unpadded) image.
        config: the transformers ``EfficientLoFTRConfig`` (temperature, border removal, softmax skip).
        threshold: keep matches whose confidence exceeds it.

    Returns:
        (b, i, j, conf): pair index, flat cell index in image 0 and in image 1, confidence; (M,) each.
    """
    C, h, w = coarse.shape[-3:]
    f = coarse.flatten(3).transpose(-1, -2) / C**0.5                       # (B, 2, L, C)
    sim = (f[:, 0] @ f[:, 1].transpose(-1, -2)) / config.coarse_matching_temperature
    in0 = _allowed_cells(h, w, *valid0, 0, coarse.device)
    in1 = _allowed_cells(h, w, *valid1, 0, coarse.device)
    if not (bool(in0.all()) and bool(in1.all())):  # padding: out of both softmaxes, as the official masks
        sim = sim.masked_fill(~(in0[:, None] & in1[None, :]), torch.finfo(sim.dtype).min)
    conf = sim if config.coarse_matching_skip_softmax else sim.softmax(1) * sim.softmax(2)
    bd = int(config.coarse_matching_border_removal)
    ok0 = _allowed_cells(h, w, *valid0, max(bd, 0), coarse.device)
    ok1 = _allowed_cells(h, w, *valid1, max(bd, 0), coarse.device)
    mask = (conf > threshold) & ok0[None, :, None] & ok1[None, None, :]
    mask &= conf == conf.amax(2, keepdim=True)
    mask &= conf == conf.amax(1, keepdim=True)
    has, j_all = mask.max(2)                                               # first partner on (degenerate) ties
    b, i = torch.nonzero(has, as_tuple=True)
    j = j_all[b, i]
    return b, i, j, conf[b, i, j]


def _windows(fmap: Tensor, b: Tensor, rows: Tensor, cols: Tensor, size: int, stride: int, pad: int) -> Tensor:
    """(M, size * size, C) windows of ``fmap`` (B, C, H, W) at ``(rows, cols) * stride - pad``, row-major, as
    ``F.unfold(kernel_size=size, stride=stride, padding=pad)`` lays them out, for the listed cells only."""
    if pad:
        fmap = F.pad(fmap, (pad, pad, pad, pad))
    off = torch.arange(size, device=fmap.device)
    r = rows[:, None] * stride + off
    c = cols[:, None] * stride + off
    win = fmap[b[:, None, None], :, r[:, :, None], c[:, None, :]]           # (M, size, size, C)
    return win.reshape(win.shape[0], size * size, -1)


def refine(win0: Tensor, win1: Tensor, kpts0: Tensor, kpts1: Tensor, config, fine_scale: float,
           stage1_channels: int | None = None) -> tuple[Tensor, Tensor]:
    """Two-stage fine refinement of coarse matches (the official ``FineMatching``).

    Stage 1 picks the dual-softmax maximum between the ``W x W`` window of image 0 and the central ``W x W`` of the
    ``(W + 2) x (W + 2)`` window of image 1 (first ``C - s`` channels) and moves both points to those pixels.
    Stage 2 moves the image-1 point by the expectation of a 3 x 3 softmax (last ``s`` channels) around it, indexed
    as the official code indexes it (centred one pixel up-left in the padded window, wrapping at its edge).

    Args:
        win0: (M, W*W, C) fine features around each match in image 0; win1: (M, (W+2)^2, C) in image 1.
        kpts0, kpts1: (M, 2) coarse match positions, pixels.
        config: ``EfficientLoFTRConfig`` (slice dim, regression temperature).
        fine_scale: image pixels per fine-feature pixel.
        stage1_channels: the stage-1 features are divided by its square root; None: all C channels, as the official
            code (transformers 5.24 divides by the C - s channels of the slice).

    Returns:
        Refined (M, 2) positions in image 0 and image 1, pixels.
    """
    M, WW, C = win0.shape
    W = math.isqrt(WW)
    s = int(config.fine_matching_slice_dim)
    dt = kpts0.dtype
    norm = (C if stage1_channels is None else stage1_channels) ** 0.5
    a0, a1 = win0[..., : C - s] / norm, win1[..., : C - s] / norm
    conf = a0 @ a1.transpose(-1, -2)                                       # (M, WW, (W+2)^2)
    conf = conf.softmax(1) * conf.softmax(2)
    conf = conf.reshape(M, WW, W + 2, W + 2)[..., 1:-1, 1:-1].reshape(M, WW * WW)
    idx = conf.argmax(-1)
    l, r = idx // WW, idx % WW

    def offset(k: Tensor) -> Tensor:  # window pixel k (row-major) -> (x, y) from the window centre
        return torch.stack([k % W, k // W], -1).to(dt) - (W // 2) + 0.5

    k0 = kpts0 + offset(l) * fine_scale
    k1 = kpts1 + offset(r) * fine_scale
    g0 = win0[torch.arange(M, device=win0.device), l, C - s:]              # (M, s)
    g1 = win1[..., C - s:].reshape(M, W + 2, W + 2, s) / s**0.5
    d = torch.arange(-1, 2, device=win0.device)
    rows = (r // W)[:, None] + d
    cols = (r % W)[:, None] + d
    rows, cols = rows % (W + 2), cols % (W + 2)                            # the official negative-index wrap
    m = torch.arange(M, device=win0.device)[:, None, None]
    patch = g1[m, rows[:, :, None], cols[:, None, :]]                      # (M, 3, 3, s)
    heat = (patch * g0[:, None, None, :]).sum(-1).reshape(M, 9)
    heat = (heat / config.fine_matching_regress_temperature).softmax(-1).reshape(M, 3, 3)
    dd = d.to(heat.dtype)
    shift = torch.stack([(heat.sum(1) * dd).sum(-1), (heat.sum(2) * dd).sum(-1)], -1)
    return k0, k1 + shift.to(dt) * fine_scale


class EfficientLoFTR(nn.Module):
    """EfficientLoFTR semi-dense matcher, keeping the ``num_matches`` most confident matches per pair.

    Args:
        model: a ``transformers.EfficientLoFTRForKeypointMatching``
            (``torch3dv.models.from_pretrained("efficientloftr", path)``).
        num_matches: keep at most this many matches per pair, by confidence (None: all).
        threshold: coarse confidence threshold (None: the model config's ``coarse_matching_threshold``, 0.2).
    """

    _SHIFT = 0.5  # official models: centre of the top-left pixel at (0.5, 0.5) (module docstring)

    def __init__(self, model: nn.Module, num_matches: int | None = None, threshold: float | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.num_matches = num_matches
        self.threshold = threshold

    @torch.no_grad()
    def forward(self, image0: Tensor, image1: Tensor) -> Matches:
        """Args: image0 (B, C0, H0, W0), image1 (B, C1, H1, W1). Returns :class:`Matches` (idx0/idx1 are -1)."""
        check_pair(image0, image1)
        p = next(self.model.parameters())
        x0 = prepare_images(image0, 1, p.dtype, "image0", device=p.device)
        x1 = prepare_images(image1, 1, p.dtype, "image1", device=p.device)
        cfg = self.model.config
        B, (H0, W0), (H1, W1) = x0.shape[0], x0.shape[-2:], x1.shape[-2:]
        k = size_multiple(cfg)
        H, W = -(-max(H0, H1) // k) * k, -(-max(W0, W1) // k) * k
        pixels = x0.new_zeros(B, 2, 1, H, W)
        pixels[:, 0, :, :H0, :W0] = x0
        pixels[:, 1, :, :H1, :W1] = x1
        feats = self.model.efficientloftr(pixel_values=pixels).feature_maps
        coarse = feats[0]                                                  # (B, 2, C, h, w)
        C, h, w = coarse.shape[-3:]
        sc = H // h
        valid0, valid1 = (-(-H0 // sc), -(-W0 // sc)), (-(-H1 // sc), -(-W1 // sc))
        thr = cfg.coarse_matching_threshold if self.threshold is None else self.threshold
        b, i, j, conf = coarse_matches(coarse, valid0, valid1, cfg, thr)

        def cell_xy(n: Tensor) -> Tensor:
            return torch.stack([n % w, n // w], -1).to(p.dtype) * sc

        kp0, kp1 = cell_xy(i), cell_xy(j)
        if b.numel():
            fine = self.model.refinement_layer.forward_pyramid(coarse.reshape(2 * B, C, h, w) / C**0.5,
                                                               list(reversed(feats[1:])))
            stride = fine.shape[-2] // h
            if cfg.fine_kernel_size != stride:
                raise ValueError(f"EfficientLoFTR config: fine_kernel_size {cfg.fine_kernel_size} must equal the "
                                 f"coarse-to-fine stride {stride}")
            fine = fine.reshape(B, 2, *fine.shape[1:])
            win0 = _windows(fine[:, 0], b, i // w, i % w, stride, stride, 0)
            win1 = _windows(fine[:, 1], b, j // w, j % w, stride + 2, stride, 1)
            kp0, kp1 = refine(win0, win1, kp0, kp1, cfg, H / fine.shape[-2])
        kp0, kp1 = kp0 - self._SHIFT, kp1 - self._SHIFT
        inside = ((kp0 >= -0.5) & (kp0 <= kp0.new_tensor([W0 - 0.5, H0 - 0.5]))).all(-1)
        inside &= ((kp1 >= -0.5) & (kp1 <= kp1.new_tensor([W1 - 0.5, H1 - 0.5]))).all(-1)
        conf = conf.clamp(0, 1).to(p.dtype)
        sel = [inside & (b == n) for n in range(B)]
        return pack_matches([kp0[s] for s in sel], [kp1[s] for s in sel], [conf[s] for s in sel], None, None,
                            p.dtype, x0.device, self.num_matches)
