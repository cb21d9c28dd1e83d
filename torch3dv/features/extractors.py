"""Keypoint detectors/descriptors behind one interface: images (B, C, H, W) in, :class:`LocalFeatures` out.

* :class:`SIFT`: kornia's ``SIFTFeatureScaleSpace`` (DoG scale space with sub-pixel refinement, RootSIFT).
* :class:`DISK`, :class:`ALIKED`: kornia's networks; weights via :func:`torch3dv.models.from_pretrained`.

All three use kornia's pixel frame, whose pixel centres are integers (kornia's "Local features" conventions:
DISK returns integer heatmap positions, ALIKED maps its [-1, 1] coordinates with ``(W - 1, H - 1)``, i.e.
``align_corners=True``, and SIFT's LAF centres are in the frame of ``laf_from_center_scale_ori``), which is the
README's frame: no shift is applied.

``forward`` runs without gradient (feature extraction for geometry); call the underlying ``model`` directly
for training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torch3dv.features.images import prepare_images
from torch3dv.features.types import LocalFeatures, pad_features


class _Extractor(nn.Module):
    channels = 3
    desc_dim = 128

    def _dtype(self) -> torch.dtype:
        p = next(iter(self.parameters()), None)
        return p.dtype if p is not None else torch.float32

    def _device(self) -> torch.device | None:
        p = next(iter(self.parameters()), None)
        if p is None:
            p = next(iter(self.buffers()), None)
        return p.device if p is not None else None


class SIFT(_Extractor):
    """DoG + RootSIFT features (kornia ``SIFTFeatureScaleSpace``), up to ``max_keypoints`` per image.

    Args:
        max_keypoints: keypoint budget per image.
        upright: skip orientation estimation (faster; fine for small in-plane rotations).
        rootsift: RootSIFT descriptors (Hellinger kernel), else plain SIFT.
    """

    channels = 1

    def __init__(self, max_keypoints: int = 2048, upright: bool = False, rootsift: bool = True) -> None:
        super().__init__()
        from kornia.feature import SIFTFeatureScaleSpace

        self.model = SIFTFeatureScaleSpace(num_features=max_keypoints, upright=upright, rootsift=rootsift)

    @torch.no_grad()
    def forward(self, images: Tensor) -> LocalFeatures:
        """Args: images (B, C, H, W), float in [0, 1] or uint8, grey or RGB. Returns :class:`LocalFeatures`."""
        from kornia.feature import get_laf_center, laf_is_filled

        x = prepare_images(images, 1, torch.float32, device=self._device())
        lafs, resp, desc = self.model(x)
        filled = laf_is_filled(lafs)
        kp = get_laf_center(lafs)
        items = [(kp[b][filled[b]], desc[b][filled[b]], resp[b][filled[b]]) for b in range(x.shape[0])]
        return pad_features(items, (x.shape[-1], x.shape[-2]), desc.shape[-1], kp.dtype, x.device)


class DISK(_Extractor):
    """DISK features (kornia ``DISK``): the ``max_keypoints`` strongest heatmap maxima per image.

    Args:
        model: a ``kornia.feature.DISK`` (from ``torch3dv.models.from_pretrained("disk", path)`` or
            ``build_model("disk", "tiny")``).
        max_keypoints: keypoint budget per image.
        window_size: NMS window, pixels.
    """

    def __init__(self, model: nn.Module, max_keypoints: int = 2048, window_size: int = 5) -> None:
        super().__init__()
        self.model = model.eval()
        self.max_keypoints = max_keypoints
        self.window_size = window_size
        self.desc_dim = model.desc_dim

    @torch.no_grad()
    def forward(self, images: Tensor) -> LocalFeatures:
        """Args: images (B, C, H, W), float in [0, 1] or uint8, grey or RGB, any size (zero-padded to a multiple
        of 16 inside kornia). Returns :class:`LocalFeatures`."""
        x = prepare_images(images, 3, self._dtype(), device=self._device())
        feats = self.model(x, n=self.max_keypoints, window_size=self.window_size, pad_if_not_divisible=True)
        items = [(f.keypoints, f.descriptors, f.detection_scores) for f in feats]
        return pad_features(items, (x.shape[-1], x.shape[-2]), self.desc_dim, x.dtype, x.device)


class ALIKED(_Extractor):
    """ALIKED features (kornia ``ALIKED``) in top-k mode: the ``max_keypoints`` strongest maxima per image.

    Args:
        model: a ``kornia.feature.ALIKED`` (from ``torch3dv.models.from_pretrained("aliked-n16", path)`` or
            ``build_model("aliked-n16", "tiny")``).
        max_keypoints: keypoint budget per image (top-k mode); ``detection_threshold`` > 0 switches to
            threshold mode with this budget as a cap.
        detection_threshold: see above.
    """

    def __init__(self, model: nn.Module, max_keypoints: int = 2048, detection_threshold: float = 0.0) -> None:
        super().__init__()
        self.model = model.eval()
        dkd = self.model.dkd
        dkd.top_k = -1 if detection_threshold > 0 else max_keypoints
        dkd.scores_th = detection_threshold
        dkd.n_limit = max_keypoints
        self.desc_dim = int(self.model.desc_head.sf_conv.out_channels)

    @torch.no_grad()
    def forward(self, images: Tensor) -> LocalFeatures:
        """Args: images (B, C, H, W), float in [0, 1] or uint8, grey or RGB, any size. Returns
        :class:`LocalFeatures`."""
        x = prepare_images(images, 3, self._dtype(), device=self._device())
        feats = self.model(x)
        items = [(f.keypoints, f.descriptors, f.keypoint_scores) for f in feats]
        D = feats[0].descriptors.shape[-1] if feats else self.desc_dim
        return pad_features(items, (x.shape[-1], x.shape[-2]), D, x.dtype, x.device)
