"""Synthetic scenes with known geometry for tests, examples and benchmarks.

Everything is generated on the CPU in float64 from a seeded ``torch.Generator`` and only then cast to the
requested dtype and device, so a seed gives the same scene on every device. All scenes are batched: B
independent problems with their own cameras, points and ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from torch3dv.camera.pinhole import intrinsics_matrix, project_pinhole, unproject_pinhole
from torch3dv.geometry.rotations import axis_angle_to_matrix, random_rotation
from torch3dv.geometry.transforms import invert_rigid, transform_points


def _gen(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def _cast(obj, dtype: torch.dtype, device):
    vals = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Tensor):
            v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        vals[f.name] = v
    return type(obj)(**vals)


def random_intrinsics(
    batch: int, image_size: tuple[int, int] = (640, 480), g: torch.Generator | None = None
) -> Tensor:
    """Plausible pinhole intrinsics (B, 3, 3): fov 40-80 degrees, principal point within 5% of the centre.

    Args:
        image_size: (width, height) in pixels.
    """
    g = _gen(g)
    w, h = image_size
    fov = torch.empty(batch, dtype=torch.float64).uniform_(math.radians(40), math.radians(80), generator=g)
    f = 0.5 * w / torch.tan(0.5 * fov)
    aspect = 1 + 0.02 * (torch.rand(batch, generator=g, dtype=torch.float64) - 0.5)
    cx = (w - 1) / 2 + 0.05 * w * (torch.rand(batch, generator=g, dtype=torch.float64) - 0.5)
    cy = (h - 1) / 2 + 0.05 * h * (torch.rand(batch, generator=g, dtype=torch.float64) - 0.5)
    return intrinsics_matrix(f, f * aspect, cx, cy)


def look_at(center: Tensor, target: Tensor, up_hint: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``cam_from_world`` (R (B, 3, 3), t (B, 3)) of cameras at ``center`` (B, 3) looking at ``target`` (B, 3).

    OpenCV axes: z towards the target, y down (the world's -up_hint direction, default world -y is "up").
    """
    z = target - center
    z = z / z.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=center.dtype).expand_as(z) if up_hint is None else up_hint
    x = torch.linalg.cross(-up, z, dim=-1)
    # fall back to another hint where the view direction is parallel to up
    alt = torch.tensor([1.0, 0.0, 0.0], dtype=center.dtype).expand_as(z)
    bad = x.norm(dim=-1, keepdim=True) < 1e-6
    x = torch.where(bad, torch.linalg.cross(alt, z, dim=-1), x)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows are camera axes in world coordinates
    t = -(R @ center[..., None])[..., 0]
    return R, t


def _uniform_pixels(batch: int, n: int, image_size, g) -> Tensor:
    w, h = image_size
    u = torch.rand(batch, n, generator=g, dtype=torch.float64) * (w - 1)
    v = torch.rand(batch, n, generator=g, dtype=torch.float64) * (h - 1)
    return torch.stack([u, v], dim=-1)


def _outlier_mask(batch: int, n: int, ratio: float, g) -> Tensor:
    k = int(round(ratio * n))
    order = torch.rand(batch, n, generator=g).argsort(dim=-1)
    inl = torch.ones(batch, n, dtype=torch.bool)
    if k > 0:
        inl.scatter_(1, order[:, :k], False)
    return inl


@dataclass(frozen=True)
class TwoViewScene:
    """Two calibrated views of a static scene; camera 1 is the world frame.

    Attributes:
        K1, K2: intrinsics (B, 3, 3), pixels.
        R, t: ``cam2_from_cam1`` (B, 3, 3), (B, 3); |t| is the baseline in metres.
        X: 3D points in camera-1 frame (B, N, 3), metres; all in front of both cameras.
        x1, x2: observed pixels (B, N, 2) with noise; outlier rows of x2 are random pixels.
        x1_clean, x2_clean: noise-free projections (B, N, 2).
        inliers: (B, N) bool, False for outlier rows.
        F, E: ground-truth fundamental / essential matrices (B, 3, 3), with x2^T F x1 = 0.
        H: ground-truth homography (B, 3, 3) with x2 ~ H x1 when the scene is planar, else NaN.
        plane: (B, 4) plane (n, d) with n . X = d in camera-1 frame for planar scenes, else NaN.
    """

    K1: Tensor
    K2: Tensor
    R: Tensor
    t: Tensor
    X: Tensor
    x1: Tensor
    x2: Tensor
    x1_clean: Tensor
    x2_clean: Tensor
    inliers: Tensor
    F: Tensor
    E: Tensor
    H: Tensor
    plane: Tensor


