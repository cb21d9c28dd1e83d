"""File formats: PLY point clouds and meshes."""

from torch3dv.io.ply import PlyData, read_ply, write_ply

__all__ = ["PlyData", "read_ply", "write_ply"]
