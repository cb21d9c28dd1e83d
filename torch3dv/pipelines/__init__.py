"""Pipelines that chain matching and the robust estimators (two-view pose, localisation, registration)."""

from torch3dv.pipelines.twoview import (
    METHODS,
    Localization,
    Registration,
    TwoViewGeometry,
    localize_with_depth,
    register_with_depths,
    relative_pose_from_matches,
    sample_depth,
)

__all__ = [
    "METHODS",
    "Localization",
    "Registration",
    "TwoViewGeometry",
    "localize_with_depth",
    "register_with_depths",
    "relative_pose_from_matches",
    "sample_depth",
]