def two_view_scene(
    batch: int = 1,
    num_points: int = 100,
    noise_px: float = 0.0,
    outlier_ratio: float = 0.0,
    planar: bool = False,
    image_size: tuple[int, int] = (640, 480),
    baseline: tuple[float, float] = (0.3, 1.0),
    pure_rotation: bool = False,
    planar_fraction: float = 1.0,
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TwoViewScene:
    """Random two-view problems with ground truth.

    Points are back-projected from uniform pixels of image 1 at depths 2-6 m (or on a random plane through
    that volume when ``planar``), so all of them are visible in view 1; camera 2 sits ``baseline`` metres away
    and looks at the centre of the points, with a random roll.

    Args:
        batch: number of independent problems B.
        num_points: correspondences per problem N.
        noise_px: std-dev of Gaussian pixel noise added to both views.
        outlier_ratio: fraction of rows whose x2 is replaced by a uniform random pixel.
        planar: put the points on one plane (a homography relates the views).
        planar_fraction: with ``planar``, only the first ``round(planar_fraction * N)`` points lie on the plane
            and the others keep their random depths (a dominant plane: the degenerate case of F estimation);
            ``H`` then holds for those points only.
        image_size: (width, height).
        baseline: range of camera distances in metres.
        pure_rotation: camera 2 at the same centre as camera 1 (t = 0; E is undefined and is all zeros).
        seed: int seed or a generator.
    """
    g = _gen(seed)
    B, N = batch, num_points
    K1 = random_intrinsics(B, image_size, g)
    K2 = random_intrinsics(B, image_size, g)
    depth = torch.empty(B, N, dtype=torch.float64).uniform_(2.0, 6.0, generator=g)
    pix = _uniform_pixels(B, N, image_size, g)
    rays = unproject_pinhole(pix, K1)  # z = 1
    plane = torch.full((B, 4), float("nan"), dtype=torch.float64)
    if planar:
        # tilt bounded so that every viewing ray meets the plane in front of the camera (ray . n > 0.4)
        tilt = (0.3 * torch.randn(B, 3, generator=g, dtype=torch.float64)).clamp(-0.35, 0.35)
        n = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64) + tilt * torch.tensor([1.0, 1.0, 0.0],
                                                                                      dtype=torch.float64)
        n = n / n.norm(dim=-1, keepdim=True)
        p0 = torch.stack([torch.zeros(B), torch.zeros(B), torch.empty(B).uniform_(3.0, 5.0, generator=g)],
                         -1).double()
        d = (n * p0).sum(-1)
        on_plane = torch.arange(N) < round(planar_fraction * N)
        depth = torch.where(on_plane, d[:, None] / (rays @ n[..., None])[..., 0], depth)
        plane = torch.cat([n, d[:, None]], dim=-1)
    X = rays * depth[..., None]
    centroid = X.mean(dim=1)
    if pure_rotation:
        C2 = torch.zeros(B, 3, dtype=torch.float64)
    else:
        dirn = torch.randn(B, 3, generator=g, dtype=torch.float64)
        dirn = dirn / dirn.norm(dim=-1, keepdim=True)
        length = torch.empty(B, 1, dtype=torch.float64).uniform_(*baseline, generator=g)
        C2 = dirn * length
    R2, t2 = look_at(C2, centroid)
    roll = axis_angle_to_matrix(
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        * torch.empty(B, 1, dtype=torch.float64).uniform_(-0.3, 0.3, generator=g)
    )
    R = roll @ R2
    t = (roll @ t2[..., None])[..., 0]
    X2 = transform_points(R, t, X)
    x1c = project_pinhole(X, K1)
    x2c = project_pinhole(X2, K2)
    inl = _outlier_mask(B, N, outlier_ratio, g)
    x1 = x1c + noise_px * torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    x2 = x2c + noise_px * torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    x2 = torch.where(inl[..., None], x2, _uniform_pixels(B, N, image_size, g))
    from torch3dv.linalg.skew import skew

    E = skew(t) @ R
    K2inv = torch.linalg.inv(K2)
    F = K2inv.transpose(-1, -2) @ E @ torch.linalg.inv(K1)
    F = F / F.flatten(-2).norm(dim=-1)[..., None, None].clamp_min(1e-300)
    if planar:
        Hm = K2 @ (R + t[..., :, None] @ plane[:, None, :3] / plane[:, 3, None, None]) @ torch.linalg.inv(K1)
        Hm = Hm / Hm[..., 2:3, 2:3]
    elif pure_rotation:
        Hm = K2 @ R @ torch.linalg.inv(K1)
        Hm = Hm / Hm[..., 2:3, 2:3]
    else:
        Hm = torch.full((B, 3, 3), float("nan"), dtype=torch.float64)
    scene = TwoViewScene(K1, K2, R, t, X, x1, x2, x1c, x2c, inl, F, E, Hm, plane)
    return _cast(scene, dtype, device)


