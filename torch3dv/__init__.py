"""torch3dv: PyTorch-native, batched, differentiable 3D computer vision.

Conventions (cameras, poses, pixels, units) are stated once, in the README's "Conventions" section.
Importing torch3dv has no side effects: no global flags, no downloads, no optional dependencies.
"""

from torch3dv import (
    camera,
    features,
    geometry,
    io,
    linalg,
    models,
    optim,
    pipelines,
    ransac,
    registration,
    solvers,
    testing,
)
from torch3dv.ransac import (
    RansacOptions,
    estimate_absolute_pose,
    estimate_fundamental,
    estimate_homography,
    estimate_relative_pose,
    estimate_rigid,
)
from torch3dv.registration import ICPOptions, RegistrationOptions, icp, register

__version__ = "0.1.0"

__all__ = [
    "camera",
    "features",
    "geometry",
    "io",
    "linalg",
    "models",
    "optim",
    "pipelines",
    "ransac",
    "registration",
    "solvers",
    "testing",
    "ICPOptions",
    "RansacOptions",
    "RegistrationOptions",
    "estimate_absolute_pose",
    "estimate_fundamental",
    "estimate_homography",
    "estimate_relative_pose",
    "estimate_rigid",
    "icp",
    "register",
    "__version__",
]
