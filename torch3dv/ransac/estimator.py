"""The batched robust estimator: M problems x H hypotheses per round as tensor ops.

A round draws H minimal samples for every still-running problem, solves them all in one batched call of the
model's minimal solver, scores every solution against every point of its problem, and keeps the best model per
problem. Each problem stops on its own (adaptive termination from its best inlier ratio and the requested
confidence) while the others continue; only unfinished problems are computed in later rounds. Problems are
processed in chunks so that a round's residual work (problems x hypotheses x solutions x points scored) stays
below ``max_elements``; residuals are turned into scores block by block, so that tensor is never stored whole.

Local optimisation (LO-RANSAC) runs inside the loop on every new best *minimal* model of a problem (a
hypothesis that beats the earlier minimal models, as in PoseLib / RansacLib): optionally an inner RANSAC of
non-minimal samples drawn from its inliers (``lo_inner_samples``), a weighted non-minimal refit on its inliers,
then, for models with a ``local_refine`` step (the essential-matrix model: Levenberg-Marquardt on
the pose with the truncated Sampson loss over the points within a few thresholds), a nonlinear refinement; the
refined model replaces the best model when it scores higher, and the termination bound follows the best
model's inlier ratio (times ``trials_multiplier``). Tracking the minimal models separately matters: comparing
raw hypotheses with already refined scores would almost never trigger LO again after the first one. After the
loop, iterated weighted refits and an optional final polish (via the model) run batched over all problems.

Models implement :class:`RobustModel`; see ``torch3dv.ransac.models`` for the built-in ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from torch3dv.ransac.sampling import progressive_pool, sample_subsets, valid_first_order
from torch3dv.ransac.scoring import SCORES, inlier_mask, inlier_weights, score_residuals


@dataclass(frozen=True)
class RansacOptions:
    """Options of :func:`ransac`.

    Attributes:
        threshold: inlier threshold in residual units (pixels for image residuals, metres for 3D).
        confidence: probability of having drawn at least one all-inlier sample, for adaptive termination.
        min_iterations: hypotheses drawn per problem at least.
        max_iterations: hypotheses drawn per problem at most.
        hypotheses_per_round: H, minimal samples per problem in the first round. Later rounds draw what the
            problem's termination bound still asks for (rounded up to a multiple of 8), at most H * 2^r in its
            round r and at most 16 H: problems that need many hypotheses get few, large solver calls.
        score: "inliers", "msac" or "magsac" (MAGSAC++).
        local_optimization: LO iterations after the loop (weighted refits on the inliers of the best model);
            0 disables LO altogether, also the LO on each new best minimal model inside the loop.
        final_refine: run the model's nonlinear polish (e.g. LM on Sampson error) on the final inliers.
        prosac_growth: when match scores are given, hypotheses over which the sampling pool grows from the best
            matches to all of them (PROSAC-style); 0 disables.
        preemptive_points: hypotheses are first scored on a random subset of at most this many valid points
            (drawn anew each round; once a problem has a model, only as many as give a good hypothesis about 8
            expected inliers at its inlier ratio, but at least half of this); only the ``preemptive_keep`` best
            per problem and round are scored on all points (preemptive verification in the spirit of Nister
            2003). 0 scores every hypothesis on all points.
        preemptive_keep: hypotheses per problem and round that reach full scoring.
        max_elements: work bound per chunk of problems: residual entries of one round (problems x hypotheses x
            solutions x points scored). Scores are computed in cache-sized blocks, so memory stays far below
            8 bytes times this (peak ~100-300 MB for 1,000 problems of 512 points); larger chunks amortise the
            per-call overheads (2^24: 25-35% faster than 2^22 at 60% outliers for E and F).
        seed: base seed; problem i uses seed + i unless per-problem seeds are passed.
        lo_inner_samples: non-minimal samples of the inner RANSAC in the local optimisation of each new best
            minimal model (LO-RANSAC, Chum et al. 2003): subsets of 3 k inliers (k: minimal sample size) fitted
            with the non-minimal refit, the best by score continues; 0 disables. None takes the model's
            ``lo_inner_samples``: 16 for the essential and fundamental matrices (at 60% outliers it lifts the
            relative-pose AUC@5 by about one point and cuts F's held-out Sampson error by 14%, for 10-20% more
            time), 0 for the homography, PnP and rigid models, where it measured no accuracy gain.
        trials_multiplier: factor on the adaptive termination bound (PoseLib uses 3); more hypotheses, a
            slightly better chance of finding the best basin at high outlier ratios, proportionally more time.
    """

    threshold: float = 1.0
    confidence: float = 0.9999
    min_iterations: int = 64
    max_iterations: int = 10000
    hypotheses_per_round: int = 64
    score: str = "msac"
    local_optimization: int = 3
    final_refine: bool = True
    prosac_growth: int = 0
    preemptive_points: int = 48
    preemptive_keep: int = 4
    max_elements: int = 1 << 24
    seed: int = 0
    trials_multiplier: float = 1.0
    lo_inner_samples: int | None = None

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if not (0.0 < self.confidence < 1.0):
            raise ValueError("confidence must be in (0, 1)")
        if self.threshold <= 0 or not math.isfinite(self.threshold):
            raise ValueError("threshold must be positive and finite")
        if not (self.trials_multiplier > 0 and math.isfinite(self.trials_multiplier)):
            raise ValueError("trials_multiplier must be positive and finite")
        if self.lo_inner_samples is not None and self.lo_inner_samples < 0:
            raise ValueError("lo_inner_samples must be >= 0")
        if self.hypotheses_per_round < 1 or self.max_iterations < 1:
            raise ValueError("hypotheses_per_round and max_iterations must be >= 1")


class RobustModel(Protocol):
    """What :func:`ransac` needs from a model.

    Data tensors are (M, N, d_i) (or (M, k, d_i) for samples); context tensors are per-problem (M, ...).
    Parameters of one model are a tensor of shape (*param_shape).
    """

    sample_size: int
    max_solutions: int
    param_shape: tuple[int, ...]
    dof: int

    def minimal(self, sample: tuple[Tensor, ...], ctx: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """(M, k, d_i) samples -> params (M, S, *param_shape), valid (M, S)."""

    def residuals(self, params: Tensor, data: tuple[Tensor, ...], ctx: tuple[Tensor, ...]) -> Tensor:
        """params (M, H, *param_shape), data (M, N, d_i) -> squared residuals (M, H, N)."""

    def refit(self, data: tuple[Tensor, ...], weights: Tensor, ctx: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Weighted non-minimal fit: weights (M, N) -> params (M, *param_shape), success (M,)."""

    def polish(self, params: Tensor, data: tuple[Tensor, ...], weights: Tensor,
               ctx: tuple[Tensor, ...]) -> Tensor:
        """Nonlinear refinement of params (M, *param_shape) on weighted data; returns refined params."""

    # Optional: models with ``lo_iterations > 0`` also provide
    # ``local_refine(params (M, *param_shape), data, near (M, N) bool, ctx, threshold (M,)) -> (params, ok (M,))``,
    # the nonlinear step of the LO on each new best minimal model (robust loss at ``threshold`` over ``near``).