@dataclass(frozen=True)
class AbsolutePoseScene:
    """2D-3D correspondences for PnP.

    Attributes:
        K: intrinsics (B, 3, 3).
        R, t: ground-truth ``cam_from_world`` (B, 3, 3), (B, 3).
        X: world points (B, N, 3), metres, all in front of the camera.
        x: observed pixels (B, N, 2) (noise added; outlier rows are random pixels).
        x_clean: noise-free projections (B, N, 2).
        inliers: (B, N) bool.
    """

    K: Tensor
    R: Tensor
    t: Tensor
    X: Tensor
    x: Tensor
    x_clean: Tensor
    inliers: Tensor


def absolute_pose_scene(
    batch: int = 1,
    num_points: int = 100,
    noise_px: float = 0.0,
    outlier_ratio: float = 0.0,
    planar: bool = False,
    image_size: tuple[int, int] = (640, 480),
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> AbsolutePoseScene:
    """Random PnP problems: points visible in the image at 2-6 m depth, random world pose of the camera.

    Args:
        planar: all world points on the plane z_world = 0 (a planar target, like a calibration board).
    """
    g = _gen(seed)
    B, N = batch, num_points
    K = random_intrinsics(B, image_size, g)
    R = random_rotation(B, generator=g)
    C = 5.0 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    t = -(R @ C[..., None])[..., 0]
    pix = _uniform_pixels(B, N, image_size, g)
    rays = unproject_pinhole(pix, K)
    if planar:
        # plane z_world = 0 expressed in camera coordinates must be in front: choose the pose so it is
        # tilt bounded so that every viewing ray meets the plane in front of the camera (ray . n > 0.4)
        tilt = (0.25 * torch.randn(B, 3, generator=g, dtype=torch.float64)).clamp(-0.35, 0.35)
        n_c = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) + tilt * torch.tensor([1.0, 1.0, 0.0],
                                                                                       dtype=torch.float64)
        n_c = n_c / n_c.norm(dim=-1, keepdim=True)
        d = torch.empty(B, dtype=torch.float64).uniform_(3.0, 5.0, generator=g) * n_c[:, 2]
        depth = d[:, None] / (rays @ n_c[..., None])[..., 0]
        Xc = rays * depth[..., None]
        # world frame: origin at the plane point on the optical axis, z along the plane normal
        z_w = n_c
        x_w = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(z_w), z_w, dim=-1)
        x_w = x_w / x_w.norm(dim=-1, keepdim=True)
        y_w = torch.linalg.cross(z_w, x_w, dim=-1)
        world_axes = torch.stack([x_w, y_w, z_w], dim=-1)  # columns: world axes in camera frame
        origin = torch.stack([torch.zeros(B), torch.zeros(B), d / n_c[:, 2]], -1).double()
        R = world_axes  # cam_from_world rotation
        t = origin
        Rinv, tinv = invert_rigid(R, t)
        X = transform_points(Rinv, tinv, Xc)
        X = X.clone()
        X[..., 2] = 0.0
    else:
        depth = torch.empty(B, N, dtype=torch.float64).uniform_(2.0, 6.0, generator=g)
        Xc = rays * depth[..., None]
        Rinv, tinv = invert_rigid(R, t)
        X = transform_points(Rinv, tinv, Xc)
    xc = project_pinhole(transform_points(R, t, X), K)
    inl = _outlier_mask(B, N, outlier_ratio, g)
    x = xc + noise_px * torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    x = torch.where(inl[..., None], x, _uniform_pixels(B, N, image_size, g))
    return _cast(AbsolutePoseScene(K, R, t, X, x, xc, inl), dtype, device)


