"""Renders synthetic textured image pairs with known geometry (pure torch ray casting).

A scene is a set of textured rectangles ("quads") in the world frame: a large back wall, a floor and a few
tilted cards in front of them (or, with ``planar=True``, a single tilted wall that fills both views, so that the
views are related by a homography). Every quad carries a procedural, seeded, high-frequency colour texture
(multi-octave value noise plus sharp-edged rectangles and discs, so both blob and corner detectors fire).

Each pixel casts one ray per sub-sample (``supersample`` x ``supersample`` on a regular grid around the pixel
centre, README "Conventions": the centre of pixel (u, v) is at (u, v)), takes the nearest quad it hits in front
of the camera and reads that quad's texture bilinearly; the sub-samples are averaged (box-filter anti-aliasing).
Depth maps are the z-depth (metres, camera frame) of the ray through the pixel centre. World frame = camera 0.

Everything is generated on the CPU in float64 from a seeded ``torch.Generator`` and cast to ``dtype`` and
``device`` at the end, like :mod:`torch3dv.testing.scenes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from torch3dv.camera.pinhole import intrinsics_matrix
from torch3dv.geometry.rotations import axis_angle_to_matrix
from torch3dv.geometry.transforms import compose_rigid, invert_rigid
from torch3dv.testing.scenes import _cast, _gen, look_at


@dataclass(frozen=True)
class RenderedPair:
    """Two rendered views of a textured scene with ground truth.

    Attributes:
        image0, image1: colour images (B, 3, H, W) in [0, 1].
        depth0, depth1: z-depth of the ray through each pixel centre (B, H, W), metres; 0 where ``valid`` is False.
        valid0, valid1: (B, H, W) bool, True where the centre ray hit a surface.
        K0, K1: pinhole intrinsics (B, 3, 3), pixels (README, "Conventions").
        R0, t0, R1, t1: ``cam_from_world`` of each camera, (B, 3, 3) and (B, 3); the world is camera 0, so
            R0 = I and t0 = 0.
        R, t: ``cam1_from_cam0`` (B, 3, 3), (B, 3); |t| is the baseline in metres.
        H: (B, 3, 3) homography with x1 ~ H x0 and H[2, 2] = 1 for ``planar`` scenes, else NaN.
        plane: (B, 4) plane (n, d) with n . X = d in the camera-0 frame for ``planar`` scenes, else NaN.
    """

    image0: Tensor
    image1: Tensor
    depth0: Tensor
    depth1: Tensor
    valid0: Tensor
    valid1: Tensor
    K0: Tensor
    K1: Tensor
    R0: Tensor
    t0: Tensor
    R1: Tensor
    t1: Tensor
    R: Tensor
    t: Tensor
    H: Tensor
    plane: Tensor


@dataclass(frozen=True)
class _Quads:
    """Rectangles: corner o (B, P, 3), edge vectors u, v (B, P, 3) (orthogonal), so points o + a u + b v, a, b in
    [0, 1]; textures (B, P, 3, T, T) indexed by (a, b) -> (column, row)."""

    o: Tensor
    u: Tensor
    v: Tensor
    texture: Tensor
    extent: Tensor  # (B, P, 2) fraction of the texture each quad uses along a and b (texels per metre alike)


def procedural_texture(batch: int, size: int = 256, g: torch.Generator | None = None) -> Tensor:
    """Seeded colour texture (B, 3, size, size) in [0, 1]: value noise over several octaves plus sharp shapes.

    Args:
        batch: number of textures.
        size: side length in texels.
        g: generator (seeded).
    """
    g = _gen(g)
    B, T = batch, size
    tex = torch.zeros(B, 3, T, T, dtype=torch.float32)
    amp = 1.0
    n = 4
    while n <= T // 2:
        noise = torch.rand(B, 3, n, n, generator=g, dtype=torch.float32)
        grey = torch.rand(B, 1, n, n, generator=g, dtype=torch.float32)
        noise = 0.35 * noise + 0.65 * grey  # mostly luminance: detectors run on grey images
        tex = tex + amp * F.interpolate(noise, size=(T, T), mode="bilinear", align_corners=False)
        amp *= 0.75
        n *= 2
    tex = (tex - tex.mean(dim=(-1, -2), keepdim=True)) / tex.std(dim=(-1, -2), keepdim=True).clamp_min(1e-9)
    tex = 0.5 + 0.18 * tex
    # sharp-edged rectangles and discs at three scales, one candidate per cell of a grid (vectorised, O(T^2))
    yy = torch.arange(T, dtype=torch.float32)[:, None].expand(T, T)
    xx = torch.arange(T, dtype=torch.float32)[None, :].expand(T, T)
    for cell in (max(T // 6, 4), max(T // 16, 4), max(T // 40, 4)):
        n = -(-T // cell)
        ix, iy = (xx // cell).long(), (yy // cell).long()

        def per_cell(k: int = 1) -> Tensor:
            return torch.rand(B, k, n, n, generator=g, dtype=torch.float32)[:, :, iy, ix]

        centre = per_cell(2) * cell * 0.5 + cell * 0.25
        half = (0.15 + 0.3 * per_cell(2)) * cell
        dx = xx - (ix * cell)[None] - centre[:, 0]
        dy = yy - (iy * cell)[None] - centre[:, 1]
        rect = (dx.abs() < half[:, 0]) & (dy.abs() < half[:, 1])
        disc = (dx / half[:, 0]) ** 2 + (dy / half[:, 0]) ** 2 < 1
        kind = per_cell()[:, 0]
        present = per_cell()[:, 0] < 0.6
        inside = present & torch.where(kind < 0.5, rect, disc)
        col = 0.8 * per_cell(3) + 0.1
        tex = torch.where(inside[:, None], col, tex)
    return tex.clamp(0.0, 1.0).double()


def _frame(normal: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors spanning the plane orthogonal to ``normal`` (B, 3)."""
    helper = torch.tensor([0.0, 1.0, 0.0], dtype=normal.dtype).expand_as(normal)
    alt = torch.tensor([1.0, 0.0, 0.0], dtype=normal.dtype).expand_as(normal)
    a = torch.linalg.cross(helper, normal, dim=-1)
    a = torch.where(a.norm(dim=-1, keepdim=True) < 1e-6, torch.linalg.cross(alt, normal, dim=-1), a)
    a = a / a.norm(dim=-1, keepdim=True)
    b = torch.linalg.cross(normal, a, dim=-1)
    return a, b


