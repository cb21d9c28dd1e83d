"""Surface normals and local covariances of point clouds from their k nearest neighbours.

The normal of a point is the eigenvector of the smallest eigenvalue of the covariance of its k nearest
neighbours (the point included), i.e. the direction of least spread (PCA). Its sign is undetermined by the
data; it is chosen so that the normal faces a viewpoint (``n . (viewpoint - p) >= 0``), the scanner position
for a range scan (the origin of the sensor frame by default).

Eigen-decompositions: batched ``torch.linalg.eigh`` on the 3x3 covariances. Their gradients are unstable when
eigenvalues repeat (a locally isotropic neighbourhood), so normals and covariances are computed **without
gradient**; the registration functions treat them as constants.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.registration.neighbors import NeighborIndex, Neighbors
from torch3dv.registration.pointcloud import clean_points


class LocalCovariances(NamedTuple):
    """Neighbourhood statistics.

    Attributes:
        covariances: (*B, N, 3, 3) covariance of the k neighbours (metres^2).
        eigenvalues: (*B, N, 3) ascending.
        eigenvectors: (*B, N, 3, 3) columns are the eigenvectors (column 0 = normal direction).
        valid: (*B, N) bool, False for masked points and points with fewer than 3 neighbours.
    """

    covariances: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor
    valid: Tensor


def _covariances(points: Tensor, nb: Neighbors) -> tuple[Tensor, Tensor]:
    lead, n, k = nb.indices.shape[:-2], nb.indices.shape[-2], nb.indices.shape[-1]
    P = points.reshape(-1, n, 3)
    I = nb.indices.reshape(P.shape[0], n * k)
    V = nb.valid.reshape(P.shape[0], n, k).to(points.dtype)
    X = torch.gather(P, 1, I[..., None].expand(-1, -1, 3)).reshape(P.shape[0], n, k, 3)
    cnt = V.sum(-1)
    mu = (V[..., None] * X).sum(-2) / cnt.clamp_min(1)[..., None]
    D = (X - mu[..., None, :]) * V[..., None]
    C = D.transpose(-1, -2) @ D / cnt.clamp_min(1)[..., None, None]
    return C.reshape(*lead, n, 3, 3), (cnt >= 3).reshape(*lead, n)


def local_covariances(
    points: Tensor,
    mask: Tensor | None = None,
    k: int = 20,
    radius: float | None = None,
    index: NeighborIndex | None = None,
) -> LocalCovariances:
    """Covariances of the k nearest neighbours of every point and their eigen-decomposition.

    Args:
        points: (*B, N, 3) points, metres.
        mask: optional (*B, N) bool.
        k: neighbours (the point itself included).
        radius: optional bound (metres) on the neighbour distance.
        index: optional prebuilt :class:`NeighborIndex` over ``points`` (reused to save time).

    Returns:
        :class:`LocalCovariances` (no gradient).
    """
    cl = clean_points(points, mask)
    with torch.no_grad():
        idx = index if index is not None else NeighborIndex(cl.points, cl.mask)
        nb = idx.knn(cl.points, k, cl.mask, max_distance=radius)
        C, ok = _covariances(cl.points, nb)
        ok = ok & cl.mask
        eye = torch.eye(3, dtype=points.dtype, device=points.device)
        Cs = torch.where(ok[..., None, None], C, eye)
        # scale-invariant conditioning: eigh on C / trace(C)
        tr = Cs.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(points.dtype).tiny)
        evals, evecs = torch.linalg.eigh(Cs / tr[..., None, None])
        evals = evals * tr[..., None]
    return LocalCovariances(C, evals, evecs, ok)


def orient_normals(normals: Tensor, points: Tensor, viewpoint: Tensor | None = None) -> Tensor:
    """Flips normals (*B, N, 3) so that ``n . (viewpoint - p) >= 0``; ``viewpoint`` (*B, 3) or (3,), default 0."""
    v = torch.zeros(3, dtype=points.dtype, device=points.device) if viewpoint is None else viewpoint
    v = v[..., None, :] if v.ndim >= 2 else v
    s = ((v - points) * normals).sum(-1, keepdim=True)
    return torch.where(s < 0, -normals, normals)


def estimate_normals(
    points: Tensor,
    mask: Tensor | None = None,
    k: int = 20,
    radius: float | None = None,
    viewpoint: Tensor | None = None,
    index: NeighborIndex | None = None,
) -> Tensor:
    """Unit surface normals by PCA over the k nearest neighbours, oriented towards a viewpoint.

    Args:
        points: (*B, N, 3) points, metres.
        mask: optional (*B, N) bool.
        k: neighbours per point (the point included); 10-30 is usual.
        radius: optional bound (metres) on the neighbour distance (Open3D's hybrid search).
        viewpoint: (*B, 3) or (3,) position the normals should face (default: the origin, i.e. the sensor of
            a scan in its own frame).
        index: optional prebuilt :class:`NeighborIndex` over ``points``.

    Returns:
        (*B, N, 3) unit normals; zeros for masked points and points with fewer than 3 neighbours. No gradient.
    """
    cov = local_covariances(points, mask, k, radius, index)
    n = cov.eigenvectors[..., :, 0]
    n = orient_normals(n, torch.where(cov.valid[..., None], points, torch.zeros_like(points)).detach(),
                       None if viewpoint is None else viewpoint.detach())
    return torch.where(cov.valid[..., None], n, torch.zeros_like(n))
