"""A typed camera (intrinsics + lens model) and model-dispatching project / unproject / undistort.

Estimators that accept distorted observations take a :class:`Camera`; they call :func:`unproject` (or
:func:`bearing`) once and work with normalised undistorted coordinates afterwards. Supported models:

* ``"pinhole"``: no distortion, ``dist`` has shape (*B, 0).
* ``"radtan"``: OpenCV radial-tangential (k1, k2, p1, p2[, k3]), see :mod:`torch3dv.camera.radtan`.
* ``"fisheye"``: OpenCV/Kannala-Brandt fisheye (k1, k2, k3, k4), see :mod:`torch3dv.camera.fisheye`.

Frames and pixels follow the README's "Conventions" (OpenCV axes, top-left pixel centre at (0, 0)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from torch3dv._checks import check_intrinsics, check_points, check_same_device_dtype
from torch3dv.camera import fisheye as _fe
from torch3dv.camera import radtan as _rt
from torch3dv.camera.distortion_common import UndistortResult, check_batch_broadcast, check_dist
from torch3dv.camera.pinhole import (
    bearing_vectors,
    normalized_to_pixels,
    pixels_to_normalized,
    project_pinhole,
)

__all__ = ["Camera", "CameraModel", "project", "unproject", "undistort_pixels", "bearing", "CAMERA_MODELS"]

CameraModel = Literal["pinhole", "radtan", "fisheye"]
#: accepted numbers of distortion coefficients per model
CAMERA_MODELS: dict[str, tuple[int, ...]] = {"pinhole": (0,), "radtan": (4, 5), "fisheye": (4,)}


@dataclass(frozen=True, eq=False)
class Camera:
    """Intrinsics and lens distortion of a (batch of) camera(s).

    Attributes:
        model: ``"pinhole"``, ``"radtan"`` or ``"fisheye"``.
        K: intrinsics (*B, 3, 3), pixels.
        dist: distortion coefficients (*B, k): k = 0 for pinhole (``None`` is accepted and stored as an
            empty (*B, 0) tensor), 4 or 5 for radtan (OpenCV order k1, k2, p1, p2, k3), 4 for fisheye
            (k1..k4). Batch dims of ``K`` and ``dist`` must broadcast.

    Raises:
        ValueError: unknown model, wrong shapes, non-float dtypes or mismatched devices/dtypes.
    """

    model: CameraModel
    K: Float[Tensor, "*B 3 3"]
    dist: Float[Tensor, "*B k"] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"model must be one of {sorted(CAMERA_MODELS)}, got {self.model!r}")
        check_intrinsics(self.K)
        dist = self.dist
        if dist is None:
            if self.model != "pinhole":
                raise ValueError(f"model {self.model!r} needs distortion coefficients dist")
            dist = self.K.new_zeros(self.K.shape[:-2] + (0,))
            object.__setattr__(self, "dist", dist)
        sizes = CAMERA_MODELS[self.model]
        check_dist(dist, "dist", sizes, f"(*B, {' or '.join(map(str, sizes))}) for model {self.model!r}")
        check_same_device_dtype({"K": self.K, "dist": dist})
        check_batch_broadcast(self.K, "K", 2, dist=(dist, 1))

    @classmethod
    def pinhole(cls, K: Tensor) -> Camera:
        """A distortion-free camera."""
        return cls("pinhole", K)

    @classmethod
    def radtan(cls, K: Tensor, dist: Tensor) -> Camera:
        """An OpenCV radial-tangential camera, ``dist`` (*B, 5) or (*B, 4)."""
        return cls("radtan", K, dist)

    @classmethod
    def fisheye(cls, K: Tensor, dist: Tensor) -> Camera:
        """An OpenCV fisheye (Kannala-Brandt) camera, ``dist`` (*B, 4)."""
        return cls("fisheye", K, dist)

    @property
    def batch_shape(self) -> torch.Size:
        """Broadcast batch shape *B of ``K`` and ``dist``."""
        assert self.dist is not None
        return torch.broadcast_shapes(self.K.shape[:-2], self.dist.shape[:-1])

    def to(self, *args, **kwargs) -> Camera:
        """Returns a copy with ``K`` and ``dist`` moved/cast like ``Tensor.to``."""
        assert self.dist is not None
        return Camera(self.model, self.K.to(*args, **kwargs), self.dist.to(*args, **kwargs))


def _check_camera(camera: object) -> Camera:
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a torch3dv.camera.models.Camera, got {type(camera).__name__}")
    return camera


def _pinhole_checks(x: Tensor, name: str, dim: int, cam: Camera) -> None:
    check_points(x, name, dim)
    check_same_device_dtype({name: x, "K": cam.K})
    check_batch_broadcast(x, name, 2, K=(cam.K, 2))


def project(camera: Camera, X_cam: Float[Tensor, "*B N 3"]) -> Float[Tensor, "*B N 2"]:
    """Projects camera-frame points (*B, N, 3) (OpenCV axes, metres) to distorted pixels (*B, N, 2).

    Args:
        camera: the camera; its batch dims broadcast with those of ``X_cam``.
        X_cam: points in the camera frame.

    Returns:
        Pixels (*B, N, 2). Differentiable in the points, ``K`` and ``dist``.
    """
    cam = _check_camera(camera)
    if cam.model == "pinhole":
        _pinhole_checks(X_cam, "X_cam", 3, cam)
        return project_pinhole(X_cam, cam.K)
    if cam.model == "radtan":
        return _rt.project_radtan(X_cam, cam.K, cam.dist)
    return _fe.project_fisheye(X_cam, cam.K, cam.dist)


def unproject(
    camera: Camera, x_pix: Float[Tensor, "*B N 2"], iterations: int = 20, return_converged: bool = False
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Observed pixels (*B, N, 2) -> normalised undistorted coordinates (X/Z, Y/Z) (*B, N, 2).

    Args:
        camera: the camera.
        x_pix: observed (distorted) pixels.
        iterations: maximum Newton iterations of the undistortion (ignored for pinhole).
        return_converged: also return a per-point convergence flag (pinhole: True where finite).

    Returns:
        Normalised coordinates, or :class:`UndistortResult` ``(points, converged)``. For fisheye only rays
        below 90 degrees have normalised coordinates; use :func:`bearing` for wider lenses.
    """
    cam = _check_camera(camera)
    if cam.model == "pinhole":
        _pinhole_checks(x_pix, "x_pix", 2, cam)
        xn = pixels_to_normalized(x_pix, cam.K)
        return UndistortResult(xn, torch.isfinite(xn).all(-1)) if return_converged else xn
    if cam.model == "radtan":
        return _rt.unproject_radtan(x_pix, cam.K, cam.dist, iterations, return_converged)
    return _fe.unproject_fisheye(x_pix, cam.K, cam.dist, iterations, return_converged)


