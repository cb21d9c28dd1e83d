"""Iterative closest point (ICP): point-to-point, point-to-plane and generalized ICP, batched over pairs.

The result is ``target_from_source = (R, t)``: ``Y ~ R X + t`` for source points X and target points Y
(README, "Conventions"). Every pair of a batch is solved at once: each iteration matches all pairs (exact
nearest neighbours within ``max_correspondence_distance``, :mod:`torch3dv.registration.neighbors`; the target
is indexed once per scale and, with the k-d tree, a source point is searched again only when its cached
candidates no longer prove the answer, see ``NearestTracker``), then solves all pairs' small systems
together; a pair that has converged stops moving while the others go on (there is no Python loop over pairs).

Methods (one linearised step per iteration, ``T <- exp(xi) T`` with ``xi = (omega, v)``):

* ``"point_to_point"``: closed-form weighted Kabsch on the current matches (Besl & McKay 1992).
* ``"point_to_plane"``: residual ``n_y . (R x + t - y)`` with target normals; one Gauss-Newton step on the
  6x6 normal equations (Chen & Medioni 1992).
* ``"gicp"``: plane-to-plane (Segal et al. 2009): residual ``d = y - (R x + t)`` weighted by
  ``(C_y + R C_x R^T)^-1`` where C are neighbourhood covariances whose eigenvalues are replaced by
  ``(epsilon, 1, 1)``; one Gauss-Newton step on the 6x6 system.

Robust kernels (``loss``): ``"huber"``, ``"cauchy"`` (from :mod:`torch3dv.optim.losses`) and ``"tukey"``,
applied as IRLS weights to the residual length in metres (point-to-plane distance for ``point_to_plane``,
Euclidean distance otherwise), with threshold ``loss_scale``.

Convergence follows Open3D's ``ICPConvergenceCriteria``: a pair stops when both the change of fitness and the
change of inlier RMSE (metres) between two iterations are below ``relative_fitness`` and ``relative_rmse``
(absolute changes, as in Open3D), or after ``max_iterations``.

Multi-scale: with ``voxel_sizes = (v_1, ..., v_S)`` (coarse to fine; 0 = full resolution) both clouds are
voxel-downsampled at each scale and ICP runs with the matching entry of ``max_correspondence_distance`` and
``max_iterations`` (tuples of the same length, or one value for all scales).

Gradients: the iterations run without gradient. At the end, with the final correspondences and IRLS weights
fixed, one more step is taken *with* gradient from the detached solution: the closed-form weighted Kabsch
for point-to-point, one Gauss-Newton step for point-to-plane and GICP. The returned pose is the last iterate
(the same value as Open3D's after as many iterations) carrying the gradient of that step,
``T + (step(T, theta) - stop_gradient(step(T, theta)))``. At a converged fixed point the step is zero and its
derivative is the implicit-function-theorem derivative of the fixed point with respect to the
source points, the target points and caller-supplied target normals (README, "Gradients"): in general
``dT*/dtheta = (I - d step/dT)^-1 d step/dtheta``, and the derivative of the step alone is exact when
``d step/dT = 0``. It is for point-to-point without a robust kernel (the Kabsch solution for the fixed matches
does not depend on the pose it starts from), whatever the residuals. For point-to-plane and GICP the step uses
the Gauss-Newton matrix instead of the exact Hessian, and IRLS weights, estimated normals and GICP covariances
(which depend on the points) enter as constants: every neglected term carries a residual factor, so the
derivative is exact where the residuals vanish at the optimum and approximate otherwise (error proportional to
the residuals). Matching is a discrete choice (piecewise constant: no gradient). Tests gradcheck (float64)
every method at such optima, with robust kernels, estimated normals, a padded batch and two scales, and
point-to-point on noisy data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_tensor
from torch3dv.geometry.rotations import axis_angle_to_matrix
from torch3dv.optim.losses import get_loss
from torch3dv.registration.neighbors import NearestTracker, NeighborIndex
from torch3dv.registration.normals import estimate_normals, local_covariances
from torch3dv.registration.pointcloud import clean_points, voxel_downsample
from torch3dv.solvers.rigid import kabsch

ICP_METHODS = ("point_to_point", "point_to_plane", "gicp")
ICP_LOSSES = ("trivial", "huber", "cauchy", "tukey")


@dataclass(frozen=True)
class ICPOptions:
    """Options of :func:`icp`.

    Attributes:
        method: ``"point_to_point"``, ``"point_to_plane"`` or ``"gicp"``.
        max_correspondence_distance: matches farther than this (metres) are ignored; one value or one per
            scale of ``voxel_sizes``.
        max_iterations: iterations per scale (one value or one per scale).
        relative_fitness: stop when the fitness changes by less than this (and the RMSE too).
        relative_rmse: stop when the inlier RMSE changes by less than this many metres (and the fitness too).
        voxel_sizes: coarse-to-fine voxel sizes (metres) for multi-scale ICP; ``()`` = one scale at full
            resolution; an entry 0 means full resolution.
        loss: robust kernel, ``"trivial"``, ``"huber"``, ``"cauchy"`` or ``"tukey"``.
        loss_scale: kernel threshold in metres (default: a third of the correspondence distance).
        num_neighbors: neighbours for normals (point-to-plane) and covariances (GICP).
        gicp_epsilon: smallest relative eigenvalue of the GICP covariances.
        min_correspondences: fewer matches than this marks the pair failed (default 3 for point-to-point,
            6 otherwise).
        neighbor_method: ``"auto"``, ``"kdtree"``, ``"grid"`` or ``"brute"`` (see
            :mod:`torch3dv.registration.neighbors`; ``"auto"`` is the SciPy k-d tree on the CPU when installed).
    """

    method: str = "point_to_plane"
    max_correspondence_distance: float | tuple[float, ...] = 0.05
    max_iterations: int | tuple[int, ...] = 30
    relative_fitness: float = 1e-6
    relative_rmse: float = 1e-6
    voxel_sizes: tuple[float, ...] = ()
    loss: str = "trivial"
    loss_scale: float | None = None
    num_neighbors: int = 20
    gicp_epsilon: float = 1e-3
    min_correspondences: int | None = None
    neighbor_method: str = "auto"

    def __post_init__(self):
        if self.method not in ICP_METHODS:
            raise ValueError(f"method must be one of {ICP_METHODS}, got {self.method!r}")
        if self.loss not in ICP_LOSSES:
            raise ValueError(f"loss must be one of {ICP_LOSSES}, got {self.loss!r}")
        S = max(1, len(self.voxel_sizes))
        for name in ("max_correspondence_distance", "max_iterations"):
            v = getattr(self, name)
            if isinstance(v, (tuple, list)) and len(v) != S:
                raise ValueError(f"{name} has {len(v)} entries but there are {S} scales")
        for d in self.distances():
            if not (d > 0 and math.isfinite(d)):
                raise ValueError(f"max_correspondence_distance must be positive and finite, got {d}")
        if any(i < 0 for i in self.iterations()):
            raise ValueError("max_iterations must be >= 0")
        if any(v < 0 for v in self.voxel_sizes):
            raise ValueError("voxel_sizes must be >= 0")
        if self.loss_scale is not None and not self.loss_scale > 0:
            raise ValueError("loss_scale must be positive")

    def scales(self) -> int:
        return max(1, len(self.voxel_sizes))

    def distances(self) -> tuple[float, ...]:
        d = self.max_correspondence_distance
        return tuple(float(x) for x in d) if isinstance(d, (tuple, list)) else (float(d),) * self.scales()

    def iterations(self) -> tuple[int, ...]:
        i = self.max_iterations
        return tuple(int(x) for x in i) if isinstance(i, (tuple, list)) else (int(i),) * self.scales()


class ICPResult(NamedTuple):
    """``target_from_source`` from :func:`icp` (``Y ~ R X + t``).

    Attributes:
        R: (*B, 3, 3) rotation.
        t: (*B, 3) translation, metres.
        transform: (*B, 4, 4) homogeneous matrix ``[[R, t], [0, 1]]``.
        fitness: (*B,) fraction of (valid) source points with a target point within the correspondence
            distance, at the final pose and finest scale (Open3D's definition).
        inlier_rmse: (*B,) RMSE of those correspondences (their Euclidean distances), metres.
        num_iterations: (*B,) iterations taken, summed over scales.
        converged: (*B,) bool, True where the convergence criteria stopped the finest scale.
        success: (*B,) bool, False for invalid inputs (NaN, too few points or matches) or degenerate
            geometry (then R = I, t = 0 unless an ``init`` was given, in which case it is returned).
    """

    R: Tensor
    t: Tensor
    transform: Tensor
    fitness: Tensor
    inlier_rmse: Tensor
    num_iterations: Tensor
    converged: Tensor
    success: Tensor


def to_homogeneous(R: Tensor, t: Tensor) -> Tensor:
    """(*B, 3, 3), (*B, 3) -> (*B, 4, 4)."""
    top = torch.cat([R, t[..., None]], -1)
    bottom = torch.zeros(*R.shape[:-2], 1, 4, dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


def _skew(v: Tensor) -> Tensor:
    z = torch.zeros_like(v[..., 0])
    return torch.stack([z, -v[..., 2], v[..., 1], v[..., 2], z, -v[..., 0], -v[..., 1], v[..., 0], z],
                       -1).reshape(*v.shape, 3)


def robust_weights(s: Tensor, loss: str, scale: float) -> Tensor:
    """IRLS weights for squared residual lengths ``s`` (metres^2)."""
    if loss == "trivial":
        return torch.ones_like(s)
    if loss == "tukey":
        c2 = scale * scale
        return torch.where(s < c2, (1.0 - s / c2) ** 2, torch.zeros_like(s))
    return get_loss(loss, scale)(s)[1]


def _solve6(H: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """xi = -H^-1 g for (B, 6, 6) systems; ok False where H is (numerically) rank deficient."""
    eps = torch.finfo(H.dtype).eps
    ev = torch.linalg.eigvalsh(H.detach())
    ok = torch.isfinite(ev).all(-1) & (ev[..., 0] > 1e3 * eps * ev[..., -1].abs()) & (ev[..., -1] > 0)
    eye = torch.eye(6, dtype=H.dtype, device=H.device)
    Hs = torch.where(ok[..., None, None], H, eye)
    xi = -torch.linalg.solve(Hs, torch.where(ok[..., None], g, torch.zeros_like(g)))
    return torch.where(ok[..., None], xi, torch.zeros_like(xi)), ok


class _Problem(NamedTuple):
    src: Tensor  # (B, N, 3)
    smask: Tensor
    tgt: Tensor  # (B, M, 3)
    tmask: Tensor
    normals: Tensor | None  # (B, M, 3) target normals
    cov_s: Tensor | None  # (B, N, 3, 3) regularised source covariances
    cov_t: Tensor | None
    index: NeighborIndex  # over the (detached) target, built once per scale


def _gicp_cov(points: Tensor, mask: Tensor, k: int, eps: float, index: NeighborIndex) -> Tensor:
    lc = local_covariances(points, mask, k, index=index)
    lam = torch.tensor([eps, 1.0, 1.0], dtype=points.dtype, device=points.device)
    V = lc.eigenvectors
    C = (V * lam) @ V.transpose(-1, -2)
    eye = torch.eye(3, dtype=points.dtype, device=points.device)
    return torch.where(lc.valid[..., None, None], C, eye)


def _dot3(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product over a last axis of size 3 (written out: faster than ``(a * b).sum(-1)`` on CPU)."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _cross3(a: Tensor, b: Tensor) -> Tensor:
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], -1)


def _transform(X: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """R X + t for points X (B, N, 3)."""
    return torch.baddbmm(t[:, None], X, R.transpose(-1, -2))


def _gather_rows(P: Tensor, idx: Tensor) -> Tensor:
    """Rows ``P[b, idx[b, i]]`` of P (B, M, ...) for idx (B, N) -> (B, N, ...) (one flat ``index_select``: several
    times faster than ``torch.gather`` with an expanded index on CPU; differentiable w.r.t. P)."""
    B, M = P.shape[:2]
    flat = (idx + torch.arange(B, device=idx.device)[:, None] * M).reshape(-1)
    return P.reshape(B * M, -1).index_select(0, flat).reshape(*idx.shape, *P.shape[2:])


def _kabsch_nograd(X: Tensor, Y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted Kabsch for the iterations (no gradient): SVD of the centred 3x3 cross-covariance.

    Same minimiser and the same ``success`` rule as :func:`torch3dv.solvers.rigid.kabsch` (at least 3 points
    with weight, and ``sigma_2 + sign(det) sigma_3`` above 100 eps of ``sigma_1``) without its input checks and
    differentiable eigen-solver, which cost more than the solve itself for one large cloud per pair.
    """
    dtype = X.dtype
    eps = torch.finfo(dtype).eps
    wsum = w.sum(-1)
    wn = (w / wsum.clamp_min(torch.finfo(dtype).tiny)[:, None])[:, None]  # (B, 1, N)
    mx, my = wn @ X, wn @ Y  # (B, 1, 3)
    S = (X - mx).mul_(wn.transpose(1, 2)).transpose(1, 2) @ (Y - my)  # sum_i w_i x_i y_i^T
    U, sig, Vh = torch.linalg.svd(S)
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.ones_like(sig)
    D[:, 2] = d
    R = (Vh.transpose(1, 2) * D[:, None]) @ U.transpose(1, 2)
    t = (my - mx @ R.transpose(1, 2))[:, 0]
    ok = ((w > 0).sum(-1) >= 3) & (sig[:, 1] + d * sig[:, 2] > 100 * eps * sig[:, 0]) & (wsum > 0)
    ok = ok & torch.isfinite(S).all(-1).all(-1)
    return R, t, ok


def _step(p: _Problem, R: Tensor, t: Tensor, idx: Tensor, w: Tensor, method: str,
          src: Tensor | None = None, tgt: Tensor | None = None, normals: Tensor | None = None):
    """One update from pose (R, t) with fixed matches ``idx`` (B, N) and weights ``w`` (B, N).

    Returns new (R, t, ok). ``src``/``tgt``/``normals`` override the stored tensors (to carry gradients).
    """
    src = p.src if src is None else src
    tgt = p.tgt if tgt is None else tgt
    B, N = idx.shape
    Y = _gather_rows(tgt, idx)
    if method == "point_to_point":
        r = kabsch(src, Y, weights=w)
        return r.R, r.t, r.success
    Xt = _transform(src, R, t)
    if method == "point_to_plane":
        nrm = p.normals if normals is None else normals
        return _plane_step(Xt, Y, _gather_rows(nrm, idx), w, R, t)
    # gicp
    Cs = R[:, None] @ p.cov_s @ R[:, None].transpose(-1, -2)
    Ct = _gather_rows(p.cov_t, idx)
    M = torch.linalg.inv(Cs + Ct).detach() * w[..., None, None]
    d = Y - Xt
    J = torch.cat([_skew(Xt), -torch.eye(3, dtype=Xt.dtype, device=Xt.device).expand(B, N, 3, 3)], -1)
    MJ = M @ J  # (B, N, 3, 6)
    H = torch.einsum("bnai,bnaj->bij", J, MJ)
    g = torch.einsum("bnai,bna->bi", MJ, d)
    return _update(H, g, R, t)


def _plane_step(Xt: Tensor, Y: Tensor, n: Tensor, w: Tensor, R: Tensor, t: Tensor):
    """Gauss-Newton step of ``sum w (n . (Xt - Y))^2`` about the current pose."""
    res = _dot3(Xt - Y, n)  # (B, N)
    J = torch.cat([_cross3(Xt, n), n], -1)  # (B, N, 6)
    Jw = J * w[..., None]
    Jwt = Jw.transpose(1, 2)
    H = Jwt @ J
    g = (Jwt @ res[..., None])[..., 0]
    return _update(H, g, R, t)


def _update(H: Tensor, g: Tensor, R: Tensor, t: Tensor):
    xi, ok = _solve6(H, g)
    Rd = axis_angle_to_matrix(xi[:, :3])
    return Rd @ R, (Rd @ t[..., None])[..., 0] + xi[:, 3:], ok


class _Matches(NamedTuple):
    idx: Tensor  # (B, N) target row of every source row (0 where not valid)
    valid: Tensor  # (B, N) a target point within the correspondence distance
    d2: Tensor  # (B, N) squared distance (0 where not valid)
    res2: Tensor  # (B, N) squared residual length for the robust kernel (0 where not valid)
    Xt: Tensor  # (B, N, 3) moved source points
    Y: Tensor  # (B, N, 3) matched target points


def _match(p: _Problem, tracker: NearestTracker, R: Tensor, t: Tensor, method: str) -> _Matches:
    """Correspondences at pose (R, t) (no gradient); distances recomputed from the coordinates."""
    Xt = _transform(p.src, R, t)
    idx, valid = tracker(Xt, p.smask)
    Y = _gather_rows(p.tgt, idx)
    diff = Xt - Y
    zero = torch.zeros((), dtype=Xt.dtype, device=Xt.device)
    d2 = torch.where(valid, _dot3(diff, diff), zero)
    if method == "point_to_plane":
        r = _dot3(diff, _gather_rows(p.normals, idx))
        res2 = torch.where(valid, r * r, zero)
    else:
        res2 = d2
    return _Matches(idx, valid, d2, res2, Xt, Y)


def _icp_scale(p: _Problem, R: Tensor, t: Tensor, alive: Tensor, dist: float, iters: int, opts: ICPOptions,
               scale: float):
    """Runs one scale without gradient. Returns R, t, iterations (B,), converged (B,), ok (B,) and the matches at
    the returned pose."""
    tracker = NearestTracker(p.index, dist)
    B = p.src.shape[0]
    dtype = p.src.dtype
    nsrc = p.smask.sum(-1).clamp_min(1).to(dtype)
    active = alive.clone()
    converged = torch.zeros_like(alive)
    ok = alive.clone()
    its = torch.zeros(B, dtype=torch.long, device=p.src.device)
    prev_fit = prev_rmse = None
    min_corr = opts.min_correspondences or (3 if opts.method == "point_to_point" else 6)
    for it in range(iters + 1):
        m = _match(p, tracker, R, t, opts.method)
        cnt = m.valid.sum(-1)
        fit = cnt.to(dtype) / nsrc
        rmse = torch.sqrt(m.d2.sum(-1) / cnt.clamp_min(1).to(dtype))
        if prev_fit is not None:
            conv = ((fit - prev_fit).abs() < opts.relative_fitness) & ((rmse - prev_rmse).abs() < opts.relative_rmse)
            converged = converged | (active & conv)
            active = active & ~conv
        prev_fit, prev_rmse = fit, rmse
        if it == iters or not bool(active.any()):
            break
        w = m.valid.to(dtype) * robust_weights(m.res2, opts.loss, scale)
        enough = cnt >= min_corr
        if opts.method == "point_to_point":
            R1, t1, step_ok = _kabsch_nograd(p.src, m.Y, w)
        elif opts.method == "point_to_plane":
            R1, t1, step_ok = _plane_step(m.Xt, m.Y, _gather_rows(p.normals, m.idx), w, R, t)
        else:
            R1, t1, step_ok = _step(p, R, t, m.idx, w, opts.method)
        good = active & enough & step_ok & torch.isfinite(R1).all((-1, -2)) & torch.isfinite(t1).all(-1)
        ok = ok & ~(active & ~good)
        active = active & good
        R = torch.where(active[:, None, None], R1, R)
        t = torch.where(active[:, None], t1, t)
        its = its + active.long()
    return R, t, its, converged, ok, m


def icp(
    source: Tensor,
    target: Tensor,
    init: Tensor | None = None,
    source_mask: Tensor | None = None,
    target_mask: Tensor | None = None,
    target_normals: Tensor | None = None,
    options: ICPOptions | None = None,
) -> ICPResult:
    """Refines ``target_from_source`` by ICP, batched over pairs of clouds.

    Args:
        source: (*B, N, 3) source points, metres, source frame.
        target: (*B, M, 3) target points, metres, target frame.
        init: optional (*B, 4, 4) initial ``target_from_source`` (default identity).
        source_mask: optional (*B, N) bool (False = padding, may hold NaN).
        target_mask: optional (*B, M) bool.
        target_normals: optional (*B, M, 3) unit target normals for ``point_to_plane`` (estimated from
            ``num_neighbors`` neighbours otherwise); used at full-resolution scales and differentiable.
        options: :class:`ICPOptions`.

    Returns:
        :class:`ICPResult`; differentiable w.r.t. ``source``, ``target`` and ``target_normals`` (module docstring).

    Raises:
        ValueError: wrong shapes, dtypes, devices or mismatched batch shapes.
    """
    opts = options or ICPOptions()
    cs = clean_points(source, source_mask, "source")
    ct = clean_points(target, target_mask, "target")
    if source.shape[:-2] != target.shape[:-2]:
        raise ValueError(f"source (*B, N, 3) and target (*B, M, 3) must share *B, got {tuple(source.shape)} "
                         f"and {tuple(target.shape)}")
    if source.dtype != target.dtype or source.device != target.device:
        raise ValueError("source and target must share dtype and device")
    lead = source.shape[:-2]
    dtype, dev = source.dtype, source.device
    N, M = source.shape[-2], target.shape[-2]
    src, smask = cs.points.reshape(-1, N, 3), cs.mask.reshape(-1, N)
    tgt, tmask = ct.points.reshape(-1, M, 3), ct.mask.reshape(-1, M)
    B = src.shape[0]
    finite = (cs.finite & ct.finite).reshape(-1)
    normals_in = None
    if target_normals is not None:
        check_float(target_normals, "target_normals")
        if target_normals.shape != target.shape:
            raise ValueError(f"target_normals must have the shape of target {tuple(target.shape)}, "
                             f"got {tuple(target_normals.shape)}")
        normals_in = torch.where(tmask[..., None], target_normals.reshape(-1, M, 3),
                                 torch.zeros((), dtype=dtype, device=dev))
        finite = finite & torch.isfinite(normals_in).all(-1).all(-1)
    eye = torch.eye(3, dtype=dtype, device=dev).expand(B, 3, 3)
    if init is not None:
        check_tensor(init, "init")
        check_float(init, "init")
        if init.shape != (*lead, 4, 4):
            raise ValueError(f"init must have shape (*B, 4, 4) = {(*lead, 4, 4)}, got {tuple(init.shape)}")
        T0 = init.detach().reshape(B, 4, 4).to(dtype)
        finite = finite & torch.isfinite(T0).all(-1).all(-1)
        R0 = torch.where(finite[:, None, None], T0[:, :3, :3], eye)
        t0 = torch.where(finite[:, None], T0[:, :3, 3], torch.zeros(B, 3, dtype=dtype, device=dev))
    else:
        R0, t0 = eye.clone(), torch.zeros(B, 3, dtype=dtype, device=dev)
    alive = finite & (smask.sum(-1) > 0) & (tmask.sum(-1) > 0)
    dists, iters = opts.distances(), opts.iterations()
    voxels = opts.voxel_sizes or (0.0,)
    R, t = R0.detach(), t0.detach()
    total_its = torch.zeros(B, dtype=torch.long, device=dev)
    ok = alive.clone()
    converged = torch.zeros_like(alive)
    p = m = None
    with torch.no_grad():
        for vox, dist, nit in zip(voxels, dists, iters):
            p = _make_problem(src.detach(), smask, tgt.detach(), tmask,
                              None if normals_in is None else normals_in.detach(), vox, opts)
            scale = opts.loss_scale or dist / 3.0
            R, t, its, converged, ok_s, m = _icp_scale(p, R, t, ok, dist, nit, opts, scale)
            ok = ok & ok_s
            total_its = total_its + its
    # final, differentiable step at full resolution with the final matches fixed; the last scale's index,
    # normals, covariances and matches are reused when it ran at full resolution
    dist = dists[-1]
    if voxels[-1] > 0:
        p = _make_problem(src, smask, tgt, tmask, normals_in, 0.0, opts)
        with torch.no_grad():
            m = _match(p, NearestTracker(p.index, dist), R, t, opts.method)
    p = p._replace(src=src, tgt=tgt, normals=p.normals if normals_in is None else normals_in)
    scale = opts.loss_scale or dist / 3.0
    with torch.no_grad():
        idx, valid = m.idx, m.valid
        w = valid.to(dtype) * robust_weights(m.res2, opts.loss, scale)
    min_corr = opts.min_correspondences or (3 if opts.method == "point_to_point" else 6)
    Rf, tf, step_ok = _step(p, R, t, idx, w, opts.method)
    cnt = valid.sum(-1)
    ok = ok & step_ok & (cnt >= min_corr) & torch.isfinite(Rf).all((-1, -2)) & torch.isfinite(tf).all(-1)
    # the value is the last iterate (what Open3D's ICP returns after as many iterations); the gradient is that
    # of the extra step (module docstring)
    R_out = torch.where(ok[:, None, None], R + (Rf - Rf.detach()), R0)
    t_out = torch.where(ok[:, None], t + (tf - tf.detach()), t0)
    with torch.no_grad():
        fitness = cnt.to(dtype) / smask.sum(-1).clamp_min(1).to(dtype)
        rmse = torch.sqrt(m.d2.sum(-1) / cnt.clamp_min(1).to(dtype))
        fitness = torch.where(alive, fitness, torch.zeros_like(fitness))
        rmse = torch.where(alive, rmse, torch.zeros_like(rmse))
    T = to_homogeneous(R_out, t_out)
    return ICPResult(
        R_out.reshape(*lead, 3, 3), t_out.reshape(*lead, 3), T.reshape(*lead, 4, 4), fitness.reshape(lead),
        rmse.reshape(lead), total_its.reshape(lead), (converged & ok).reshape(lead), ok.reshape(lead))


def _make_problem(src: Tensor, smask: Tensor, tgt: Tensor, tmask: Tensor, normals: Tensor | None, voxel: float,
                  opts: ICPOptions) -> _Problem:
    """Downsamples (voxel > 0), indexes the target and attaches normals / covariances for the chosen method."""
    if voxel > 0:
        s = voxel_downsample(src, voxel, smask)
        tg = voxel_downsample(tgt, voxel, tmask)
        src, smask, tgt, tmask = s.points, s.mask, tg.points, tg.mask
        normals = None
    nrm = cov_s = cov_t = None
    tindex = NeighborIndex(tgt.detach(), tmask, method=opts.neighbor_method)
    if opts.method in ("point_to_plane", "gicp"):
        with torch.no_grad():
            if opts.method == "point_to_plane":
                if normals is None:
                    nrm = estimate_normals(tgt.detach(), tmask, opts.num_neighbors, index=tindex)
            else:
                sindex = NeighborIndex(src.detach(), smask, method=opts.neighbor_method)
                cov_s = _gicp_cov(src.detach(), smask, opts.num_neighbors, opts.gicp_epsilon, sindex)
                cov_t = _gicp_cov(tgt.detach(), tmask, opts.num_neighbors, opts.gicp_epsilon, tindex)
        if nrm is None:
            nrm = normals
    return _Problem(src, smask, tgt, tmask, nrm, cov_s, cov_t, tindex)
