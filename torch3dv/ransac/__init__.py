"""Batched robust estimation (RANSAC family) and the pose-estimation API built on it."""

from torch3dv.ransac.api import (
    AbsolutePoseEstimate,
    FundamentalEstimate,
    HomographyEstimate,
    RelativePoseEstimate,
    RigidEstimate,
    estimate_absolute_pose,
    estimate_fundamental,
    estimate_homography,
    estimate_relative_pose,
    estimate_rigid,
)
from torch3dv.ransac.estimator import RansacOptions, RansacOutput, RobustModel, ransac

__all__ = [
    "AbsolutePoseEstimate",
    "FundamentalEstimate",
    "HomographyEstimate",
    "RelativePoseEstimate",
    "RigidEstimate",
    "RansacOptions",
    "RansacOutput",
    "RobustModel",
    "estimate_absolute_pose",
    "estimate_fundamental",
    "estimate_homography",
    "estimate_relative_pose",
    "estimate_rigid",
    "ransac",
]
