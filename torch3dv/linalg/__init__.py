"""Batched linear-algebra helpers shared by the solvers."""

from torch3dv.linalg.normalization import normalize_points, NormalizedPoints
from torch3dv.linalg.nullspace import smallest_right_singular_vectors, weighted_design_nullspace
from torch3dv.linalg.skew import skew, unskew
from torch3dv.linalg.homogeneous import to_homogeneous, from_homogeneous

__all__ = [
    "normalize_points",
    "NormalizedPoints",
    "smallest_right_singular_vectors",
    "weighted_design_nullspace",
    "skew",
    "unskew",
    "to_homogeneous",
    "from_homogeneous",
]
