"""Synthetic scenes with ground truth, shared by tests, examples and benchmarks."""

from torch3dv.testing.render import RenderedPair, render_pair
from torch3dv.testing.scenes import (
    AbsolutePoseScene,
    MultiViewScene,
    RigidScene,
    TwoViewScene,
    absolute_pose_scene,
    look_at,
    multi_view_scene,
    random_intrinsics,
    rigid_scene,
    two_view_scene,
)

__all__ = [
    "AbsolutePoseScene",
    "MultiViewScene",
    "RenderedPair",
    "RigidScene",
    "TwoViewScene",
    "absolute_pose_scene",
    "look_at",
    "multi_view_scene",
    "random_intrinsics",
    "render_pair",
    "rigid_scene",
    "two_view_scene",
]
