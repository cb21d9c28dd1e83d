"""Essential matrix: linear 8-point solver, decomposition into (R, t), and cheirality-based pose recovery.

Convention (README, "Conventions"): normalised image coordinates ``xn = K^-1 x`` satisfy ``x2n^T E x1n = 0``
with ``E = [t]x R`` for ``cam2_from_cam1 = (R, t)`` (``X_cam2 = R X_cam1 + t``). The minimal 5-point solver lives
in :mod:`torch3dv.solvers.essential_5point` and is re-exported here.

Gradients.

* :func:`essential_8point`: the null vector comes from ``eigh`` of the weighted 9x9 normal matrix (finite
  gradients whenever the smallest eigenvalue is simple, which the degeneracy test enforces). The projection onto
  the essential manifold ``E -> U diag(1, 1, 0) V^T`` is a custom autograd function: the forward pass uses an
  SVD, the backward pass the closed-form derivative of that map, which only divides by ``s1 + s2`` and
  ``s_i^2 - s3^2`` (i = 1, 2). It is therefore finite at exactly essential inputs (``s1 = s2``), where the
  derivative of the individual singular vectors (and so ``torch.linalg.svd``'s backward) is not.
* :func:`decompose_essential` avoids the SVD altogether: with ``E`` scaled to ``|E|_F = sqrt(2)`` (then
  ``|t| = 1``), ``t`` is the largest column of the cofactor matrix ``cof(E) = t t^T R`` and the two rotations
  are ``cof(E) -+ [t]x E`` (Horn 1990), polished by two polar Newton iterations ``R <- (R + R^-T) / 2`` so that
  slightly non-essential inputs still give rotations. All of it is smooth in ``E``.
* :func:`recover_pose`: (R, t) are differentiable through the decomposition of the selected matrix; the
  selection itself (and ``in_front``) is discrete.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv._checks import check_float, check_shape, check_tensor, prepare_correspondences
from torch3dv.linalg.normalization import normalize_points
from torch3dv.linalg.nullspace import weighted_design_nullspace
from torch3dv.linalg.skew import skew
from torch3dv.solvers.essential_5point import EssentialSolutions, epipolar_rows, essential_5point
from torch3dv.solvers.fundamental import MOMENTS_BF_MIN, _f8_moments, _f8_residual_sq, _least_squares_bf

__all__ = [
    "EssentialResult",
    "EssentialSolutions",
    "RelativePose",
    "decompose_essential",
    "essential_5point",
    "essential_8point",
    "essential_from_pose",
    "pose_from_essential",
    "project_to_essential",
    "recover_pose",
]


class EssentialResult(NamedTuple):
    """Result of :func:`essential_8point`.

    Attributes:
        E: (*B, 3, 3) essential matrices with singular values (1, 1, 0) (so ``|E|_F = sqrt(2)``); zeros where
            ``success`` is False.
        success: (*B,) bool.
    """

    E: Tensor
    success: Tensor


class RelativePose(NamedTuple):
    """Result of :func:`recover_pose`.

    Attributes:
        R: (*B, 3, 3) rotation of ``cam2_from_cam1``.
        t: (*B, 3) unit translation of ``cam2_from_cam1`` (the baseline direction; scale is unobservable).
        in_front: (*B, N) bool, correspondences triangulated in front of both cameras (and not too far).
        num_in_front: (*B,) int64, ``in_front.sum(-1)``.
        success: (*B,) bool.
    """

    R: Tensor
    t: Tensor
    in_front: Tensor
    num_in_front: Tensor
    success: Tensor

    @property
    def inliers(self) -> Tensor:
        """Alias of ``in_front``."""
        return self.in_front


def essential_from_pose(R: Tensor, t: Tensor) -> Tensor:
    """``E = [t]x R`` for ``cam2_from_cam1 = (R, t)``; R (*B, 3, 3), t (*B, 3) -> (*B, 3, 3)."""
    check_shape(R, "R", (3, 3), "(*B, 3, 3)")
    check_shape(t, "t", (3,), "(*B, 3)")
    check_float(R, "R")
    check_float(t, "t")
    return skew(t) @ R


# ----------------------------------------------------------------------------------------------------------
# projection onto the essential manifold


class _ProjectEssential(torch.autograd.Function):
    """``E -> U diag(1, 1, 0) V^T`` with a backward pass that stays finite when ``s1 = s2`` (module doc)."""

    @staticmethod
    def forward(E: Tensor) -> Tensor:  # type: ignore[override]
        U, _, Vh = torch.linalg.svd(E)
        d = torch.tensor([1.0, 1.0, 0.0], dtype=E.dtype, device=E.device)
        return (U * d) @ Vh

    @staticmethod
    def setup_context(ctx, inputs, output):
        (E,) = inputs
        U, S, Vh = torch.linalg.svd(E.detach())
        ctx.save_for_backward(U, S, Vh)

    @staticmethod
    def backward(ctx, gY: Tensor) -> Tensor:  # type: ignore[override]
        U, S, Vh = ctx.saved_tensors
        V = Vh.transpose(-1, -2)
        G = U.transpose(-1, -2) @ gY @ V
        s1, s2, s3 = S[..., 0], S[..., 1], S[..., 2]
        tiny = torch.finfo(S.dtype).tiny ** 0.5

        def safe(x):
            return torch.where(x.abs() > tiny, x, torch.full_like(x, tiny))

        gO = torch.zeros_like(G)
        a = (G[..., 0, 1] - G[..., 1, 0]) / safe(s1 + s2)
        gO[..., 0, 1] = a
        gO[..., 1, 0] = -a
        for i, si in ((0, s1), (1, s2)):
            den = safe(si * si - s3 * s3)
            gO[..., i, 2] = (G[..., i, 2] * si + G[..., 2, i] * s3) / den
            gO[..., 2, i] = (G[..., i, 2] * s3 + G[..., 2, i] * si) / den
        return U @ gO @ Vh


def project_to_essential(E: Tensor) -> Tensor:
    """Closest essential matrix (Frobenius, up to scale): ``U diag(1, 1, 0) V^T`` for ``E = U S V^T``.

    Args:
        E: (*B, 3, 3) matrices (finite).

    Returns:
        (*B, 3, 3) essential matrices with singular values (1, 1, 0). Differentiable (module doc); the
        derivative is undefined when ``s2 = s3`` (rank < 2 input).
    """
    check_shape(E, "E", (3, 3), "(*B, 3, 3)")
    check_float(E, "E")
    return _ProjectEssential.apply(E)


# ----------------------------------------------------------------------------------------------------------
# 8-point


def _similarity(s: Tensor, mu: Tensor, mv: Tensor) -> Tensor:
    """Hartley normalisation ``[[s, 0, -s mu], [0, s, -s mv], [0, 0, 1]]`` (*B, 3, 3) from (*B,) tensors."""
    z, o = torch.zeros_like(s), torch.ones_like(s)
    return torch.stack([s, z, -s * mu, z, s, -s * mv, z, z, o], -1).reshape(*s.shape, 3, 3)


def _default_rank_tol(dtype: torch.dtype) -> float:
    return 1e-18 if dtype == torch.float64 else 1e-8


def essential_8point(
    x1n: Tensor,
    x2n: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    rank_tol: float | None = None,
) -> EssentialResult:
    """Normalised weighted linear 8-point essential matrix, projected onto the essential manifold.

    Minimises ``sum_i w_i (x2_i^T En x1_i)^2`` over unit-norm ``En`` in weighted Hartley-normalised coordinates
    (Hartley normalisation also conditions calibrated coordinates), denormalises, and projects onto the
    matrices with singular values (1, 1, 0).

    Degeneracy test: with ``V`` the eigenvectors of the weighted normal matrix ``A^T W A`` (ascending
    eigenvalues, ``l_8`` the largest), the Rayleigh quotient ``|W^1/2 A v_1|^2 / l_8`` of the second null-space
    candidate must exceed ``rank_tol`` (default 1e-18 for float64, 1e-8 for float32): a noise-free pure
    rotation (any ``[t]x R`` fits, a 3-dimensional null space) or a noise-free planar scene fails it. With
    noise these configurations are only nearly degenerate and pass; :func:`recover_pose` then catches pure
    rotations with its parallax test.

    Args:
        x1n: normalised image coordinates in camera 1, (*B, N, 2), N >= 8.
        x2n: normalised image coordinates in camera 2, (*B, N, 2).
        weights: optional non-negative weights (*B, N), acting as row multiplicities.
        mask: optional bool (*B, N); False rows are padding (may hold NaN) and are ignored.
        rank_tol: threshold of the degeneracy test.

    Returns:
        ``EssentialResult(E (*B, 3, 3), success (*B,))``; ``success`` is False for fewer than 8 used rows,
        NaN/inf in a used row, or a degenerate design; failed problems hold ``E = 0``.
    """
    c = prepare_correspondences({"x1n": x1n, "x2n": x2n}, {"x1n": 2, "x2n": 2}, weights, mask)
    p1, p2 = c.points
    w = c.weights
    tol = _default_rank_tol(x1n.dtype) if rank_tol is None else rank_tol
    lead, n = w.shape[:-1], w.shape[-1]
    if n >= MOMENTS_BF_MIN:  # many rows: the fundamental module's batch-first moments (same least squares)
        f, ok, norm = _least_squares_bf(p1.reshape(-1, n, 2), p2.reshape(-1, n, 2), w.reshape(-1, n),
                                        c.finite.reshape(-1), tol, 8, _f8_moments, _f8_residual_sq)
        En = f.t().reshape(*lead, 3, 3)
        ok = ok.reshape(lead)
        T1, T2 = (_similarity(*(x.reshape(lead) for x in norm[i:i + 3])) for i in (0, 3))
    else:
        n1 = normalize_points(p1, w)
        n2 = normalize_points(p2, w)
        A = epipolar_rows(n1.points, n2.points)
        V, evals = weighted_design_nullspace(A, w, 2)
        ok = c.finite & ((w > 0).sum(-1) >= 8) & torch.isfinite(evals).all(-1)
        r = ((A.detach() @ V[..., 1:2].detach())[..., 0] ** 2 * w.detach()).sum(-1)
        ok = ok & (r > tol * evals[..., -1].detach())
        En = V[..., 0].reshape(*V.shape[:-2], 3, 3)
        T1, T2 = n1.T, n2.T
    E = T2.transpose(-1, -2) @ En @ T1
    E = E / E.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(E.dtype).tiny)[..., None, None]
    ok = ok & torch.isfinite(E).flatten(-2).all(-1)
    stand_in = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=E.dtype, device=E.device)).expand_as(E)
    E = torch.where(ok[..., None, None], E, stand_in)
    E = _ProjectEssential.apply(E)
    ok = ok & torch.isfinite(E).flatten(-2).all(-1)
    E = torch.where(ok[..., None, None], E, torch.zeros_like(E))
    return EssentialResult(E, ok)


# ----------------------------------------------------------------------------------------------------------
# decomposition


def _cofactor(M: Tensor) -> Tensor:
    """Cofactor matrix (..., 3, 3): row i is the cross product of rows i+1 and i+2."""
    r0, r1, r2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    return torch.stack([torch.linalg.cross(r1, r2, dim=-1), torch.linalg.cross(r2, r0, dim=-1),
                        torch.linalg.cross(r0, r1, dim=-1)], -2)


def _polar_newton(R: Tensor, iters: int = 2) -> Tensor:
    """Newton iterations ``R <- (R + R^-T) / 2`` towards the orthogonal polar factor (R^-T = cof(R) / det R)."""
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    for _ in range(iters):
        C = _cofactor(R)
        det = (R * C).sum((-1, -2)) / 3.0
        good = det.abs() > 1e-6
        det = torch.where(good, det, torch.ones_like(det))
        R = torch.where(good[..., None, None], 0.5 * (R + C / det[..., None, None]), eye)
    return R


def decompose_essential(E: Tensor) -> tuple[Tensor, Tensor]:
    """The four ``cam2_from_cam1`` candidates (R, t) of an essential matrix.

    Args:
        E: (*B, 3, 3) essential matrices (any non-zero scale and sign).

    Returns:
        ``(R (*B, 4, 3, 3), t (*B, 4, 3))`` in the order ``(Ra, t), (Ra, -t), (Rb, t), (Rb, -t)`` with
        ``|t| = 1`` and ``det R = +1``; ``Rb`` is ``Ra`` turned by pi about ``t`` (the twisted pair). Exactly
        one candidate puts points in front of both cameras (see :func:`recover_pose`). A zero or non-finite
        ``E`` gives identities and zero translations. Differentiable, no SVD (module doc).
    """
    check_shape(E, "E", (3, 3), "(*B, 3, 3)")
    check_float(E, "E")
    nrm = E.flatten(-2).norm(dim=-1)
    ok = torch.isfinite(nrm) & (nrm > 0)
    eye = torch.eye(3, dtype=E.dtype, device=E.device)
    Es = torch.where(ok[..., None, None], E, eye)
    Es = Es * (math.sqrt(2.0) / torch.where(ok, nrm, torch.ones_like(nrm)))[..., None, None]
    C = _cofactor(Es)  # = t t^T R for an exact E = [t]x R with |t| = 1
    k = C.detach().norm(dim=-2).argmax(-1)  # column with the largest norm
    t = C.gather(-1, k[..., None, None].expand(*k.shape, 3, 1))[..., 0]
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(E.dtype).tiny)
    tx = skew(t)
    Ra = _polar_newton(C - tx @ Es)
    Rb = _polar_newton(C + tx @ Es)
    R = torch.stack([Ra, Ra, Rb, Rb], -3)
    T = torch.stack([t, -t, t, -t], -2)
    R = torch.where(ok[..., None, None, None], R, eye)
    T = torch.where(ok[..., None, None], T, torch.zeros_like(T))
    return R, T


# ----------------------------------------------------------------------------------------------------------
# pose recovery


def recover_pose(
    E: Tensor | EssentialSolutions,
    x1n: Tensor,
    x2n: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    valid: Tensor | None = None,
    max_depth: float = 100.0,
    min_parallax: float = math.radians(0.25),
    min_fraction: float = 0.5,
    threshold: float | None = None,
) -> RelativePose:
    """Relative pose from an essential matrix by cheirality (points in front of both cameras).

    Every correspondence is triangulated for each of the four candidates of :func:`decompose_essential`
    (closed-form two-ray least squares; only the signs of the depths are needed, so no division) and counted
    as in front when both depths are positive and below ``max_depth`` baselines (distant points have random
    depth signs under noise, as in OpenCV's ``recoverPose``). With ``threshold`` a correspondence must also have
    a Sampson error below it (normalised image units, e.g. 1 px / f) to count. The candidate with the largest
    weighted count wins.

    Several solutions: ``E`` may carry a solutions dimension, (*B, S, 3, 3) (e.g. the output of
    :func:`essential_5point`, which can also be passed directly), with ``valid`` (*B, S). Then all
    ``4 S`` (solution, decomposition) pairs compete and the one with the most points in front wins (ties go to
    the lower solution index); the ambiguity test below only compares the four decompositions of the winning
    solution, since different solutions can legitimately explain the same points. Cheirality alone does not
    check the epipolar constraint, so pass a ``threshold`` when the solutions come from a subset of the points
    (e.g. 5-point solutions scored on all correspondences).

    ``success`` is False when the inputs are unusable (non-finite used rows, no valid solution), when no
    candidate has a point in front, when the winning count is below ``min_fraction`` of the used rows, when the
    winner ties with another decomposition of the same matrix (ambiguous), or when the translation is
    unobservable: the median parallax angle (between the two viewing rays ``R f1`` and ``f2`` of the points in
    front; independent of t) below ``min_parallax`` (default 0.25 degrees, about 4x the ray noise of
    0.5 px at f = 500 px) - this is how a pure rotation is detected.

    Args:
        E: (*B, 3, 3) or (*B, S, 3, 3) essential matrices (any scale), or ``EssentialSolutions``.
        x1n: normalised image coordinates in camera 1, (*B, N, 2).
        x2n: normalised image coordinates in camera 2, (*B, N, 2).
        weights: optional non-negative weights (*B, N) for the count.
        mask: optional bool (*B, N); False rows are padding and are ignored.
        valid: optional (*B, S) bool for a solutions dimension.
        max_depth: largest accepted depth, in units of the baseline.
        min_parallax: smallest accepted median parallax, radians.
        min_fraction: smallest accepted fraction of used rows in front.
        threshold: optional Sampson-error threshold (normalised image units) a counted correspondence must meet.

    Returns:
        ``RelativePose``: R (*B, 3, 3), unit t (*B, 3), in_front (*B, N), num_in_front (*B,), success (*B,).
        Where success is False, R and t hold the best candidate if it is finite, else identity and zero.

    Raises:
        ValueError: on wrong shapes, dtypes or devices.
    """
    if isinstance(E, EssentialSolutions):
        E, valid = E.E, E.valid if valid is None else valid
    check_tensor(E, "E")
    check_float(E, "E")
    c = prepare_correspondences({"x1n": x1n, "x2n": x2n}, {"x1n": 2, "x2n": 2}, weights, mask)
    p1, p2 = c.points
    w = c.weights
    lead = x1n.shape[:-2]
    if E.device != x1n.device or E.dtype != x1n.dtype:
        raise ValueError(f"E ({E.dtype}, {E.device}) must match the points ({x1n.dtype}, {x1n.device})")
    if E.shape[-2:] == (3, 3) and E.shape[:-2] == lead:
        multi = False
        Es = E[..., None, :, :]
    elif E.ndim >= 3 and E.shape[-2:] == (3, 3) and E.shape[:-3] == lead:
        multi = True
        Es = E
    else:
        raise ValueError(f"E must have shape (*B, 3, 3) or (*B, S, 3, 3) with *B = {tuple(lead)}, got "
                         f"{tuple(E.shape)}")
    S = Es.shape[-3]
    if valid is None:
        valid = torch.ones(Es.shape[:-2], dtype=torch.bool, device=E.device)
    else:
        check_tensor(valid, "valid")
        if not multi:
            valid = valid[..., None] if valid.shape == lead else valid
        if valid.shape != Es.shape[:-2] or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor of shape {tuple(Es.shape[:-2])}, got "
                             f"{tuple(valid.shape)} {valid.dtype}")
    valid = valid & torch.isfinite(Es).flatten(-2).all(-1) & (Es.detach().abs().flatten(-2).amax(-1) > 0)
    Es = torch.where(valid[..., None, None], Es, torch.zeros_like(Es))
    R, t = decompose_essential(Es)  # (*B, S, 4, 3, 3), (*B, S, 4, 3)
    R = R.flatten(-4, -3)  # (*B, 4S, 3, 3)
    t = t.flatten(-3, -2)  # (*B, 4S, 3)
    cand_ok = valid.repeat_interleave(4, dim=-1)
    with torch.no_grad():
        f1 = torch.cat([p1, torch.ones_like(p1[..., :1])], -1).detach()  # (*B, N, 3)
        f2 = torch.cat([p2, torch.ones_like(p2[..., :1])], -1).detach()
        Rd, td = R.detach(), t.detach()
        a = f1[..., None, :, :] @ Rd.transpose(-1, -2)  # (*B, 4S, N, 3): R f1
        b = f2[..., None, :, :]
        ab = (a * b).sum(-1)
        aa = (a * a).sum(-1)
        bb = (b * b).sum(-1)
        at = (a * td[..., None, :]).sum(-1)
        bt = (b * td[..., None, :]).sum(-1)
        det = aa * bb - ab * ab  # |a x b|^2 >= 0
        num1 = ab * bt - bb * at  # depth in camera 1 times det
        num2 = aa * bt - ab * at  # depth in camera 2 times det
        used = (w > 0)[..., None, :]
        if threshold is not None:
            Ed = Es.detach()
            Ex1 = f1[..., None, :, :] @ Ed.transpose(-1, -2)  # (*B, S, N, 3)
            Etx2 = f2[..., None, :, :] @ Ed
            alg = (Ex1 * f2[..., None, :, :]).sum(-1)
            den = (Ex1[..., :2] ** 2).sum(-1) + (Etx2[..., :2] ** 2).sum(-1)
            samp = alg * alg / den.clamp_min(torch.finfo(den.dtype).tiny)
            used = used & (samp < threshold * threshold).repeat_interleave(4, dim=-2)
        front = used & (num1 > 0) & (num2 > 0) & (num1 < max_depth * det) & (num2 < max_depth * det)
        score = (front.to(w.dtype) * w.detach()[..., None, :]).sum(-1)  # (*B, 4S)
        score = torch.where(cand_ok, score, torch.full_like(score, -1.0))
        best = score.argmax(-1)  # first maximum
        best_score = score.gather(-1, best[..., None])[..., 0]
        sol = best // 4
        group = score.unflatten(-1, (S, 4)).gather(-2, sol[..., None, None].expand(*sol.shape, 1, 4))[..., 0, :]
        pos = best % 4
        others = group.masked_fill(torch.nn.functional.one_hot(pos, 4).bool(), -2.0)
        ambiguous = others.amax(-1) >= best_score
        in_front = front.gather(-2, best[..., None, None].expand(*best.shape, 1, front.shape[-1]))[..., 0, :]
        num_in_front = in_front.sum(-1)
        n_used = (w > 0).sum(-1)
        a_b = a.gather(-3, best[..., None, None, None].expand(*best.shape, 1, *a.shape[-2:]))[..., 0, :, :]
        par = torch.atan2(torch.linalg.cross(a_b, f2, dim=-1).norm(dim=-1), (a_b * f2).sum(-1))
        par = torch.where(in_front, par, torch.full_like(par, float("nan")))
        med_par = par.nanmedian(dim=-1).values if par.shape[-1] > 0 else par.sum(-1)
        success = (c.finite & valid.any(-1) & (best_score > 0) & (num_in_front >= min_fraction * n_used)
                   & ~ambiguous & (torch.nan_to_num(med_par, nan=0.0) >= min_parallax))
    Rb = R.gather(-3, best[..., None, None, None].expand(*best.shape, 1, 3, 3))[..., 0, :, :]
    tb = t.gather(-2, best[..., None, None].expand(*best.shape, 1, 3))[..., 0, :]
    fin = torch.isfinite(Rb).flatten(-2).all(-1) & torch.isfinite(tb).all(-1)
    success = success & fin
    Rb = torch.where(fin[..., None, None], Rb, torch.eye(3, dtype=Rb.dtype, device=Rb.device))
    tb = torch.where(fin[..., None], tb, torch.zeros_like(tb))
    return RelativePose(Rb, tb, in_front, num_in_front, success)


pose_from_essential = recover_pose
