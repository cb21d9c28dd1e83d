"""Local features and matching: one interface over SIFT, DISK / ALIKED + LightGlue, LoFTR, EfficientLoFTR and RoMa.

Images go in as (B, C, H, W) float in [0, 1] or uint8, grey or RGB; keypoints come out in pixels with the
README's convention (centre of the top-left pixel at (0, 0)); matches come out as padded, typed
:class:`Matches` that feed ``torch3dv.estimate_*`` directly::

    matcher = build_matcher("sift")
    m = matcher(image0, image1)
    est = torch3dv.estimate_relative_pose(m.kpts0, m.kpts1, K0, K1, mask=m.mask)
"""

from torch3dv.features.efficientloftr import EfficientLoFTR
from torch3dv.features.roma import RoMa
from torch3dv.features.extractors import ALIKED, DISK, SIFT
from torch3dv.features.images import prepare_images
from torch3dv.features.matchers import (
    MATCHERS,
    LightGlue,
    LoFTR,
    NearestNeighborMatcher,
    SparseMatcher,
    build_matcher,
    weights_available,
)
from torch3dv.features.nearest_neighbor import match_nearest_neighbors
from torch3dv.features.types import LocalFeatures, Matches

__all__ = [
    "ALIKED",
    "DISK",
    "MATCHERS",
    "SIFT",
    "EfficientLoFTR",
    "RoMa",
    "LightGlue",
    "LoFTR",
    "LocalFeatures",
    "Matches",
    "NearestNeighborMatcher",
    "SparseMatcher",
    "build_matcher",
    "match_nearest_neighbors",
    "prepare_images",
    "weights_available",
]
