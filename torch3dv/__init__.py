"""torch3dv: PyTorch-native, batched, differentiable 3D computer vision.

Conventions (cameras, poses, pixels, units) are stated once, in the README's "Conventions" section.
Importing torch3dv has no side effects: no global flags, no downloads, no optional dependencies.
"""

from torch3dv import camera, geometry, linalg, solvers, testing

__version__ = "0.1.0"

__all__ = ["camera", "geometry", "linalg", "solvers", "testing", "__version__"]
