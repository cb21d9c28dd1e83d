"""Camera models: pinhole intrinsics, OpenCV radial-tangential and Kannala-Brandt fisheye distortion.

Pixel convention: the centre of the top-left pixel is (0, 0); camera axes are OpenCV's (README, "Conventions").
"""

from torch3dv.camera.fisheye import (
    distort_fisheye,
    project_fisheye,
    undistort_fisheye,
    undistort_pixels_fisheye,
    unproject_fisheye,
    unproject_fisheye_bearing,
)
from torch3dv.camera.models import Camera, bearing, project, undistort_pixels, unproject
from torch3dv.camera.pinhole import (
    bearing_vectors,
    intrinsics_inverse,
    intrinsics_matrix,
    normalized_to_pixels,
    pixels_to_normalized,
    project_pinhole,
    unproject_pinhole,
)
from torch3dv.camera.radtan import (
    distort_radtan,
    project_radtan,
    undistort_pixels_radtan,
    undistort_radtan,
    unproject_radtan,
)

__all__ = [
    "Camera",
    "bearing",
    "bearing_vectors",
    "distort_fisheye",
    "distort_radtan",
    "intrinsics_inverse",
    "intrinsics_matrix",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "project",
    "project_fisheye",
    "project_pinhole",
    "project_radtan",
    "undistort_fisheye",
    "undistort_pixels",
    "undistort_pixels_fisheye",
    "undistort_pixels_radtan",
    "undistort_radtan",
    "unproject",
    "unproject_fisheye",
    "unproject_fisheye_bearing",
    "unproject_pinhole",
    "unproject_radtan",
]