def undistort_pixels(
    camera: Camera, x_pix: Float[Tensor, "*B N 2"], iterations: int = 20, return_converged: bool = False
) -> Float[Tensor, "*B N 2"] | UndistortResult:
    """Observed pixels -> ideal pinhole pixels with the same K (*B, N, 2) (``cv2.undistortPoints(..., P=K)``).

    Args:
        camera: the camera.
        x_pix: observed (distorted) pixels.
        iterations: maximum Newton iterations (ignored for pinhole).
        return_converged: also return a per-point convergence flag.

    Returns:
        Undistorted pixels, or :class:`UndistortResult`.
    """
    r = unproject(camera, x_pix, iterations, True)
    px = normalized_to_pixels(r.points, camera.K)
    return UndistortResult(px, r.converged) if return_converged else px


def bearing(
    camera: Camera, x_pix: Float[Tensor, "*B N 2"], iterations: int = 20, return_converged: bool = False
) -> Float[Tensor, "*B N 3"] | UndistortResult:
    """Observed pixels -> unit viewing rays (*B, N, 3) in the camera frame (fisheye: valid beyond 90 degrees).

    Args:
        camera: the camera.
        x_pix: observed (distorted) pixels.
        iterations: maximum Newton iterations (ignored for pinhole).
        return_converged: also return a per-point convergence flag.

    Returns:
        Unit rays, or :class:`UndistortResult` holding them.
    """
    cam = _check_camera(camera)
    if cam.model == "fisheye":
        return _fe.unproject_fisheye_bearing(x_pix, cam.K, cam.dist, iterations, return_converged)
    if cam.model == "pinhole":
        _pinhole_checks(x_pix, "x_pix", 2, cam)
        rays = bearing_vectors(x_pix, cam.K)
        return UndistortResult(rays, torch.isfinite(rays).all(-1)) if return_converged else rays
    r = _rt.unproject_radtan(x_pix, cam.K, cam.dist, iterations, True)
    X = torch.cat([r.points, torch.ones_like(r.points[..., :1])], dim=-1)
    rays = X / X.norm(dim=-1, keepdim=True)
    return UndistortResult(rays, r.converged) if return_converged else rays
