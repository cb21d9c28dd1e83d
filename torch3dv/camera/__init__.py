"""Camera models: pinhole intrinsics, OpenCV radial-tangential and Kannala-Brandt fisheye distortion."""

from torch3dv.camera.pinhole import (
    bearing_vectors,
    intrinsics_inverse,
    intrinsics_matrix,
    normalized_to_pixels,
    pixels_to_normalized,
    project_pinhole,
    unproject_pinhole,
)

__all__ = [
    "bearing_vectors",
    "intrinsics_inverse",
    "intrinsics_matrix",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "project_pinhole",
    "unproject_pinhole",
]