class RansacOutput(NamedTuple):
    """Result of :func:`ransac` for M problems.

    Attributes:
        params: best model per problem (M, *param_shape); zeros where no model was found.
        inliers: (M, N) bool inliers of the returned model.
        score: (M,) score of the returned model (higher is better; -inf where none).
        num_hypotheses: (M,) minimal samples drawn.
        success: (M,) bool: a model with more inliers than the minimal sample was found.
    """

    params: Tensor
    inliers: Tensor
    score: Tensor
    num_hypotheses: Tensor
    success: Tensor


_SUBSET_STREAM = 1 << 20  # round offset that separates the preemptive-subset draws from the sample draws
_PREEMPTIVE_INLIERS = 8.0  # expected inliers of a good hypothesis in the preemptive subset (see _preemptive_subset)
_QUANTUM = 8  # round sizes after the first are multiples of this
_GROWTH_LOG2 = 4  # round sizes grow up to H * 2^4 for problems that need many hypotheses
_LO_RADIUS = 3.0  # the nonlinear LO step sees the points within this many thresholds of the model it starts from
_INNER_STREAM = 1 << 21  # round offset of the inner-RANSAC draws of the local optimisation
_INNER_FACTOR = 3  # inner RANSAC samples have this many times the minimal sample size


def required_iterations(inlier_ratio: Tensor, k: int, confidence: float) -> Tensor:
    """Samples needed to draw one all-inlier k-sample with the given confidence: log(1-p) / log(1-w^k)."""
    wk = inlier_ratio.double().clamp(0.0, 1.0) ** k
    denom = torch.log1p(-wk.clamp(max=1 - 1e-12))
    n = math.log(1.0 - confidence) / denom.clamp(max=-1e-300)
    return torch.where(wk > 0, n, torch.full_like(n, float("inf")))


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (C, N, d), idx (C, H, k) -> (C, H, k, d)."""
    C, H, k = idx.shape
    g = torch.gather(x, 1, idx.reshape(C, H * k, 1).expand(C, H * k, x.shape[-1]))
    return g.reshape(C, H, k, x.shape[-1])


_SCORE_BLOCK = 1 << 17  # residual entries per block of hypothesis scoring (cache-sized temporaries)


def _hypothesis_scores(model: RobustModel, params: Tensor, data, ctx, valid: Tensor, th: Tensor,
                       opts: RansacOptions) -> Tensor:
    """Scores (C, H) of hypotheses params (C, H, *P) on data (C, N, d_i) with valid (C, N) and thresholds (C,).

    Residuals and scores are computed together in blocks of problems whose (block, H, N) residual tensor stays
    cache sized, so the full (C, H, N) tensor is never written to memory (it is by far the largest tensor of a
    round, and on a CPU writing and re-reading it cost about as much as computing it).
    """
    C, nh = params.shape[:2]
    N = data[0].shape[1]
    step = max(1, _SCORE_BLOCK // max(1, nh * N))
    parts = []
    for s in range(0, C, step):
        e = min(C, s + step)
        r2 = model.residuals(params[s:e], tuple(x[s:e] for x in data), tuple(c[s:e] for c in ctx))
        parts.append(score_residuals(r2, valid[s:e, None, :], th[s:e, None], opts.score, model.dof))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _preemptive_subset(n_valid: Tensor, best_count: Tensor, n_max: int, seeds: Tensor,
                       rounds: Tensor) -> tuple[Tensor, Tensor]:
    """Ranks (C, n) of the points of each problem's preemptive test and their mask (C, n), n <= n_max.

    A problem's subset holds enough points for a good hypothesis to show about ``_PREEMPTIVE_INLIERS`` inliers
    at its best inlier ratio so far (``n_max`` before it has a model, at least ``n_max / 2``, in steps of 4):
    the test's signal stays the same while problems with many inliers score fewer points. Sizes follow each
    problem's own history and the draws its own seed and round, so the batch around it changes nothing.
    """
    C = n_valid.shape[0]
    ratio = best_count.double() / n_valid.clamp_min(1).double()
    want = torch.ceil(_PREEMPTIVE_INLIERS / ratio.clamp_min(1e-12) / 4) * 4
    size = torch.where(best_count > 0, want, torch.full_like(want, float(n_max)))
    size = size.clamp(min=max(1, n_max // 2), max=n_max).long()
    n = int(size.max())
    sub = torch.zeros(C, n, dtype=torch.int64, device=n_valid.device)
    for m in size.unique().tolist():
        rows = (size == m).nonzero()[:, 0]
        sub[rows, :m] = sample_subsets(n_valid[rows], m, 1, seeds[rows], _SUBSET_STREAM, first=rounds[rows])[:, 0]
    return sub, torch.arange(n, device=sub.device)[None, :] < size[:, None]


def _inner_ransac(model: RobustModel, data, ctx, valid: Tensor, th: Tensor, r2: Tensor, seeds: Tensor,
                  counter: Tensor, L: int, opts: RansacOptions) -> tuple[Tensor, Tensor]:
    """The inner RANSAC of LO-RANSAC (Chum, Matas and Kittler 2003) for nb problems at once.

    Draws L subsets of ``_INNER_FACTOR * k`` points (k: minimal sample size) from the
    inliers of the current models (squared residuals r2 (nb, N)), fits each with the model's non-minimal
    ``refit`` and returns the best by score, params (nb, *P), with ok (nb,) (False where a problem has too few
    inliers). Non-minimal samples average out the noise of a minimal sample while still exploring: they can leave
    a basin that a refit on all inliers stays in. Draws are counter-based on (seed, ``counter``) like the main
    samples, so they do not depend on the rest of the batch.
    """
    nb, N = valid.shape
    m = _INNER_FACTOR * model.sample_size
    inl = inlier_mask(r2, valid, th)
    n_in = inl.sum(-1)
    can = n_in > m
    order = torch.argsort((~inl).to(torch.uint8), dim=-1, stable=True)  # inliers first
    ranks = sample_subsets(n_in, m, L, seeds, _INNER_STREAM, first=counter * L)  # (nb, L, m)
    idx = torch.gather(order, 1, ranks.reshape(nb, L * m)).reshape(nb, L, m)
    sample = tuple(_gather_rows(x, idx).reshape(nb * L, m, x.shape[-1]) for x in data)
    c_rep = tuple(c.repeat_interleave(L, dim=0) for c in ctx)
    params, ok = model.refit(sample, torch.ones(nb * L, m, dtype=r2.dtype, device=r2.device), c_rep)
    params = params.reshape(nb, L, *model.param_shape)
    ok = ok.reshape(nb, L) & torch.isfinite(params.flatten(2)).all(-1) & can[:, None]
    params = torch.where(ok.reshape(nb, L, *([1] * len(model.param_shape))), params, torch.zeros((), dtype=params.dtype,
                                                                                              device=params.device))
    sc = _hypothesis_scores(model, params, data, ctx, valid, th, opts)
    sc = torch.where(ok, sc, torch.full_like(sc, -math.inf))
    top, arg = sc.max(dim=-1)
    return params[torch.arange(nb, device=params.device), arg], top > -math.inf


def _score_params(model: RobustModel, params: Tensor, data, ctx, valid: Tensor, opts: RansacOptions,
                  threshold: Tensor) -> tuple[Tensor, Tensor]:
    """params (M, *P) -> (score (M,), r2 (M, N))."""
    r2 = model.residuals(params[:, None], data, ctx)[:, 0]
    return score_residuals(r2, valid, threshold, opts.score, model.dof), r2


def ransac(
    model: RobustModel,
    data: tuple[Tensor, ...],
    ctx: tuple[Tensor, ...],
    valid: Tensor,
    options: RansacOptions,
    threshold: Tensor | None = None,
    priority: Tensor | None = None,
    seeds: Tensor | None = None,
    refit_weights: Tensor | None = None,
) -> RansacOutput:
    """Runs the robust estimator on M problems with N (padded) data points each.

    Args:
        model: the model (minimal solver, residuals, refit, polish).
        data: per-point tensors (M, N, d_i), already cleaned (finite in valid rows).
        ctx: per-problem tensors (M, ...).
        valid: (M, N) bool, real points.
        options: :class:`RansacOptions`.
        threshold: optional per-problem thresholds (M,) overriding ``options.threshold``.
        priority: optional (M, N) match scores (higher first) for PROSAC-style sampling.
        seeds: optional (M,) int64 per-problem seeds (default ``options.seed + arange(M)``).
        refit_weights: optional (M, N) confidences multiplying the inlier weights of the local optimisation and
            the final polish (not the hypothesis scores); gradients flow to them through the polish.

    Returns:
        :class:`RansacOutput`.
    """
    M, N = valid.shape
    device = valid.device
    ref = data[0]
    k, S, H = model.sample_size, model.max_solutions, options.hypotheses_per_round
    th = torch.full((M,), options.threshold, dtype=ref.dtype, device=device) if threshold is None else threshold
    if seeds is None:
        seeds = options.seed + torch.arange(M, dtype=torch.int64, device=device)
    n_valid = valid.sum(-1)
    order = valid_first_order(valid, priority)
    growth = options.prosac_growth if priority is not None else 0
    inner = getattr(model, "lo_inner_samples", 0) if options.lo_inner_samples is None else options.lo_inner_samples

    best = torch.zeros(M, *model.param_shape, dtype=ref.dtype, device=device)
    best_score = torch.full((M,), -math.inf, dtype=ref.dtype, device=device)
    best_minimal = torch.full((M,), -math.inf, dtype=ref.dtype, device=device)  # best unrefined score
    best_count = torch.zeros(M, dtype=torch.int64, device=device)
    done = torch.zeros(M, dtype=torch.int64, device=device)
    needed = torch.full((M,), float(options.max_iterations), dtype=torch.float64, device=device)
    feasible = n_valid >= k
    n_sub = options.preemptive_points if 0 < options.preemptive_points < N else 0
    rounds = torch.zeros(M, dtype=torch.int64, device=device)
    ones_p = torch.ones(math.prod(model.param_shape), dtype=ref.dtype, device=device)

    with torch.no_grad():
        while True:
            limit = torch.maximum(needed, torch.full_like(needed, float(options.min_iterations)))
            limit = limit.clamp(max=float(options.max_iterations))
            # a problem whose samples gave no valid model at all in min_iterations draws is degenerate (e.g. all
            # points identical): stop it instead of burning max_iterations
            hopeless = (best_score == -math.inf) & (done >= options.min_iterations)
            running = feasible & ~hopeless & (done.double() < limit)
            act = running.nonzero().squeeze(-1)
            if act.numel() == 0:
                break
            # round size per problem: what its termination bound still asks for (rounded up to _QUANTUM), at
            # most H * 2^(rounds it has run) and H * 2^_GROWTH_LOG2: problems that need many hypotheses get large
            # rounds (few, large solver calls) and the schedule depends on the problem's own history only. A
            # chunk draws its largest round and masks the surplus, so a problem's hypotheses are its own
            # counter's sequence whatever the batch around it; chunks group problems of similar round size.
            cap = (H * torch.pow(2, rounds.clamp(max=_GROWTH_LOG2))).clamp(max=H * (1 << _GROWTH_LOG2))
            want = ((limit - done.double()) / _QUANTUM).ceil().long().clamp(1) * _QUANTUM
            want = torch.minimum(want, cap)
            # hypotheses that reach full scoring: preemptive_keep per H drawn (per problem)
            keep_all = torch.minimum(options.preemptive_keep * (want // H).clamp_min(1), want * S)
            act = act[torch.argsort(want[act], descending=True, stable=True)]
            start = 0
            while start < act.numel():
                Hc = int(want[act[start]])
                keep = int(keep_all[act[start]])
                per_problem = Hc * S * n_sub + keep * N if n_sub else Hc * S * N
                chunk = max(1, options.max_elements // max(1, per_problem))
                I = act[start:start + chunk]
                start += chunk
                C = I.numel()
                w_I = want[I]
                pool = progressive_pool(n_valid[I], k, done[I], growth)
                ranks = sample_subsets(pool, k, Hc, seeds[I], 0, first=done[I])
                idx = torch.gather(order[I], 1, ranks.reshape(C, Hc * k)).reshape(C, Hc, k)
                d_I = tuple(x[I] for x in data)
                c_I = tuple(c[I] for c in ctx)
                sample = tuple(_gather_rows(x, idx).reshape(C * Hc, k, x.shape[-1]) for x in d_I)
                c_rep = tuple(c.repeat_interleave(Hc, dim=0) for c in c_I)
                params, pvalid = model.minimal(sample, c_rep)
                params = params.reshape(C, Hc * S, *model.param_shape)
                drawn = (torch.arange(Hc, device=device)[None, :] < w_I[:, None]).repeat_interleave(S, dim=1)
                pvalid = pvalid.reshape(C, Hc * S) & drawn & torch.isfinite(params.flatten(2) @ ones_p)
                nh = Hc * S
                if S > 1:
                    # compaction: multi-solution solvers fill about half of their S slots; score only the
                    # valid ones (stable order, so which hypotheses a problem sees does not change)
                    nh = max(1, int(pvalid.sum(-1).max()))
                    if nh < Hc * S:
                        perm = torch.argsort((~pvalid).to(torch.uint8), dim=1, stable=True)[:, :nh]
                        pvalid = torch.gather(pvalid, 1, perm)
                        pshape = (C, nh) + (1,) * len(model.param_shape)
                        params = torch.gather(params, 1, perm.reshape(pshape).expand(C, nh, *model.param_shape))
                params = torch.where(pvalid.reshape(C, nh, *([1] * len(model.param_shape))), params,
                                     torch.zeros((), dtype=params.dtype, device=device))
                v_I = valid[I]
                if n_sub:
                    # preemptive verification: rank all hypotheses on a random subset of valid points
                    sub, in_sub = _preemptive_subset(n_valid[I], best_count[I], n_sub, seeds[I], rounds[I])
                    sub = torch.gather(order[I], 1, sub)  # (C, <= n_sub)
                    d_sub = tuple(torch.gather(x, 1, sub[..., None].expand(*sub.shape, x.shape[-1])) for x in d_I)
                    ss = _hypothesis_scores(model, params, d_sub, c_I, torch.gather(v_I, 1, sub) & in_sub, th[I],
                                            options)
                    ss = torch.where(pvalid, ss, torch.full_like(ss, -math.inf))
                    keep = min(int(keep_all[I].max()), nh)
                    top_s, top_i = ss.topk(keep, dim=-1)  # (C, keep)
                    pshape = (C, keep) + (1,) * len(model.param_shape)
                    params = torch.gather(params, 1, top_i.reshape(pshape).expand(C, keep, *model.param_shape))
                    kept = torch.arange(keep, device=device)[None, :] < keep_all[I][:, None]
                    pvalid = (top_s > -math.inf) & kept
                sc = _hypothesis_scores(model, params, d_I, c_I, v_I, th[I], options)  # (C, hypotheses)
                sc = torch.where(pvalid, sc, torch.full_like(sc, -math.inf))
                top, arg = sc.max(dim=-1)
                # LO runs on each new best *minimal* model (compared with the earlier minimal models, not with
                # refined ones, as in PoseLib / RansacLib); the refined model then competes with the best so far
                better = top > best_minimal[I]
                if better.any():
                    bI = I[better]
                    best_minimal[bI] = top[better]
                    pb, sb = params[better, arg[better]], top[better]
                    r2b = model.residuals(pb[:, None], tuple(x[bI] for x in data), tuple(c[bI] for c in ctx))[:, 0]
                    if options.local_optimization > 0:
                        # LO-RANSAC on each new best minimal model: an inner RANSAC of non-minimal samples from
                        # its inliers, a weighted refit on the inliers, then (for models that have one) a
                        # nonlinear local refinement; each step starts from the best model so far
                        db = tuple(x[bI] for x in data)
                        cb = tuple(c[bI] for c in ctx)
                        vb, thb = valid[bI], th[bI]
                        steps = (["inner"] if inner > 0 else []) + ["refit"]
                        if getattr(model, "lo_iterations", 0) > 0:
                            steps.append("refine")
                        for step in steps:
                            if step == "inner":
                                cand, ok = _inner_ransac(model, db, cb, vb, thb, r2b, seeds[bI], done[bI], inner,
                                                         options)
                            elif step == "refit":
                                cand, ok = model.refit(db, inlier_weights(r2b, vb, thb, options.score, model.dof), cb)
                            else:
                                near = vb & (r2b < (_LO_RADIUS * thb[:, None]) ** 2)
                                cand, ok = model.local_refine(pb, db, near, cb, thb)
                            ok = ok & torch.isfinite(cand.flatten(1)).all(-1)
                            cr2 = model.residuals(cand[:, None], db, cb)[:, 0]
                            cs = score_residuals(cr2, vb, thb, options.score, model.dof)
                            take = ok & (cs > sb)
                            pb = torch.where(take.reshape((-1,) + (1,) * len(model.param_shape)), cand, pb)
                            sb = torch.where(take, cs, sb)
                            r2b = torch.where(take[:, None], cr2, r2b)
                    imp = sb > best_score[bI]
                    bI, pb, sb, r2b = bI[imp], pb[imp], sb[imp], r2b[imp]
                    best[bI] = pb
                    best_score[bI] = sb
                    cnt = inlier_mask(r2b, valid[bI], th[bI]).sum(-1)
                    best_count[bI] = cnt
                    ratio = cnt.double() / n_valid[bI].clamp_min(1).double()
                    needed[bI] = required_iterations(ratio, k, options.confidence) * options.trials_multiplier
            done[act] += want[act]
            rounds[act] += 1

        # local optimisation: iterated weighted refits on the inliers of the best model
    # (outside no_grad: the polish below is differentiable w.r.t. the data)
    has = best_score > -math.inf
    hi = has.nonzero().squeeze(-1)  # only problems with a model are refined
    d_h = tuple(x[hi] for x in data)
    c_h = tuple(c[hi] for c in ctx)
    v_h, th_h = valid[hi], th[hi]
    rw_h = None if refit_weights is None else refit_weights[hi]
    b_h = best[hi]
    shp = (-1,) + (1,) * len(model.param_shape)
    with torch.no_grad():
        score, r2 = _score_params(model, b_h, d_h, c_h, v_h, options, th_h)
        for _ in range(options.local_optimization if hi.numel() else 0):
            w = inlier_weights(r2, v_h, th_h, options.score, model.dof)
            if rw_h is not None:
                w = w * rw_h.detach()
            cand, ok = model.refit(d_h, w, c_h)
            ok = ok & torch.isfinite(cand.flatten(1)).all(-1)
            cs, cr2 = _score_params(model, cand, d_h, c_h, v_h, options, th_h)
            take = ok & (cs > score)
            if not take.any():
                break
            b_h = torch.where(take.reshape(shp), cand, b_h)
            score = torch.where(take, cs, score)
            r2 = torch.where(take[:, None], cr2, r2)

    if options.final_refine and hasattr(model, "polish") and hi.numel():
        w = inlier_weights(r2, v_h, th_h, "msac", model.dof)
        if rw_h is not None:
            w = w * rw_h
        pol = model.polish(b_h, d_h, w, c_h)
        ok = torch.isfinite(pol.flatten(1)).all(-1)
        with torch.no_grad():
            ps, pr2 = _score_params(model, pol.detach(), d_h, c_h, v_h, options, th_h)
        # keep the polished model unless it loses a noticeable part of the support
        take = ok & (ps >= score - 1e-3 * score.abs() - 1e-9)
        b_h = torch.where(take.reshape(shp), pol, b_h)
        score = torch.where(take, ps, score)
        r2 = torch.where(take[:, None], pr2, r2)

    best = best.index_copy(0, hi, b_h)
    full_score = best_score.index_copy(0, hi, score.detach())
    inl = torch.zeros(M, N, dtype=torch.bool, device=device)
    inl = inl.index_copy(0, hi, inlier_mask(r2.detach(), v_h, th_h))
    success = has & (inl.sum(-1) > k)
    return RansacOutput(best, inl, full_score, done, success)