def _quad(center: Tensor, normal: Tensor, width: Tensor, height: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a, b = _frame(normal / normal.norm(dim=-1, keepdim=True))
    u = a * width[:, None]
    v = b * height[:, None]
    return center - 0.5 * u - 0.5 * v, u, v


def _scene(B: int, planar: bool, num_cards: int, texture_size: int, g: torch.Generator):
    dt = torch.float64
    quads = []
    if planar:
        # one wall 3-5 m away, tilted by up to ~25 degrees, large enough to fill both views
        tilt = (0.25 * torch.randn(B, 2, generator=g, dtype=dt)).clamp(-0.45, 0.45)
        n = torch.cat([tilt, -torch.ones(B, 1, dtype=dt)], dim=-1)
        n = n / n.norm(dim=-1, keepdim=True)
        c = torch.zeros(B, 3, dtype=dt)
        c[:, 2] = torch.empty(B, dtype=dt).uniform_(3.0, 5.0, generator=g)
        size = torch.full((B,), 14.0, dtype=dt)
        quads.append(_quad(c, n, size, size))
        plane = torch.cat([n, (n * c).sum(-1, keepdim=True)], dim=-1)
    else:
        back = torch.zeros(B, 3, dtype=dt)
        back[:, 2] = torch.empty(B, dtype=dt).uniform_(6.0, 7.0, generator=g)
        quads.append(_quad(back, torch.tensor([0.0, 0.0, -1.0], dtype=dt).expand(B, 3), torch.full((B,), 16.0,
                                                                                                     dtype=dt),
                           torch.full((B,), 12.0, dtype=dt)))
        floor = torch.stack([torch.zeros(B, dtype=dt), torch.empty(B, dtype=dt).uniform_(1.2, 1.6, generator=g),
                             torch.full((B,), 3.5, dtype=dt)], dim=-1)
        quads.append(_quad(floor, torch.tensor([0.0, -1.0, 0.0], dtype=dt).expand(B, 3),
                           torch.full((B,), 16.0, dtype=dt), torch.full((B,), 9.0, dtype=dt)))
        for _ in range(num_cards):
            c = torch.stack([torch.empty(B, dtype=dt).uniform_(-1.3, 1.3, generator=g),
                             torch.empty(B, dtype=dt).uniform_(-0.9, 0.7, generator=g),
                             torch.empty(B, dtype=dt).uniform_(2.8, 4.8, generator=g)], dim=-1)
            n = torch.cat([0.5 * torch.randn(B, 2, generator=g, dtype=dt), -torch.ones(B, 1, dtype=dt)], dim=-1)
            w = torch.empty(B, dtype=dt).uniform_(0.8, 1.5, generator=g)
            h = torch.empty(B, dtype=dt).uniform_(0.6, 1.2, generator=g)
            quads.append(_quad(c, n, w, h))
        plane = torch.full((B, 4), float("nan"), dtype=dt)
    P = len(quads)
    o = torch.stack([q[0] for q in quads], dim=1)
    u = torch.stack([q[1] for q in quads], dim=1)
    v = torch.stack([q[2] for q in quads], dim=1)
    tex = procedural_texture(B * P, texture_size, g).reshape(B, P, 3, texture_size, texture_size)
    # a texture spans 12 m: smaller quads use part of it, so the texel density is the same on every quad
    extent = (torch.stack([u.norm(dim=-1), v.norm(dim=-1)], dim=-1) / 12.0).clamp(max=1.0)
    return _Quads(o, u, v, tex, extent), plane


def _cast_rays(quads: _Quads, C: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit of rays C + s d (C (B, 3), d (B, R, 3), world frame) with the quads.

    Returns:
        (s (B, R) ray parameter, inf for no hit; index (B, R) of the quad hit; texture coordinates (B, R, 2) in
        [0, 1]).
    """
    o, u, v = quads.o, quads.u, quads.v  # (B, P, 3)
    n = torch.linalg.cross(u, v, dim=-1)
    num = ((o - C[:, None]) * n).sum(-1)  # (B, P)
    den = torch.einsum("brk,bpk->brp", d, n)  # (B, R, P)
    ok = den.abs() > 1e-12
    s = num[:, None] / torch.where(ok, den, torch.ones_like(den))
    X = C[:, None, None] + s[..., None] * d[:, :, None]  # (B, R, P, 3)
    rel = X - o[:, None]
    a = (rel * u[:, None]).sum(-1) / (u * u).sum(-1)[:, None]
    b = (rel * v[:, None]).sum(-1) / (v * v).sum(-1)[:, None]
    hit = ok & (s > 1e-6) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
    s = torch.where(hit, s, torch.full_like(s, math.inf))
    smin, idx = s.min(dim=-1)
    ab = torch.stack([a, b], dim=-1).gather(2, idx[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
    return smin, idx, ab


def _sample(quads: _Quads, idx: Tensor, ab: Tensor, hit: Tensor) -> Tensor:
    """Bilinear texture lookup (B, R, 3) through one atlas per scene (the P textures side by side)."""
    B, P, C, T, _ = quads.texture.shape
    atlas = quads.texture.permute(0, 2, 3, 1, 4).reshape(B, C, T, P * T)
    # texel centres at integers: column a * (T - 1) within the tile, clamped so no tile bleeds into the next
    ext = quads.extent.gather(1, idx.reshape(B, -1, 1).expand(-1, -1, 2)).reshape(ab.shape)
    ab = ab.clamp(0, 1) * ext
    col = ab[..., 0] * (T - 1) + idx.to(ab.dtype) * T
    row = ab[..., 1] * (T - 1)
    grid = torch.stack([(col + 0.5) / (P * T) * 2 - 1, (row + 0.5) / T * 2 - 1], dim=-1)  # align_corners=False
    out = F.grid_sample(atlas, grid[:, None], mode="bilinear", align_corners=False, padding_mode="border")
    out = out[:, :, 0].transpose(1, 2)
    return torch.where(hit[..., None], out, torch.zeros_like(out))


def _render_view(quads: _Quads, K: Tensor, R: Tensor, t: Tensor, size: tuple[int, int], ss: int):
    W, H = size
    B = K.shape[0]
    dt = K.dtype
    offs = (torch.arange(ss, dtype=dt) + 0.5) / ss - 0.5
    # sub-sample grid around each pixel centre; row-major (v, u, sv, su)
    v = torch.arange(H, dtype=dt)[:, None, None, None] + offs[None, None, :, None]
    u = torch.arange(W, dtype=dt)[None, :, None, None] + offs[None, None, None, :]
    uu, vv = torch.broadcast_tensors(u, v)
    pix = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1).reshape(1, -1, 3)
    Kinv = torch.linalg.inv(K)
    d_cam = pix @ Kinv.transpose(-1, -2)  # (B, R, 3) z = 1
    Rw, Cw = invert_rigid(R, t)  # world_from_cam: rotation and camera centre
    d = d_cam @ Rw.transpose(-1, -2)
    s, idx, ab = _cast_rays(quads, Cw, d)
    hit = torch.isfinite(s)
    col = _sample(quads, idx, ab, hit).reshape(B, H, W, ss * ss, 3).mean(dim=3).permute(0, 3, 1, 2)
    # centre ray: z-depth = s because d_cam has z = 1
    centre = torch.stack([torch.arange(W, dtype=dt)[None, :].expand(H, W),
                          torch.arange(H, dtype=dt)[:, None].expand(H, W), torch.ones(H, W, dtype=dt)],
                         dim=-1).reshape(1, -1, 3)
    dc = (centre @ Kinv.transpose(-1, -2)) @ Rw.transpose(-1, -2)
    sc, _, _ = _cast_rays(quads, Cw, dc)
    valid = torch.isfinite(sc).reshape(B, H, W)
    depth = torch.where(valid, sc.reshape(B, H, W), torch.zeros_like(valid, dtype=dt))
    return col.clamp(0, 1), depth, valid


def render_pair(
    batch: int = 1,
    image_size: tuple[int, int] = (320, 240),
    planar: bool = False,
    baseline: tuple[float, float] = (0.3, 0.7),
    max_rotation_deg: float = 8.0,
    num_cards: int = 3,
    supersample: int = 2,
    texture_size: int = 512,
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RenderedPair:
    """Renders B independent textured scenes from two cameras each, with ground truth.

    Camera 0 is the world frame and looks down +z at the scene. Camera 1 sits ``baseline`` metres away, mostly
    sideways, looks at the scene centre (4 m ahead) and is rolled and panned by up to ``max_rotation_deg``. Both
    cameras share the size; focal lengths are 0.8-1.0 x width, principal points near the image centre.

    Args:
        batch: number of independent scenes B.
        image_size: (width, height) in pixels. ~320x240 renders in well under a second on a CPU.
        planar: one tilted textured wall filling both views (``H`` and ``plane`` are then set).
        baseline: range of camera distances, metres.
        max_rotation_deg: extra random rotation of camera 1 (degrees, CLI-style unit), on top of looking at the
            scene centre.
        num_cards: number of tilted textured cards in front of the back wall (non-planar scenes).
        supersample: rays per pixel along each axis (anti-aliasing).
        texture_size: texels per texture side.
        seed: int seed or a generator.
        dtype, device: of the returned tensors.

    Returns:
        :class:`RenderedPair`.

    Raises:
        ValueError: non-positive sizes.
    """
    W, H = image_size
    if W < 8 or H < 8 or batch < 1 or supersample < 1:
        raise ValueError(f"image_size must be at least (8, 8), batch and supersample positive; got {image_size}, "
                         f"{batch}, {supersample}")
    g = _gen(seed)
    B = batch
    dt = torch.float64
    quads, plane = _scene(B, planar, num_cards, texture_size, g)
    f0 = W * torch.empty(B, dtype=dt).uniform_(0.8, 1.0, generator=g)
    f1 = W * torch.empty(B, dtype=dt).uniform_(0.8, 1.0, generator=g)
    pp = lambda: torch.empty(B, dtype=dt).uniform_(-0.02, 0.02, generator=g)
    K0 = intrinsics_matrix(f0, f0, (W - 1) / 2 + W * pp(), (H - 1) / 2 + H * pp())
    K1 = intrinsics_matrix(f1, f1, (W - 1) / 2 + W * pp(), (H - 1) / 2 + H * pp())
    R0 = torch.eye(3, dtype=dt).expand(B, 3, 3).clone()
    t0 = torch.zeros(B, 3, dtype=dt)
    dirn = torch.cat([torch.where(torch.rand(B, 1, generator=g) < 0.5, -1.0, 1.0).to(dt),
                      0.4 * torch.randn(B, 1, generator=g, dtype=dt), 0.3 * torch.randn(B, 1, generator=g, dtype=dt)],
                     dim=-1)
    dirn = dirn / dirn.norm(dim=-1, keepdim=True)
    C1 = dirn * torch.empty(B, 1, dtype=dt).uniform_(*baseline, generator=g)
    target = torch.tensor([0.0, 0.0, 4.0], dtype=dt).expand(B, 3)
    Rl, _ = look_at(C1, target)
    extra = axis_angle_to_matrix(
        (2 * torch.rand(B, 3, generator=g, dtype=dt) - 1) * math.radians(max_rotation_deg) / math.sqrt(3))
    R1 = extra @ Rl
    t1 = -(R1 @ C1[..., None])[..., 0]
    R, t = compose_rigid(R1, t1, *invert_rigid(R0, t0))
    img0, depth0, valid0 = _render_view(quads, K0, R0, t0, image_size, supersample)
    img1, depth1, valid1 = _render_view(quads, K1, R1, t1, image_size, supersample)
    if planar:
        n, d = plane[:, :3], plane[:, 3]
        Hm = K1 @ (R + t[..., :, None] @ n[:, None, :] / d[:, None, None]) @ torch.linalg.inv(K0)
        Hm = Hm / Hm[:, 2:3, 2:3]
    else:
        Hm = torch.full((B, 3, 3), float("nan"), dtype=dt)
    out = RenderedPair(img0, img1, depth0, depth1, valid0, valid1, K0, K1, R0, t0, R1, t1, R, t, Hm, plane)
    return _cast(out, dtype, device)
