"""Perspective-n-Point: minimal (P3P), linear (EPnP, DLT) and nonlinear (LM refinement) pose solvers.

All poses are ``cam_from_world = (R, t)`` with OpenCV camera axes (README, "Conventions").
"""

from torch3dv.solvers.pnp._common import AbsolutePose, PnPSolutions
from torch3dv.solvers.pnp.dlt import pnp_dlt
from torch3dv.solvers.pnp.epnp import epnp
from torch3dv.solvers.pnp.p3p import p3p
from torch3dv.solvers.pnp.refine import refine_pnp, reprojection_residuals

__all__ = ["AbsolutePose", "PnPSolutions", "epnp", "p3p", "pnp_dlt", "refine_pnp", "reprojection_residuals"]
