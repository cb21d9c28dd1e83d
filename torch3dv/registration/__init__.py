"""Point cloud registration: neighbours, normals, ICP variants, FPFH features and global registration.

Every function takes padded batches ``(*B, N, 3)`` with optional masks and returns typed results with a
per-pair ``success``; transforms are ``target_from_source`` (``Y ~ R X + t``), see the README's Conventions.
"""

from torch3dv.registration.features import FeatureMatches, fpfh, match_features
from torch3dv.registration.global_registration import (
    RegistrationOptions,
    RegistrationResult,
    global_registration,
    register,
)
from torch3dv.registration.icp_solver import ICPOptions, ICPResult, icp, to_homogeneous
from torch3dv.registration.neighbors import NeighborIndex, Neighbors, knn, radius_search
from torch3dv.registration.normals import LocalCovariances, estimate_normals, local_covariances, orient_normals
from torch3dv.registration.pointcloud import PaddedPoints, pad_point_clouds, unpad_point_clouds, voxel_downsample
from torch3dv.registration.principal_axes import PrincipalAxesResult, align_principal_axes
from torch3dv.registration.synthetic import RegistrationScene, blob_pair

__all__ = [
    "FeatureMatches",
    "ICPOptions",
    "ICPResult",
    "LocalCovariances",
    "NeighborIndex",
    "Neighbors",
    "PaddedPoints",
    "PrincipalAxesResult",
    "RegistrationOptions",
    "RegistrationResult",
    "RegistrationScene",
    "align_principal_axes",
    "blob_pair",
    "estimate_normals",
    "fpfh",
    "global_registration",
    "icp",
    "knn",
    "local_covariances",
    "match_features",
    "orient_normals",
    "pad_point_clouds",
    "radius_search",
    "register",
    "to_homogeneous",
    "unpad_point_clouds",
    "voxel_downsample",
]
