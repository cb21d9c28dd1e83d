"""Minimal and linear geometric solvers, one module per problem (batched, masked, differentiable).

Image inputs are pixels unless a function says "normalised" (``xn = K^-1 x``); poses are ``cam_from_world``
or ``cam2_from_cam1`` (README, "Conventions").
"""

from torch3dv.solvers.essential import (
    EssentialResult,
    EssentialSolutions,
    RelativePose,
    decompose_essential,
    essential_5point,
    essential_8point,
    essential_from_pose,
    project_to_essential,
    recover_pose,
)
from torch3dv.solvers.focal import FocalResult, SharedFocalResult, focal_from_fundamental, shared_focal_from_fundamental
from torch3dv.solvers.fundamental import (
    FundamentalResult,
    FundamentalSolutions,
    fundamental_7point,
    fundamental_8point,
    sampson_distance,
    symmetric_epipolar_distance,
)
from torch3dv.solvers.homography import HomographyResult, homography_4point, homography_dlt, transfer_error
from torch3dv.solvers.homography_decompose import (
    HomographyDecomposition,
    HomographyPose,
    decompose_homography,
    pose_from_homography,
)
from torch3dv.solvers.pnp import AbsolutePose, PnPSolutions, epnp, p3p, pnp_dlt, refine_pnp
from torch3dv.solvers.rigid import RigidResult, kabsch, rigid_residuals, umeyama
from torch3dv.solvers.triangulation import (
    Triangulation,
    cheirality,
    reprojection_errors,
    triangulate_midpoint,
    triangulate_multiview,
    triangulate_two_view,
    triangulation_angle,
)

__all__ = [
    "AbsolutePose",
    "EssentialResult",
    "EssentialSolutions",
    "FocalResult",
    "FundamentalResult",
    "FundamentalSolutions",
    "HomographyDecomposition",
    "HomographyPose",
    "HomographyResult",
    "PnPSolutions",
    "RelativePose",
    "RigidResult",
    "SharedFocalResult",
    "Triangulation",
    "cheirality",
    "decompose_essential",
    "decompose_homography",
    "epnp",
    "essential_5point",
    "essential_8point",
    "essential_from_pose",
    "focal_from_fundamental",
    "fundamental_7point",
    "fundamental_8point",
    "homography_4point",
    "homography_dlt",
    "kabsch",
    "p3p",
    "pnp_dlt",
    "pose_from_homography",
    "project_to_essential",
    "recover_pose",
    "refine_pnp",
    "reprojection_errors",
    "rigid_residuals",
    "sampson_distance",
    "shared_focal_from_fundamental",
    "symmetric_epipolar_distance",
    "transfer_error",
    "triangulate_midpoint",
    "triangulate_multiview",
    "triangulate_two_view",
    "triangulation_angle",
    "umeyama",
]
