"""Batched Levenberg-Marquardt for many small independent nonlinear least-squares problems.

Problem
-------
For each problem b of a batch with shape (*B,), minimise

    cost_b(x) = 0.5 * sum_i w_bi * rho(|r_bi(x)|^2)

over parameters ``x`` living on a manifold, where ``r_bi`` is the i-th residual *block* of ``block_size``
consecutive residuals (1 by default; 2 for pixel reprojection errors), ``w_bi >= 0`` are user weights (zero =
padding) and ``rho`` a robust loss (:mod:`torch3dv.optim.losses`, handled by IRLS weights ``rho'``).

The caller supplies
    * ``residual_fn(params) -> (r, J)`` with residuals ``r`` (*B, M) and Jacobian ``J`` (*B, M, P) of ``r``
      with respect to the P-dimensional *local* step (the tangent space of the retraction);
    * ``params0``: a tensor or a tuple of tensors, each with leading batch dims *B;
    * ``retract_fn(params, delta) -> params`` applying a step ``delta`` (*B, P) (default: ``params + delta``
      for a single tensor). :func:`torch3dv.optim.manifolds.retract_pose_left` retracts ``(R, t)`` poses.

Algorithm (per problem, all problems advance together as batched tensor ops; there is no Python loop over
problems, only over iterations):
    1. IRLS weights ``W = w * rho'(|r|^2)``; normal equations ``H = J^T W J``, ``g = J^T W r``.
    2. Damped system ``(H + lambda * D) delta = -g`` with Marquardt scaling ``D = diag(H)`` (clamped away
       from zero), solved by a batched Cholesky (``torch.linalg.cholesky_ex``). A problem whose damped
       matrix is not positive definite (or not finite) takes no step, counts as a rejected step, and its
       damping grows; nothing raises.
    3. The candidate ``retract(x, delta)`` is accepted per problem if its cost is finite and not higher; the
       damping of that problem shrinks by ``damping_decrease`` on acceptance and grows by
       ``damping_increase`` on rejection.
    4. A problem is *converged* once ``max|g| <= gradient_tol``, or an accepted step has
       ``|delta| <= step_tol * (|x| + step_tol)``, or an accepted step lowers the cost by less than
       ``cost_tol * cost``, or the decrease predicted by the Gauss-Newton model for the step is below
       ``cost_tol * cost`` (nothing measurable left to gain), or the cost is (numerically) zero. Converged problems and problems whose damping
       exceeded ``max_damping`` are frozen (masked out) while the rest of the batch continues; the loop
       ends when every problem is frozen or after ``max_iterations``.
Problems with non-finite residuals at the start are frozen immediately (``converged = False``, ``cost = inf``
where non-finite). Residual rows with zero weight are zeroed before use, so NaN padding never propagates.

Differentiability (``LMOptions.grad_mode``)
-------------------------------------------
``"implicit"`` (default): the iterations run under ``torch.no_grad()``. At the returned optimum ``x*`` one
Gauss-Newton step is evaluated *with* autograd, ``delta = -(J^T W J)^{-1} J^T W r`` from the detached ``x*``,
and the output is ``retract(x*, delta - delta.detach())``: its value is exactly ``x*`` while its derivative is
``d x* / d theta = -(J^T W J)^{-1} d(J^T W r) / d theta`` (since ``J^T W r = 0`` at the optimum). This is the
implicit-function-theorem gradient with the Gauss-Newton Hessian; it is exact for problems whose residuals
vanish at the optimum and for residuals that are linear in ``x`` (then ``J^T W J`` is the true Hessian), and a
first-order approximation otherwise (the neglected term is ``sum_i W_i r_i d^2 r_i / dx^2``). Gradients reach
everything the residual function closes over (data, weights) but not ``params0`` (the optimum does not
depend on the start). For this to work ``residual_fn`` must be differentiable in the data and ``J`` must
depend on them through autograd as well (analytic Jacobians written in torch ops are).

``"unrolled"``: every iteration is recorded by autograd (memory grows with the iteration count); gradients
are those of the actual computation, also with respect to ``params0``.

``"none"``: everything under ``torch.no_grad()``; the outputs are detached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.optim.losses import get_loss

Params = Tensor | Sequence[Tensor]


@dataclass(frozen=True)
class LMOptions:
    """Options of :func:`levenberg_marquardt`.

    Attributes:
        max_iterations: maximum number of LM iterations (each evaluates ``residual_fn`` once).
        initial_damping: starting ``lambda`` (relative to ``diag(H)``).
        damping_increase: factor applied to ``lambda`` after a rejected step.
        damping_decrease: factor applied to ``lambda`` after an accepted step.
        min_damping: lower bound of ``lambda``.
        max_damping: a problem whose ``lambda`` exceeds this stops (not converged).
        gradient_tol: convergence when ``max|J^T W r| <= gradient_tol`` (absolute, in cost units per
            parameter unit). ``None``: ``eps ** 0.75`` of the dtype times the initial gradient scale.
        step_tol: convergence when an accepted step has ``|delta| <= step_tol * (|x| + step_tol)``.
            ``None``: ``sqrt(eps)`` of the dtype (1.5e-8 in float64, 3.5e-4 in float32).
        cost_tol: convergence when an accepted step lowers the cost by less than ``cost_tol * cost``.
            ``None``: ``eps ** 0.75`` (2e-12 in float64, 6e-6 in float32).
        loss: robust loss name (``"trivial"``, ``"huber"``, ``"soft_l1"``, ``"cauchy"``) or callable
            ``f(s) -> (rho, rho')`` on squared block norms (see :mod:`torch3dv.optim.losses`).
        loss_scale: the loss threshold, in residual units (e.g. pixels).
        block_size: number of consecutive residuals forming one block (one weight, one robust loss value).
        grad_mode: ``"implicit"``, ``"unrolled"`` or ``"none"`` (module docstring).
    """

    max_iterations: int = 20
    initial_damping: float = 1e-4
    damping_increase: float = 10.0
    damping_decrease: float = 0.1
    min_damping: float = 1e-12
    max_damping: float = 1e10
    gradient_tol: float | None = None
    step_tol: float | None = None
    cost_tol: float | None = None
    loss: str | Callable | None = "trivial"
    loss_scale: float = 1.0
    block_size: int = 1
    grad_mode: str = "implicit"


class LMResult(NamedTuple):
    """Result of :func:`levenberg_marquardt`.

    Attributes:
        params: optimised parameters, same structure and shapes as ``params0``.
        cost: (*B,) final cost ``0.5 * sum w rho(|r|^2)`` (inf where residuals were not finite).
        iterations: (*B,) int64, iterations during which the problem was active.
        converged: (*B,) bool, a convergence criterion was met (False for problems stopped by
            ``max_iterations``, by ``max_damping``, or for non-finite problems).
    """

    params: Params
    cost: Tensor
    iterations: Tensor
    converged: Tensor


def _as_tuple(p: Params) -> tuple[tuple[Tensor, ...], bool]:
    if isinstance(p, Tensor):
        return (p,), True
    return tuple(p), False


def _from_tuple(p: tuple[Tensor, ...], single: bool) -> Params:
    return p[0] if single else p


def _bwhere(cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.where`` with a (*B,) condition broadcast over the trailing dims of a and b."""
    c = cond.reshape(cond.shape + (1,) * (a.ndim - cond.ndim))
    return torch.where(c, a, b)


def _default_retract(params: Params, delta: Tensor) -> Params:
    if not isinstance(params, Tensor):
        raise ValueError("retract_fn is required when params0 is not a single (*B, P) tensor")  # noqa: TRY004
    return params + delta


class _Evaluation(NamedTuple):
    r: Tensor  # (*B, M)
    J: Tensor  # (*B, M, P)
    w: Tensor  # (*B, M) IRLS weight per residual
    cost: Tensor  # (*B,)
    finite: Tensor  # (*B,)


def _evaluate(residual_fn, params, weights, block, loss_fn) -> _Evaluation:
    r, J = residual_fn(params)
    if not isinstance(r, Tensor) or not isinstance(J, Tensor):
        raise ValueError("residual_fn must return a tuple (residuals (*B, M), jacobian (*B, M, P))")  # noqa: TRY004
    if J.ndim != r.ndim + 1 or J.shape[:-1] != r.shape:
        raise ValueError(f"jacobian must have shape (*B, M, P) matching residuals (*B, M); got {tuple(J.shape)} "
                         f"and {tuple(r.shape)}")
    M = r.shape[-1]
    if M % block != 0:
        raise ValueError(f"the number of residuals M={M} is not a multiple of block_size={block}")
    batch = r.shape[:-1]
    rb = r.reshape(*batch, M // block, block)
    if weights is None:
        wb = torch.ones(rb.shape[:-1], dtype=r.dtype, device=r.device)
    else:
        if weights.shape[-1] != M // block:
            raise ValueError(f"weights must have shape (*B, M / block_size) = (*B, {M // block}), "
                             f"got {tuple(weights.shape)}")
        wb = weights.expand(rb.shape[:-1])
    used = wb != 0
    row_ok = torch.isfinite(rb).all(-1) & torch.isfinite(J.reshape(*batch, M // block, -1)).all(-1)
    finite = (row_ok | ~used).all(-1)
    keep = used & row_ok
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    rb = torch.where(keep[..., None], rb, zero)
    wb = torch.where(keep, wb, zero)
    s = (rb * rb).sum(-1)
    rho, drho = loss_fn(s)
    cost = 0.5 * (wb * rho).sum(-1)
    cost = torch.where(finite, cost, torch.full_like(cost, math.inf))
    keep_r = keep[..., None].expand(rb.shape).reshape(*batch, M)
    J = torch.where(keep_r[..., None], J, zero)
    w = (wb * drho)[..., None].expand(rb.shape).reshape(*batch, M)
    return _Evaluation(rb.reshape(*batch, M), J, w, cost, finite)


def _normal_equations(ev: _Evaluation) -> tuple[Tensor, Tensor]:
    Jw = ev.J * ev.w[..., None]
    H = Jw.transpose(-1, -2) @ ev.J
    g = (Jw.transpose(-1, -2) @ ev.r[..., None])[..., 0]
    return 0.5 * (H + H.transpose(-1, -2)), g


def _solve_damped(H: Tensor, g: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Solves (H + lam * D) delta = -g; returns (delta, ok) with delta = 0 where the solve failed."""
    dtype = H.dtype
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    floor = diag.abs().amax(-1, keepdim=True) * 1e-9 + torch.finfo(dtype).tiny ** 0.5
    D = torch.maximum(diag, floor)
    A = H + torch.diag_embed(lam[..., None] * D)
    finite = torch.isfinite(A).flatten(-2).all(-1) & torch.isfinite(g).all(-1)
    eye = torch.eye(H.shape[-1], dtype=dtype, device=H.device)
    A = _bwhere(finite, A, eye.expand_as(A))
    L, info = torch.linalg.cholesky_ex(A)
    ok = finite & (info == 0)
    L = _bwhere(ok, L, eye.expand_as(L))
    gs = torch.where(ok[..., None], g, torch.zeros_like(g))
    delta = -torch.cholesky_solve(gs[..., None], L)[..., 0]
    ok = ok & torch.isfinite(delta).all(-1)
    return torch.where(ok[..., None], delta, torch.zeros_like(delta)), ok


def _param_norm(p: tuple[Tensor, ...], batch_ndim: int) -> Tensor:
    sq = sum((t.reshape(*t.shape[:batch_ndim], -1) ** 2).sum(-1) for t in p)
    return torch.sqrt(sq)


def levenberg_marquardt(
    residual_fn: Callable[[Params], tuple[Tensor, Tensor]],
    params0: Params,
    retract_fn: Callable[[Params, Tensor], Params] | None = None,
    options: LMOptions | None = None,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> LMResult:
    """Minimises a batch of robust nonlinear least-squares problems (module docstring for the details).

    Args:
        residual_fn: ``params -> (r (*B, M), J (*B, M, P))``; ``J`` is the derivative of ``r`` with respect to
            the local step used by ``retract_fn``.
        params0: initial parameters: a (*B, P) tensor, or a tuple of tensors with leading dims *B.
        retract_fn: ``(params, delta (*B, P)) -> params``; default ``params + delta`` (single tensor only).
        options: :class:`LMOptions` (defaults if None).
        weights: optional per-block weights (*B, M / block_size), non-negative; weight acts like a
            multiplicity of the block in the cost.
        mask: optional bool (*B, M / block_size); False blocks are ignored (their residuals may be NaN).

    Returns:
        :class:`LMResult` (params, cost (*B,), iterations (*B,), converged (*B,)).

    Raises:
        ValueError: malformed shapes or options.
    """
    opt = options or LMOptions()
    if opt.grad_mode not in ("implicit", "unrolled", "none"):
        raise ValueError(f"grad_mode must be 'implicit', 'unrolled' or 'none', got {opt.grad_mode!r}")
    if opt.block_size < 1:
        raise ValueError("block_size must be >= 1")
    if opt.max_iterations < 0:
        raise ValueError("max_iterations must be >= 0")
    loss_fn = get_loss(opt.loss, opt.loss_scale)
    retract = retract_fn or _default_retract
    p0, single = _as_tuple(params0)
    if not p0 or not all(isinstance(t, Tensor) for t in p0):
        raise ValueError("params0 must be a tensor or a non-empty tuple of tensors")
    w_all = weights
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError("mask must be a bool tensor (*B, M / block_size)")
        if w_all is None:
            w_all = mask.to(p0[0].dtype)
        else:
            if w_all.shape != mask.shape:
                raise ValueError(f"weights {tuple(w_all.shape)} and mask {tuple(mask.shape)} must have the same shape")
            w_all = torch.where(mask, w_all, torch.zeros_like(w_all))
    if w_all is not None and not w_all.is_floating_point():
        raise ValueError(f"weights must be a floating point tensor, got {w_all.dtype}")

    def wrapped(p: tuple[Tensor, ...]):
        return residual_fn(_from_tuple(p, single))

    def do_retract(p: tuple[Tensor, ...], d: Tensor) -> tuple[Tensor, ...]:
        out, _ = _as_tuple(retract(_from_tuple(p, single), d))
        return out

    track = opt.grad_mode == "unrolled" and torch.is_grad_enabled()
    w_loop = w_all if (track or w_all is None) else w_all.detach()
    params = p0 if track else tuple(t.detach() for t in p0)
    with torch.set_grad_enabled(track):
        ev = _evaluate(wrapped, params, w_loop, opt.block_size, loss_fn)
        dtype = ev.r.dtype
        eps = torch.finfo(dtype).eps
        batch = ev.cost.shape
        nb = len(batch)
        for t in params:
            if t.shape[:nb] != batch:
                raise ValueError(f"every parameter tensor must start with the batch shape {tuple(batch)}, got "
                                 f"{tuple(t.shape)}")
        step_tol = opt.step_tol if opt.step_tol is not None else math.sqrt(eps)
        cost_tol = opt.cost_tol if opt.cost_tol is not None else eps ** 0.75
        lam = torch.full(batch, opt.initial_damping, dtype=dtype, device=ev.r.device)
        converged = torch.zeros(batch, dtype=torch.bool, device=ev.r.device)
        iterations = torch.zeros(batch, dtype=torch.int64, device=ev.r.device)
        active = ev.finite.clone()
        H, g = _normal_equations(ev)
        if opt.gradient_tol is not None:
            gtol = torch.full(batch, opt.gradient_tol, dtype=dtype, device=ev.r.device)
        else:
            gtol = eps ** 0.75 * (1.0 + g.abs().amax(-1).nan_to_num(0.0, 0.0, 0.0))
        tiny_cost = torch.finfo(dtype).tiny ** 0.5
        for _ in range(opt.max_iterations):
            # gradient / zero-cost convergence at the current point
            small = (g.abs().amax(-1) <= gtol) | (ev.cost <= tiny_cost)
            converged = converged | (active & small)
            active = active & ~small
            if not bool(active.any()):
                break
            delta, ok = _solve_damped(H, g, lam)
            cand = do_retract(params, delta)
            ev_new = _evaluate(wrapped, cand, w_loop, opt.block_size, loss_fn)
            # decrease predicted by the Gauss-Newton model; below the cost's resolution the cost cannot judge
            # the step any more, so it is taken if the cost did not rise beyond rounding, and the problem stops
            predicted = -((delta * g).sum(-1) + 0.5 * (delta[..., None, :] @ H @ delta[..., :, None])[..., 0, 0])
            flat = active & ok & (predicted <= cost_tol * ev.cost)
            within = ev_new.cost <= ev.cost + 16 * eps * ev.cost
            accept = active & ok & ev_new.finite & ((ev_new.cost <= ev.cost) | (flat & within))
            iterations = iterations + active.to(iterations.dtype)
            dnorm = delta.norm(dim=-1)
            xnorm = _param_norm(params, nb)
            rel_drop = (ev.cost - ev_new.cost) <= cost_tol * ev.cost
            stop = (accept & ((dnorm <= step_tol * (xnorm + step_tol)) | rel_drop)) | flat
            params = tuple(_bwhere(accept, c, p) for c, p in zip(cand, params))
            ev = _Evaluation(*(_bwhere(accept, a, b) for a, b in zip(ev_new, ev)))
            H_new, g_new = _normal_equations(ev_new)
            H = _bwhere(accept, H_new, H)
            g = _bwhere(accept, g_new, g)
            lam = torch.where(accept, (lam * opt.damping_decrease).clamp_min(opt.min_damping),
                              torch.where(active, lam * opt.damping_increase, lam))
            converged = converged | stop
            active = active & ~stop & (lam <= opt.max_damping)
        else:
            small = (g.abs().amax(-1) <= gtol) | (ev.cost <= tiny_cost)
            converged = converged | (active & small)

    if opt.grad_mode == "implicit" and torch.is_grad_enabled():
        params = _implicit_step(wrapped, do_retract, params, w_all, opt.block_size, loss_fn)
    cost = ev.cost
    return LMResult(_from_tuple(params, single), cost, iterations, converged)


def _implicit_step(wrapped, do_retract, params, weights, block, loss_fn):
    """One Gauss-Newton step with autograd from the detached optimum, applied as ``delta - delta.detach()``."""
    params = tuple(t.detach() for t in params)
    ev = _evaluate(wrapped, params, weights, block, loss_fn)
    H, g = _normal_equations(ev)
    P = H.shape[-1]
    eye = torch.eye(P, dtype=H.dtype, device=H.device)
    # a tiny relative ridge keeps rank-deficient problems finite (their gradient is then the min-norm one)
    ridge = 1e3 * torch.finfo(H.dtype).eps * torch.diagonal(H, dim1=-2, dim2=-1).abs().amax(-1)
    ridge = ridge + torch.finfo(H.dtype).tiny ** 0.5
    A = H + ridge[..., None, None] * eye
    ok = torch.isfinite(A.detach()).flatten(-2).all(-1) & ev.finite
    A = _bwhere(ok, A, eye.expand_as(A))
    L, info = torch.linalg.cholesky_ex(A)
    ok = ok & (info == 0)
    L = _bwhere(ok, L, eye.expand_as(L))
    gs = torch.where(ok[..., None], g, torch.zeros_like(g))
    delta = -torch.cholesky_solve(gs[..., None], L)[..., 0]
    delta = torch.where(ok[..., None], delta, torch.zeros_like(delta))
    return do_retract(params, delta - delta.detach())