@dataclass(frozen=True)
class MultiViewScene:
    """V cameras on a ring looking at a cloud of points around the world origin.

    Attributes:
        K: (B, V, 3, 3) intrinsics.
        R, t: ``cam_from_world`` per view, (B, V, 3, 3), (B, V, 3).
        X: world points (B, N, 3) inside a ball of radius 1 m.
        x: observed pixels (B, V, N, 2) with noise.
        x_clean: noise-free projections (B, V, N, 2).
        visible: (B, V, N) bool, point in front of the camera and inside the image.
    """

    K: Tensor
    R: Tensor
    t: Tensor
    X: Tensor
    x: Tensor
    x_clean: Tensor
    visible: Tensor


def multi_view_scene(
    batch: int = 1,
    num_views: int = 4,
    num_points: int = 50,
    noise_px: float = 0.0,
    radius: float = 4.0,
    image_size: tuple[int, int] = (640, 480),
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> MultiViewScene:
    """Random multi-view problems (ring of cameras at ``radius`` metres, jittered, looking at the origin)."""
    g = _gen(seed)
    B, V, N = batch, num_views, num_points
    K = random_intrinsics(B * V, image_size, g).reshape(B, V, 3, 3)
    ang = torch.linspace(0, 2 * math.pi, V + 1, dtype=torch.float64)[:V] * 0.5  # half circle
    ang = ang + 0.1 * torch.randn(B, V, generator=g, dtype=torch.float64)
    C = torch.stack([radius * torch.sin(ang), 0.3 * torch.randn(B, V, generator=g, dtype=torch.float64),
                     -radius * torch.cos(ang)], dim=-1)
    target = 0.1 * torch.randn(B, V, 3, generator=g, dtype=torch.float64)
    R, t = look_at(C.reshape(-1, 3), target.reshape(-1, 3))
    R, t = R.reshape(B, V, 3, 3), t.reshape(B, V, 3)
    X = torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=-1, keepdim=True) * torch.rand(B, N, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    Xc = transform_points(R, t, X[:, None].expand(B, V, N, 3))
    xc = project_pinhole(Xc, K)
    w, h = image_size
    vis = (Xc[..., 2] > 0.1) & (xc[..., 0] >= 0) & (xc[..., 0] <= w - 1) & (xc[..., 1] >= 0) & (xc[..., 1] <= h - 1)
    x = xc + noise_px * torch.randn(B, V, N, 2, generator=g, dtype=torch.float64)
    return _cast(MultiViewScene(K, R, t, X, x, xc, vis), dtype, device)


@dataclass(frozen=True)
class RigidScene:
    """3D-3D correspondences ``Y = s R X + t``.

    Attributes:
        X: source points (B, N, 3), metres.
        Y: target points (B, N, 3) with noise; outlier rows are random points.
        R, t, s: ground truth (B, 3, 3), (B, 3), (B,) (s = 1 unless ``with_scale``).
        inliers: (B, N) bool.
    """

    X: Tensor
    Y: Tensor
    R: Tensor
    t: Tensor
    s: Tensor
    inliers: Tensor


def rigid_scene(
    batch: int = 1,
    num_points: int = 100,
    noise: float = 0.0,
    outlier_ratio: float = 0.0,
    with_scale: bool = False,
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> RigidScene:
    """Random 3D-3D registration problems; points in a 2 m cube, translations up to ~3 m.

    Args:
        noise: std-dev of Gaussian noise (metres) on Y.
        with_scale: draw s uniformly in [0.5, 2].
    """
    g = _gen(seed)
    B, N = batch, num_points
    X = 2.0 * torch.rand(B, N, 3, generator=g, dtype=torch.float64) - 1.0
    R = random_rotation(B, generator=g)
    t = 1.5 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    s = torch.empty(B, dtype=torch.float64).uniform_(0.5, 2.0, generator=g) if with_scale else torch.ones(
        B, dtype=torch.float64)
    Y = s[:, None, None] * (X @ R.transpose(-1, -2)) + t[:, None]
    Y = Y + noise * torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    inl = _outlier_mask(B, N, outlier_ratio, g)
    rnd = 4.0 * torch.rand(B, N, 3, generator=g, dtype=torch.float64) - 2.0 + t[:, None]
    Y = torch.where(inl[..., None], Y, rnd)
    return _cast(RigidScene(X, Y, R, t, s, inl), dtype, device)
