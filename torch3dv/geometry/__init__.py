"""Rotations, rigid and similarity transforms, and pose error metrics."""

from torch3dv.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quat_wxyz,
    matrix_to_quat_xyzw,
    project_to_rotation,
    quat_wxyz_to_matrix,
    quat_xyzw_to_matrix,
    random_rotation,
)
from torch3dv.geometry.transforms import (
    camera_center,
    compose_rigid,
    compose_sim,
    invert_rigid,
    invert_sim,
    matrix_to_rigid,
    projection_matrix,
    relative_pose,
    rigid_to_matrix,
    transform_points,
    transform_points_sim,
)
from torch3dv.geometry.metrics import (
    angle_between_vectors,
    pose_auc,
    rotation_angle,
    rotation_error,
    translation_direction_error,
)

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_quat_wxyz",
    "matrix_to_quat_xyzw",
    "project_to_rotation",
    "quat_wxyz_to_matrix",
    "quat_xyzw_to_matrix",
    "random_rotation",
    "camera_center",
    "compose_rigid",
    "compose_sim",
    "invert_rigid",
    "invert_sim",
    "matrix_to_rigid",
    "projection_matrix",
    "relative_pose",
    "rigid_to_matrix",
    "transform_points",
    "transform_points_sim",
    "angle_between_vectors",
    "pose_auc",
    "rotation_angle",
    "rotation_error",
    "translation_direction_error",
]
